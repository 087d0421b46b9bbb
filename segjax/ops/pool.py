"""Max pooling with a gradient written out tap by tap (NHWC).

`max_pool` computes what `flax.linen.max_pool` / `torch.nn.functional.max_pool2d` compute (padding
reads -inf). Its gradient routes each output's cotangent to the first maximum of its window in
row-major order, as torch and XLA's select-and-scatter do, but with elementwise work only: one
strided slice and comparison per kernel tap, then per input phase (position modulo the stride) a
sum of shifted output-sized arrays. XLA:CPU lowers the autodiff gradient to a reduce-window over
four int32 index grids the size of the padded input: 64 ms against 10 ms for ResNet's 3x3/2 stem
pool at batch 4, 256² (BENCHMARKS.md)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from segjax.ops._args import check_rank, non_negative_pair, positive_pair


def max_pool(x: jax.Array, window=2, stride=None, padding=0) -> jax.Array:
    """Max pooling of `x` `[N, H, W, C]` -> `[N, Ho, Wo, C]` (floor mode).

    Args:
      window: int or (h, w) pooling window.
      stride: int or (h, w); None means `window`.
      padding: int or (h, w) symmetric padding, or `((top, bottom), (left, right))`; padded cells
        are -inf, so they never win.
    Returns:
      `Ho = (H + top + bottom - window_h) // stride_h + 1` (likewise `Wo`), in `x`'s dtype. The
      gradient goes to the first maximum of each window (row-major), like torch.

    Example: ResNet's stem pool is `max_pool(x, 3, 2, 1)`.
    """
    check_rank(x, 4, "x", "N, H, W, C")
    k = positive_pair(window, "window")
    s = k if stride is None else positive_pair(stride, "stride")
    if (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding)):
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        if min(min(p) for p in pads) < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
    else:
        ph, pw = non_negative_pair(padding, "padding")
        pads = ((ph, ph), (pw, pw))
    for n, kk, (lo, hi) in zip(x.shape[1:3], k, pads):
        if n + lo + hi < kk:
            raise ValueError(f"max_pool window {k} does not fit x {x.shape} padded by {pads}")
        if max(lo, hi) >= kk:
            raise ValueError(f"padding {pads} must be smaller than the window {k} (a window of "
                             "padding alone would have no maximum)")
    return _max_pool(x, k, s, pads)


def _pool_fwd_only(x, window, stride, pads):
    return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, *window, 1),
                             (1, *stride, 1), ((0, 0), *pads, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, pads):
    return _pool_fwd_only(x, window, stride, pads)


def _max_pool_fwd(x, window, stride, pads):
    return _pool_fwd_only(x, window, stride, pads), x


def _max_pool_bwd(window, stride, pads, x, g):
    n, _, _, c = x.shape
    (kh, kw), (sh, sw) = window, stride
    ho, wo = g.shape[1:3]
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    hp, wp = xp.shape[1:3]
    zero = jnp.zeros((), g.dtype)
    # Which output's cotangent each tap passes on: the first maximum in row-major window order,
    # found by a running strict maximum over the taps. Not by comparing each tap with the forward's
    # output: XLA may recompute `x` for the backward in another fusion, rounded differently (e.g.
    # BatchNorm's affine map with and without a fused multiply-add), and a window whose maximum
    # then differs from `y` by one ulp would pass its cotangent to no input at all. Seen as a
    # ResNet stem gradient that depended on how the batch was split over devices.
    taps = [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                      (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
    best, first = taps[0], jnp.zeros(g.shape, jnp.int32)
    for t, tap in enumerate(taps[1:], 1):
        better = tap > best
        best = jnp.where(better, tap, best)
        first = jnp.where(better, t, first)
    routed = {(i, j): jnp.where(first == i * kw + j, g, zero) for i in range(kh) for j in range(kw)}
    # Tap (i, j) of output (a, b) reads padded input (i + sh*a, j + sw*b): input phase
    # (i % sh, j % sw), at (a + i // sh, b + j // sw) of that phase's grid. Summing shifted
    # output-sized arrays per phase and interleaving the phases avoids scattering or
    # multiplying by the zeros of interior padding.
    hq, wq = -(-hp // sh), -(-wp // sw)
    phases = []
    for p in range(sh):
        row = []
        for q in range(sw):
            acc = jnp.zeros((n, hq, wq, c), g.dtype)
            for i in range(p, kh, sh):
                for j in range(q, kw, sw):
                    di, dj = i // sh, j // sw
                    acc = acc + lax.pad(routed[i, j], zero, ((0, 0, 0), (di, hq - di - ho, 0),
                                                             (dj, wq - dj - wo, 0), (0, 0, 0)))
            row.append(acc)
        phases.append(jnp.stack(row, axis=3))  # [n, hq, wq, sw, c]
    dxp = jnp.stack(phases, axis=2).reshape(n, hq * sh, wq * sw, c)  # [n, hq, sh, wq, sw, c]
    (top, _), (left, _) = pads
    return (dxp[:, top:top + x.shape[1], left:left + x.shape[2]],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
