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
    out = jnp.zeros((n, ho, wo, vo, vo), dtype)
    # Index arrays broadcast to [Ho, Wo, Vo, Uo]: rows depend on (y, v), cols on (x, u).
    for a in range(2):
        row, row_w = ri[a][:, None, :, None], rw[a][:, None, :, None]
        for b in range(2):
            col, col_w = ci[b][None, :, None, :], cw[b][None, :, None, :]
            for c_ in range(2):
                mrow, mrow_w = vi[c_][None, None, :, None], vw[c_][None, None, :, None]
                for d in range(2):
                    mcol, mcol_w = ui[d][None, None, None, :], uw[d][None, None, None, :]
                    inside = ((row >= 0) & (row < h) & (col >= 0) & (col < w) & (mrow >= 0)
                              & (mrow < v) & (mcol >= 0) & (mcol < v))
                    value = grid[:, np.clip(row, 0, h - 1), np.clip(col, 0, w - 1),
                                 np.clip(mrow, 0, v - 1), np.clip(mcol, 0, v - 1)]
                    value = jnp.where(inside, value, jnp.asarray(pad_val, dtype))
                    weight = (row_w * col_w * mrow_w * mcol_w).astype(dtype)
                    out = out + weight * value
    return out.reshape(n, ho, wo, vo * vo)


def _window_taps(positions: jax.Array):
    lo = jnp.floor(positions)
    frac = positions - lo
    return (lo.astype(jnp.int32), jnp.ceil(positions).astype(jnp.int32)), (1.0 - frac, frac)


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
        out = jnp.zeros((y.shape[0], len(steps), len(steps)), dtype)
        for a in range(2):
            row, row_w = ri[a][:, :, None], rw[a][:, :, None]
            for b in range(2):
                col, col_w = ci[b][:, None, :], cw[b][:, None, :]
                for c_ in range(2):
                    mrow, mrow_w = mask_idx[c_][None, :, None], mask_w[c_][None, :, None]
                    for d in range(2):
                        mcol, mcol_w = mask_idx[d][None, None, :], mask_w[d][None, None, :]
                        inside = ((row >= 0) & (row < h) & (col >= 0) & (col < w) & (mrow >= 0)
                                  & (mrow < v) & (mcol >= 0) & (mcol < v))
                        value = g[jnp.clip(row, 0, h - 1), jnp.clip(col, 0, w - 1),
                                  np.clip(mrow, 0, v - 1), np.clip(mcol, 0, v - 1)]
                        value = jnp.where(inside, value, jnp.asarray(pad_val, dtype))
                        weight = (row_w * col_w * np.float32(1) * (mrow_w * mcol_w).astype(np.float32)).astype(dtype)
                        out = out + weight * value
        return out

    return jax.vmap(one)(grid, ys, xs)
