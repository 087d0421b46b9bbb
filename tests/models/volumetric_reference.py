"""Helpers for comparing the volumetric models with torch transcriptions (test-only, imports torch).

The transcriptions keep their layers in a `torch.nn.ModuleDict` under the flax parameter names, so
weights and gradients map one to one: conv kernels DHWIO <-> OIDHW and transposed-conv kernels
`[2, 2, 2, out, in]` <-> torch's `[in, out, 2, 2, 2]` are both `transpose(4, 3, 0, 1, 2)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn as tnn

from tests.models.tv_reference import rel_err

_TO_TORCH = {"kernel": (4, 3, 0, 1, 2), "bias": None, "scale": None, "slope": None}
_TORCH_NAME = {"kernel": "weight", "bias": "bias", "scale": "weight", "slope": "weight"}


def ncdhw(x) -> torch.Tensor:
    """NDHWC numpy -> NCDHW torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 4, 1, 2, 3)))


def ndhwc(t: torch.Tensor) -> np.ndarray:
    """NCDHW torch tensor -> NDHWC numpy."""
    return t.detach().numpy().transpose(0, 2, 3, 4, 1)


def load_flax(layers: tnn.ModuleDict, variables: dict) -> None:
    """Copies flax {"params", "batch_stats"} into the same-named torch layers."""
    with torch.no_grad():
        for name, module in layers.items():
            for key, value in variables["params"][name].items():
                axes = _TO_TORCH[key]
                value = np.asarray(value, np.float32)
                getattr(module, _TORCH_NAME[key]).copy_(torch.from_numpy(
                    np.ascontiguousarray(value if axes is None else value.transpose(axes))))
            for key, value in variables.get("batch_stats", {}).get(name, {}).items():
                stat = {"mean": module.running_mean, "var": module.running_var}[key]
                stat.copy_(torch.from_numpy(np.asarray(value, np.float32)))


def assert_grads_match(layers: tnn.ModuleDict, grads: dict, tol: float) -> None:
    """Every flax parameter gradient equals the torch layer's, within `tol` times the larger of its
    own largest entry and a hundredth of the largest gradient entry of the model (a conv bias just
    before a train-mode BatchNorm has a gradient that is zero up to rounding)."""
    expected = {name: {key: getattr(module, _TORCH_NAME[key]).grad.numpy() for key in grads[name]}
                for name, module in layers.items()}
    floor = max(np.abs(g).max() for per_layer in expected.values() for g in per_layer.values()) / 100
    for name, per_layer in expected.items():
        for key, want in per_layer.items():
            axes = _TO_TORCH[key]
            got = np.asarray(grads[name][key])
            got = got if axes is None else got.transpose(axes)
            err = np.abs(got - want).max() / max(np.abs(want).max(), floor)
            assert err < tol, f"{name}/{key}: relative error {err:.3g}"


def compare_with_torch(model, layers: tnn.ModuleDict, torch_forward, variables: dict, x: np.ndarray,
                       cot: np.ndarray, *, batch_norm: bool, tol: float) -> None:
    """Logits, input gradient and parameter gradients of `sum(logits * cot)` in train mode against
    torch's, and (`batch_norm`: where eval mode differs) the eval-mode logits; one compile.

    `torch_forward(x NCDHW) -> logits NCDHW` runs the transcription whose layers are `layers`."""

    def loss(params, x):
        out = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])[0]
        return jnp.sum(out["logits"] * cot), out["logits"]

    def run(params, x):
        eval_logits = model.apply({**variables, "params": params}, x)["logits"] if batch_norm else None
        return eval_logits, jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

    args = (variables["params"], jnp.asarray(x))
    compiled = jax.jit(run).lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0})  # a third less compile time, as in test_registry
    eval_logits, ((_, logits), (grad_params, grad_x)) = compiled(*args)

    if batch_norm:
        layers.eval()
        with torch.no_grad():
            assert rel_err(eval_logits, ndhwc(torch_forward(ncdhw(x)))) < tol
    layers.train()
    tx = ncdhw(x).requires_grad_(True)
    t_logits = torch_forward(tx)
    (t_logits * ncdhw(cot)).sum().backward()
    assert rel_err(logits, ndhwc(t_logits)) < tol
    assert rel_err(grad_x, ndhwc(tx.grad)) < tol
    assert_grads_match(layers, grad_params, tol)


def num_params(module: tnn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
