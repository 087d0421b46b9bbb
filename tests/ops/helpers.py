"""Small helpers shared by the ops tests: layout conversion and torch reference gradients."""

from __future__ import annotations

import jax
import numpy as np
import torch


def nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC numpy -> NCHW float64 torch tensor that requires grad."""
    return torch.tensor(np.asarray(x, np.float64)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)


def nhwc(t: torch.Tensor) -> np.ndarray:
    """NCHW torch tensor -> NHWC numpy (detached)."""
    return t.detach().permute(0, 2, 3, 1).numpy()


def torch_vjp(fn, inputs: list[torch.Tensor], cotangent_nhwc: np.ndarray):
    """Runs fn(*inputs) (NCHW output), backprops an NHWC cotangent; returns (out_nhwc, grads)."""
    out = fn(*inputs)
    out.backward(torch.tensor(np.asarray(cotangent_nhwc, np.float64)).permute(0, 3, 1, 2))
    return nhwc(out), [None if t.grad is None else t.grad.numpy() for t in inputs]


def grad_nhwc(g: np.ndarray) -> np.ndarray:
    """Torch NCHW gradient -> NHWC."""
    return np.transpose(g, (0, 2, 3, 1))


def torch_kernel(w: np.ndarray) -> torch.Tensor:
    """HWIO numpy kernel -> OIHW float64 torch tensor that requires grad."""
    return torch.tensor(np.asarray(w, np.float64)).permute(3, 2, 0, 1).contiguous().requires_grad_(True)


def jaxpr_eqns(fn, *args) -> list:
    """All equations of fn's jaxpr, nested jits included.

    Traced through a fresh wrapper: make_jaxpr caches traces by function, not by the module
    attributes and environment variables that segjax's convolution routing reads.
    """
    def walk(jaxpr):
        for e in jaxpr.eqns:
            yield e
            if "jaxpr" in e.params:
                yield from walk(getattr(e.params["jaxpr"], "jaxpr", e.params["jaxpr"]))

    return list(walk(jax.make_jaxpr(lambda *a: fn(*a))(*args).jaxpr))


def ncdhw(x: np.ndarray) -> torch.Tensor:
    """NDHWC numpy -> contiguous NCDHW float64 torch tensor that requires grad.

    Contiguous on purpose: torch's channels-last 3-D max-pool kernel returns an index outside
    the window for a window of -infs (measured on torch 2.14.1), its contiguous kernel does not.
    """
    return torch.tensor(np.asarray(x, np.float64)).permute(0, 4, 1, 2, 3).contiguous().requires_grad_(True)


def ndhwc(t: torch.Tensor) -> np.ndarray:
    """NCDHW torch tensor -> NDHWC numpy (detached)."""
    return t.detach().permute(0, 2, 3, 4, 1).numpy()


def torch_vjp3d(fn, inputs: list[torch.Tensor], cotangent_ndhwc: np.ndarray):
    """Runs fn(*inputs) (NCDHW output), backprops an NDHWC cotangent; returns (out_ndhwc, grads)."""
    out = fn(*inputs)
    out.backward(torch.tensor(np.asarray(cotangent_ndhwc, np.float64)).permute(0, 4, 1, 2, 3))
    return ndhwc(out), [None if t.grad is None else t.grad.numpy() for t in inputs]


def grad_ndhwc(g: np.ndarray) -> np.ndarray:
    """Torch NCDHW gradient -> NDHWC."""
    return np.transpose(g, (0, 2, 3, 4, 1))


def torch_kernel3d(w: np.ndarray) -> torch.Tensor:
    """DHWIO numpy kernel -> OIDHW float64 torch tensor that requires grad."""
    return torch.tensor(np.asarray(w, np.float64)).permute(4, 3, 0, 1, 2).contiguous().requires_grad_(True)
