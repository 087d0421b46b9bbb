"""TensorMask's `swap_align2nat`: a window's aligned mask -> the natural representation, upsampled.

TensorMask (Chen, Girshick, He, Dollár, ICCV 2019) predicts at every sliding window (y, x) a V x U
mask. In the *aligned* representation the mask pixel (v, u) of window (y, x) describes image
position (y + v - V/2, x + u - U/2) relative to the window; the *natural* one stores it at the
window's centre. `swap_align2nat(x, lam)` converts aligned to natural and upsamples by `lam` at
once (the tensor bipyramid's step from a coarse level to the finest): the output has windows on a
grid `lam` times coarser over the input's positions and masks `lam` times larger.

Semantics are detectron2's `SwapAlign2Nat` CUDA kernel (the only other implementation; it has no
CPU version and is differentiable once). For output window (y, x) and mask pixel (v, u), with
lambda = `lam`, V' = lam V and U' = lam U:

    image position  oy = y lam + v - V'/2 + 0.5,     ox = x lam + u - U'/2 + 0.5
    mask position   ov = (v + 0.5) / lam - 0.5,      ou = (u + 0.5) / lam - 0.5

and the output is the 16-tap multilinear interpolation of the input at (oy, ox, ov, ou) over the
floor/ceil neighbours of each coordinate, every neighbour outside the input (in any of the four
axes) reading `pad_val`. Here it is written with gathers and `where`, so JAX differentiates it
(the adjoint is the scatter-add of the kernel's backward) to any order, and it works under `jit`
and `vmap` for any float dtype.

`swap_align2nat_windows(x, lam, ys, xs, size)` evaluates the same interpolant only at chosen
windows (a model's positive windows or its detections), optionally on a `size` x `size` grid of
sub-positions spanning the window instead of its lam V integer pixels; with `size=None` it equals
`swap_align2nat(x, lam)[n, ys, xs]` exactly, at a cost that grows with the number of windows, not
with the map.

Example:
  >>> y = swap_align2nat(x, 2)   # x [N, H, W, 15 * 15] -> y [N, ceil(H/2), ceil(W/2), 30 * 30]
  >>> m = swap_align2nat_windows(x, 2, ys, xs)  # ys, xs [N, K] -> m [N, K, 30, 30]
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np


def _taps(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Floor/ceil neighbour indices and weights of sample `positions` (any shape):
    (indices int32 [2, ...], weights float64 [2, ...]), floor first (weight 1 - frac)."""
    lo = np.floor(positions)
    hi = np.ceil(positions)
    frac = positions - lo
    return np.stack([lo, hi]).astype(np.int32), np.stack([1.0 - frac, frac])


