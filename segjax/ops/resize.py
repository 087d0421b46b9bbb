"""Image resizing with PyTorch's `interpolate` semantics, as separable interpolation matrices.

Each spatial axis gets a dense `[out, in]` weight matrix built with numpy at trace time (the shapes
are static), and the image is contracted with one matrix per axis. This is exact (the same source
indices and weights as `torch.nn.functional.interpolate(..., antialias=False)`), fast on CPU for
feature-map sizes, and its gradient is the transposed matrices. `nearest` is a gather instead
(one source index per output, so integer label maps resize too). NDHWC volumes take the same
route with one matrix (or gather) per axis: "trilinear" is the linear rule along D, H and W.

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

from segjax.ops._args import positive_ints

METHODS = ("nearest", "bilinear", "bicubic")
METHODS_3D = ("nearest", "trilinear")
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
    """Resizes NHWC images or NDHWC volumes to `size`, like `torch.nn.functional.interpolate`
    (antialias=False).

    Args:
      x: [N, H, W, C] images or [N, D, H, W, C] volumes (floating; integer inputs only with
        method="nearest").
      size: output (height, width) for images, (depth, height, width) for volumes, or one int for
        all spatial axes.
      method: for images "nearest" (torch's legacy nearest: floor(dst * in / out)), "bilinear" or
        "bicubic" (a = -0.75, border indices clamped); for volumes "nearest" or "trilinear" (the
        linear rule along each of the three axes, as torch).
      align_corners: as in torch; only for the (bi/tri)linear and bicubic methods (torch rejects
        it for nearest).
    Returns:
      [N, *size, C] in x's dtype. Interpolation weights are float32 and the contraction
      accumulates in float32, so bfloat16 inputs lose precision only in the final cast.
    """
    rank = np.ndim(x)
    if rank not in (4, 5):
        raise ValueError(f"x must have rank 4 (N, H, W, C) or 5 (N, D, H, W, C), got shape "
                         f"{np.shape(x)}")
    methods = METHODS if rank == 4 else METHODS_3D
    out_size = positive_ints(size, rank - 2, "size")
    if method not in methods:
        raise ValueError(f"method must be one of {methods} for a rank-{rank} x, got {method!r}")
    if method == "nearest" and align_corners:
        raise ValueError(f"align_corners=True is only valid for the methods {methods[1:]}, not 'nearest'")
    if min(x.shape[1:-1]) < 1:
        raise ValueError(f"x must have a non-empty spatial size, got shape {x.shape}")
    if method != "nearest" and not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating for method {method!r}, got {x.dtype}")
    if rank == 5:
        return _resize3d(x, out_size, method, bool(align_corners))
    return _resize(x, out_size, method, bool(align_corners))


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


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _resize3d(x, size, method, align_corners):
    """`_resize` for NDHWC volumes: one gather or one 1-D linear interpolation matrix per axis."""
    in_dhw = x.shape[1:4]
    if method == "nearest":
        for axis, (n_in, n_out) in enumerate(zip(in_dhw, size), start=1):
            x = jnp.take(x, jnp.asarray(nearest_indices(n_in, n_out)), axis=axis)
        return x
    acc = jnp.promote_types(x.dtype, jnp.float32)
    y = x
    for spec, n_in, n_out in zip(("od,ndhwc->nohwc", "oh,ndhwc->ndowc", "ow,ndhwc->ndhoc"),
                                 in_dhw, size):
        # Trilinear is separable: torch's linear rule (the bilinear one) along each axis.
        m = jnp.asarray(interpolation_matrix(n_in, n_out, "bilinear", align_corners), jnp.float32)
        y = jnp.einsum(spec, m, y, precision=lax.Precision.HIGHEST, preferred_element_type=acc)
    return y.astype(x.dtype)
