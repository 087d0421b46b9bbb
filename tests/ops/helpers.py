"""Small helpers shared by the ops tests: layout conversion and torch reference gradients."""

from __future__ import annotations

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