def _geometry(h: int, w: int, v: int, lam: int):
    """The kernel's sample indices and weights per axis, as numpy constants.

    Returns, each as (indices [2, ...], weights [2, ...]): rows [Ho, Vo] (image y from (y, v)),
    cols [Wo, Uo] (image x from (x, u)), mask rows [Vo], mask cols [Uo].
    """
    ho, wo, vo = -(-h // lam), -(-w // lam), lam * v
    half = vo / 2.0
    oy = np.arange(ho)[:, None] * float(lam) + np.arange(vo)[None, :] - half + 0.5
    ox = np.arange(wo)[:, None] * float(lam) + np.arange(vo)[None, :] - half + 0.5
    om = (np.arange(vo) + 0.5) / float(lam) - 0.5
    return _taps(oy), _taps(ox), _taps(om), _taps(om)


@functools.partial(jax.jit, static_argnames=("lam",))
def swap_align2nat(x: jax.Array, lam: int, pad_val: float = -6.0) -> jax.Array:
    """Aligned -> natural mask representation, upsampled by `lam` (TensorMask, detectron2's kernel).

    Args:
      x: [N, H, W, V * U], channel `v * U + u` the mask pixel (v, u) of the window at (y, x);
        V == U.
      lam: the integer upsampling factor lambda >= 1 (static).
      pad_val: the value of every neighbour outside the input (detectron2: -6, a logit whose
        sigmoid is ~0: "no object there").

    Returns:
      [N, ceil(H / lam), ceil(W / lam), (lam V) * (lam U)] in `x`'s dtype, indexed the same way.

    Raises:
      ValueError: `x` is not rank 4, its channels are not a square number, or `lam` < 1.
    """
    if x.ndim != 4:
        raise ValueError(f"swap_align2nat needs x [N, H, W, V * U], got shape {tuple(x.shape)}")
    if not isinstance(lam, (int, np.integer)) or lam < 1:
        raise ValueError(f"swap_align2nat needs an integer lam >= 1, got {lam!r}")
    n, h, w, c = x.shape
    v = int(round(np.sqrt(c)))
    if v * v != c:
        raise ValueError(f"swap_align2nat: the channels ({c}) must be V * U with V == U")
    (ri, rw), (ci, cw), (vi, vw), (ui, uw) = _geometry(h, w, v, int(lam))
    ho, vo = ri.shape[1:]
    wo = ci.shape[1]
    grid = x.reshape(n, h, w, v, v)
    dtype = x.dtype
    # Index arrays broadcast to [Ho, Wo, Vo, Uo]: rows depend on (y, v), cols on (x, u).
    out = _sixteen_taps(lambda r, c, m, u: grid[:, r, c, m, u], (h, w, v),
                        (ri[:, :, None, :, None], rw[:, :, None, :, None]),
                        (ci[:, None, :, None, :], cw[:, None, :, None, :]),
                        (vi[:, None, None, :, None], vw[:, None, None, :, None]),
                        (ui[:, None, None, None, :], uw[:, None, None, None, :]), pad_val, dtype)
    return out.reshape(n, ho, wo, vo * vo)


def _window_taps(positions: jax.Array):
    lo = jnp.floor(positions)
    frac = positions - lo
    return jnp.stack([lo, jnp.ceil(positions)]).astype(jnp.int32), jnp.stack([1.0 - frac, frac])


def _sixteen_taps(gather, bounds, rows, cols, mask_rows, mask_cols, pad_val, dtype):
    """The kernel's sum over the 2**4 floor/ceil neighbours of (image row, image col, mask row,
    mask col): each axis is (indices [2, ...], weights [2, ...]), broadcastable to the output;
    `gather(r, c, m, u)` reads the input at clipped indices, `bounds` = (H, W, V) and every
    neighbour outside them reads `pad_val`. Image weights may be traced (float32), mask weights
    are numpy constants: their product is taken first, then cast (as the kernel's float math)."""
    h, w, v = bounds
    out = 0
    for a, b, c_, d in itertools.product(range(2), repeat=4):
        row, col, mrow, mcol = rows[0][a], cols[0][b], mask_rows[0][c_], mask_cols[0][d]
        inside = ((row >= 0) & (row < h) & (col >= 0) & (col < w) & (mrow >= 0) & (mrow < v)
                  & (mcol >= 0) & (mcol < v))
        value = gather(_clip(row, h), _clip(col, w), _clip(mrow, v), _clip(mcol, v))
        value = jnp.where(inside, value, jnp.asarray(pad_val, dtype))
        image_w = rows[1][a] * cols[1][b]
        mask_w = mask_rows[1][c_] * mask_cols[1][d]
        if isinstance(image_w, np.ndarray):  # all constants: one float64 product, as before
            weight = (image_w * mask_w).astype(dtype)
        else:
            weight = (image_w * mask_w.astype(np.float32)).astype(dtype)
        out = out + weight * value
    return out


def _clip(index, size):
    return (np.clip if isinstance(index, np.ndarray) else jnp.clip)(index, 0, size - 1)


@functools.partial(jax.jit, static_argnames=("lam", "size"))
def swap_align2nat_windows(x: jax.Array, lam: int, ys: jax.Array, xs: jax.Array, size: int | None = None,
                           pad_val: float = -6.0) -> jax.Array:
    """The natural masks of chosen windows: `swap_align2nat(x, lam)` at (ys, xs) only.

    Args:
      x: [N, H, W, V * V] aligned masks (as `swap_align2nat`).
      lam: the integer upsampling factor (static).
      ys, xs: int [N, K] output window rows / columns (on the grid `lam` times coarser than x's).
      size: None for the lam V x lam V mask pixels (exactly `swap_align2nat`'s values); an int S
        samples the same 16-tap interpolant at the centres of an S x S grid over the window
        (mask coordinate v' = (i + 0.5) lam V / S - 0.5), e.g. to resample every level's masks
        to one size for the output.
      pad_val: the value of neighbours outside the input.

    Returns:
      [N, K, S, S] in x's dtype (S = lam V without `size`). Differentiable in x.
    """
    if x.ndim != 4:
        raise ValueError(f"swap_align2nat_windows needs x [N, H, W, V * U], got shape {tuple(x.shape)}")
    if not isinstance(lam, (int, np.integer)) or lam < 1:
        raise ValueError(f"swap_align2nat_windows needs an integer lam >= 1, got {lam!r}")
    n, h, w, c = x.shape
    v = int(round(np.sqrt(c)))
    if v * v != c:
        raise ValueError(f"swap_align2nat_windows: the channels ({c}) must be V * U with V == U")
    if ys.shape != xs.shape or ys.ndim != 2 or ys.shape[0] != n:
        raise ValueError(f"ys and xs must both be [N, K] with N = {n}, got {ys.shape} and {xs.shape}")
    vo = lam * v
    steps = np.arange(vo, dtype=np.float64) if size is None else (np.arange(size) + 0.5) * vo / size - 0.5
    half = vo / 2.0
    om = (steps + 0.5) / float(lam) - 0.5
    mask_idx, mask_w = _taps(om)  # [2, S] each: floor / ceil neighbours on the V x V mask
    offsets = jnp.asarray(steps - half + 0.5, jnp.float32)
    grid = x.reshape(n, h, w, v, v)
    dtype = x.dtype

    def one(g, y, xx):
        oy = y.astype(jnp.float32)[:, None] * lam + offsets[None, :]  # [K, S]
        ox = xx.astype(jnp.float32)[:, None] * lam + offsets[None, :]
        ri, rw = _window_taps(oy)
        ci, cw = _window_taps(ox)
        return _sixteen_taps(lambda r, c, m, u: g[r, c, m, u], (h, w, v),
                             (ri[:, :, :, None], rw[:, :, :, None]), (ci[:, :, None, :], cw[:, :, None, :]),
                             (mask_idx[:, None, :, None], mask_w[:, None, :, None]),
                             (mask_idx[:, None, None, :], mask_w[:, None, None, :]), pad_val, dtype)

    return jax.vmap(one)(grid, ys, xs)
