"""Markdown table of the registered models: parameters and forward GFLOPs from XLA's cost analysis.

  python -m experiments.benchmarks.model_table [--models=fcn8s_vgg16,unet] [--size=513] [--num_classes=21]

Columns:
  params (M)   trainable parameters ("params" collection; BatchNorm running statistics excluded), 1e6.
  GFLOPs       XLA's `cost_analysis()["flops"]` of the compiled eval-mode forward pass on one
               `size` x `size` x 3 image, 1e9. A multiply-add counts 2, and XLA counts only the
               kernel taps that read real input (not zero padding: a 3x3 conv on an s x s map costs
               2 (3s - 2)^2 C_in C_out, not 2 * 9 s^2 C_in C_out), plus elementwise ops (BN, ReLU);
               tests/models/test_registry.py checks this on SegNet. `segjax.ops.atrous_conv2d`
               likewise skips taps that only read padding, so large atrous rates cost less.
               Convolutions are counted as the direct algorithm (`common.direct_convolutions`:
               Winograd's reduced products on CPU are an implementation choice, not the model's).
  OS           output stride of the model's default configuration (blank where it has none).
  aux          whether the default configuration returns `aux_logits`.

Models are built with `create_model(name, num_classes=...)` and their defaults; parameters are
never materialised (shapes only), and each model is compiled once. No TensorFlow import.
"""

from __future__ import annotations

import inspect
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.benchmarks import common
from segjax.models import AUX_LOGITS, available_models, create_model
from segjax.models.registry import _REGISTRY


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    global _MODELS, _SIZE, _CLASSES
    _MODELS = flags.DEFINE_list("models", [], "Model names (default: every registered model).")
    _SIZE = flags.DEFINE_integer("size", 513, "Square input size.")
    _CLASSES = flags.DEFINE_integer("num_classes", 21, "Number of classes.")


def model_row(name: str, size: int, num_classes: int) -> dict:
    """Parameter count, forward FLOPs, default output stride and aux flag of model `name`."""
    model = create_model(name, num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
    out = jax.eval_shape(model.apply, variables, x)
    start = time.perf_counter()
    with common.direct_convolutions():  # the model's FLOPs, not Winograd's reduced count
        cost = jax.jit(lambda v, a: model.apply(v, a)).lower(variables, x).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
        cost = cost[0]
    signature = inspect.signature(_REGISTRY[name]).parameters
    stride = signature["output_stride"].default if "output_stride" in signature else None
    return {
        "name": name,
        "params": params,
        "flops": float(cost["flops"]),
        "output_stride": stride,
        "aux": AUX_LOGITS in out,
        "compile_s": time.perf_counter() - start,
    }


def markdown(rows: list[dict], size: int) -> str:
    """The rows as a markdown table."""
    lines = [f"| model | params (M) | GFLOPs @ {size}x{size} | OS | aux |", "|---|---:|---:|---:|:---:|"]
    for r in rows:
        stride = "" if r["output_stride"] is None else str(r["output_stride"])
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.1f} | {stride} | "
                     f"{'yes' if r['aux'] else ''} |")
    return "\n".join(lines)


def main(argv):
    del argv
    names = _MODELS.value or available_models("dense")
    unknown = sorted(set(names) - set(available_models()))
    if unknown:
        raise app.UsageError(f"unknown --models {unknown}; available: {', '.join(available_models())}")
    rows = []
    for name in names:
        rows.append(model_row(name, _SIZE.value, _CLASSES.value))
        print(f"# {name}: compiled in {rows[-1]['compile_s']:.1f} s", flush=True)
    print(markdown(rows, _SIZE.value))


if __name__ == "__main__":
    define_flags()
    app.run(main)
