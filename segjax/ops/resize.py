"""Image resizing with PyTorch's `interpolate` semantics, as separable interpolation matrices.

Each spatial axis gets a dense `[out, in]` weight matrix built with numpy at trace time (the shapes
are static), and the image is contracted with one matrix per axis. This is exact (the same source
indices and weights as `torch.nn.functional.interpolate(..., antialias=False)`), fast on CPU for
feature-map sizes, and its gradient is the transposed matrices. `nearest` is a gather instead
(one source index per output, so integer label maps resize too).

Source coordinates, for an axis of `n_in` -> `n_out` samples, output index `d`:
  nearest:                    floor(d * n_in / n_out) in float32, clamped to n_in - 1
  bilinear/bicubic, align_corners=False:  (d + 0.5) * n_in / n_out - 0.5   (bilinear clamps at 0)
  bilinear/bicubic, align_corners=True:   d * (n_in - 1) / (n_out - 1)     (0 when n_out == 1)
Bicubic uses Keys' kernel with a = -0.75 on the four neighbours, with indices clamped to the border.
"""

from __future__ import annotations

import functools

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

from segjax.ops._args import check_rank, positive_pair

METHODS = ("nearest", "bilinear", "bicubic")
_CUBIC_A = -0.75


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output sample for torch's legacy "nearest" mode, shape [n_out]."""
    # torch computes the scale and the product in float32; doing the same keeps floor() identical.
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def _source_coords(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    d = np.arange(n_out, dtype=np.float64)
    if align_corners:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        return d * scale
    return (d + 0.5) * (n_in / n_out) - 0.5


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic weights of the 4 neighbours at offsets -1, 0, 1, 2 for fraction t, [n, 4]."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def interpolation_matrix(n_in: int, n_out: int, method: str, align_corners: bool = False) -> np.ndarray:
    """Dense `[n_out, n_in]` float64 matrix M with `resized = M @ signal` along one axis."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if method == "nearest":
        m[rows, nearest_indices(n_in, n_out)] = 1.0
        return m
    src = _source_coords(n_in, n_out, align_corners)
    if method == "bilinear":
        src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = src - i0
        np.add.at(m, (rows, i0), 1.0 - frac)
        np.add.at(m, (rows, i1), frac)
        return m
    i0 = np.floor(src).astype(np.int64)
    w = _cubic_weights(src - i0)
    for k in range(4):
        np.add.at(m, (rows, np.clip(i0 - 1 + k, 0, n_in - 1)), w[:, k])
    return m


def resize(x: jax.Array, size, method: str = "bilinear", align_corners: bool = False) -> jax.Array:
    """Resizes NHWC images to `size`, like `torch.nn.functional.interpolate` (antialias=False).

    Args:
      x: [N, H, W, C] images (floating; integer inputs only with method="nearest").
      size: output (height, width), or one int for both.
      method: "nearest" (torch's legacy nearest: floor(dst * in / out)), "bilinear" or "bicubic"
        (a = -0.75, border indices clamped).
      align_corners: as in torch; only for bilinear and bicubic (torch rejects it for nearest).
    Returns:
      [N, size_h, size_w, C] in x's dtype. Interpolation weights are float32 and the contraction
      accumulates in float32, so bfloat16 inputs lose precision only in the final cast.
    """
    check_rank(x, 4, "x", "N, H, W, C")
    out_h, out_w = positive_pair(size, "size")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "nearest" and align_corners:
        raise ValueError("align_corners=True is only valid for method 'bilinear' or 'bicubic'")
    _, in_h, in_w, _ = x.shape
    if min(in_h, in_w) < 1:
        raise ValueError(f"x must have a non-empty spatial size, got shape {x.shape}")
    if method != "nearest" and not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating for method {method!r}, got {x.dtype}")

    return _resize(x, (out_h, out_w), method, bool(align_corners))


# Jitted so eager calls compile once per configuration instead of dispatching op by op.
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _resize(x, size, method, align_corners):
    _, in_h, in_w, _ = x.shape
    out_h, out_w = size
    if method == "nearest":
        y = jnp.take(x, jnp.asarray(nearest_indices(in_h, out_h)), axis=1)
        return jnp.take(y, jnp.asarray(nearest_indices(in_w, out_w)), axis=2)

    mh = jnp.asarray(interpolation_matrix(in_h, out_h, method, align_corners), jnp.float32)
    mw = jnp.asarray(interpolation_matrix(in_w, out_w, method, align_corners), jnp.float32)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    y = jnp.einsum("oh,nhwc->nowc", mh, x, precision=lax.Precision.HIGHEST,
                   preferred_element_type=acc)
    y = jnp.einsum("pw,nowc->nopc", mw, y, precision=lax.Precision.HIGHEST,
                   preferred_element_type=acc)
    return y.astype(x.dtype)
