"""3-D max pooling that remembers where each maximum came from, and max-unpooling (NDHWC).

The volumetric SegNet/DeconvNet switches, with indices in torch's convention: flat
`d * H * W + h * W + w` within each input volume, per sample and channel, as
`torch.nn.functional.max_pool3d(..., return_indices=True)` and `F.max_unpool3d`.

Each window's winner (its first maximum in (d, h, w) order, torch's rule) is found once, in the
forward, together with its index, and the gradient is scattered to exactly that index. It is never
found again by comparing inputs with the pooled output (the `segjax.ops.pool` lesson: a recomputed
input may round one ulp differently from the forward's, and then no input would equal the maximum
and the cotangent would be lost).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.ops._args import check_floating, check_rank, non_negative_ints, positive_ints
from segjax.ops.unpool import _max_unpool


def max_pool3d_with_argmax(x: jax.Array, window=2, stride=2, padding=0) -> tuple[jax.Array, jax.Array]:
    """Max pooling over NDHWC `x` returning the pooled values and the argmax positions.

    Like `torch.nn.functional.max_pool3d(x, window, stride, padding, return_indices=True)`: output
    size floor((D + 2 * pad - window) / stride) + 1 per axis; padding is implicit -inf (at most half
    the window, as in torch); ties go to the first maximum in (d, h, w) window order; a NaN wins
    (the last NaN of the window, as torch's CPU kernel).

    Args:
      x: [N, D, H, W, C] floating.
      window, stride, padding: int or (d, h, w) triple.
    Returns:
      pooled [N, Do, Ho, Wo, C] (x's dtype) and indices [N, Do, Ho, Wo, C] int32 holding
      `d * H * W + h * W + w` in the unpadded input volume. The gradient of `pooled` flows to the
      input at `indices` only.
    """
    check_rank(x, 5, "x", "N, D, H, W, C")
    check_floating(x, "x")
    k = positive_ints(window, 3, "window")
    s = positive_ints(stride, 3, "stride")
    p = non_negative_ints(padding, 3, "padding")
    if any(2 * pi > ki for pi, ki in zip(p, k)):
        raise ValueError(f"padding {padding!r} must be at most half the window {window!r}")
    if any(n + 2 * pi < ki for n, pi, ki in zip(x.shape[1:4], p, k)):
        raise ValueError(f"window {window!r} is larger than the padded input of shape {x.shape}")
    return _max_pool3d_with_argmax(x, k, s, p)


# Jitted so eager calls compile once per configuration instead of dispatching op by op.
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _max_pool3d_with_argmax(x, window, stride, padding):
    return _pool_with_winners(x, window, stride, padding)


def _winners(x, window, stride, padding):
    """(pooled, flat indices): each window's winner by a running comparison over its taps.

    torch's CPU rule, `if (val > maxval || isnan(val))` over the window's input cells in (d, h, w)
    order: the first maximum wins a tie, a NaN beats any number (and a later NaN an earlier one).
    Padding cells never win, not even a tie of -infs: a window of -infs points at its first input
    cell, as torch's does. Elementwise work only (one strided slice and a few selects per tap):
    on CPU ~10x faster than a reduce-window over (value, index) pairs.
    """
    n, c = x.shape[0], x.shape[4]
    in_dhw = x.shape[1:4]
    out = [(m + 2 * p - k) // s + 1 for m, p, k, s in zip(in_dhw, padding, window, stride)]
    xp = jnp.pad(x, ((0, 0), *[(p, p) for p in padding], (0, 0)), constant_values=-jnp.inf)
    kd, kh, kw = window
    best = first = seen = None
    for t, offset in enumerate(np.ndindex(kd, kh, kw)):
        limit = (n, *[o + s * (m - 1) + 1 for o, s, m in zip(offset, stride, out)], c)
        tap = lax.slice(xp, (0, *offset, 0), limit, (1, *stride, 1))
        # Static mask of the outputs whose tap t reads an input cell, not padding.
        reads = [(o + s * np.arange(m) >= p) & (o + s * np.arange(m) < p + size)
                 for o, s, m, p, size in zip(offset, stride, out, padding, in_dhw)]
        inside = (reads[0][:, None, None] & reads[1][:, None] & reads[2])[None, ..., None]
        if best is None:
            best, first, seen = tap, jnp.zeros(tap.shape, jnp.int32), inside
            continue
        better = inside & (~seen | (tap > best) | jnp.isnan(tap))
        best = jnp.where(better, tap, best)
        first = jnp.where(better, t, first)
        seen = seen | inside
    origin = [jnp.arange(m) * s - p for m, s, p in zip(out, stride, padding)]
    dd = origin[0][None, :, None, None, None] + first // (kh * kw)
    hh = origin[1][None, None, :, None, None] + first // kw % kh
    ww = origin[2][None, None, None, :, None] + first % kw
    _, h, w = in_dhw
    return best, ((dd * h + hh) * w + ww).astype(jnp.int32)


# The gradient is the cotangent scattered (added, where windows overlap) to the forward's own
# `indices`: never found again by comparing inputs with the pooled output (see the module
# docstring). Autodiff of the select chain would also cost seconds of XLA:CPU compilation for a
# 3x3x3 window; the scatter compiles in a fraction of that.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _pool_with_winners(x, window, stride, padding):
    return _winners(x, window, stride, padding)


def _pool_with_winners_fwd(x, window, stride, padding):
    pooled, indices = _winners(x, window, stride, padding)
    return (pooled, indices), (indices, x)


def _pool_with_winners_bwd(window, stride, padding, res, g):
    indices, x = res
    g_pooled, _ = g
    n, c = x.shape[0], x.shape[4]
    size = int(np.prod(x.shape[1:4]))
    batch = jnp.arange(n)[:, None, None]
    chan = jnp.arange(c)[None, None, :]
    dx = jnp.zeros((n, size, c), g_pooled.dtype).at[
        batch, indices.reshape(n, -1, c), chan].add(g_pooled.reshape(n, -1, c))
    return (dx.reshape(x.shape),)


_pool_with_winners.defvjp(_pool_with_winners_fwd, _pool_with_winners_bwd)


def max_unpool3d(x: jax.Array, indices: jax.Array, output_dhw) -> jax.Array:
    """Scatters `x` to the positions `indices` in zero volumes of size `output_dhw`.

    Like `torch.nn.functional.max_unpool3d(x, indices, kernel, output_size=output_dhw)` (NDHWC
    here): `out[n, i // (H * W), i // W % H, i % W, c] = x[n, d, h, w, c]` with
    `i = indices[n, d, h, w, c]`, zeros elsewhere. With duplicate indices one of the values wins
    (torch leaves that undefined too). The gradient gathers the output cotangent at `indices`.

    Args:
      x: [N, d, h, w, C] values (e.g. pooled).
      indices: [N, d, h, w, C] integer flat positions in [0, D * H * W), e.g. from
        max_pool3d_with_argmax.
      output_dhw: (D, H, W) of the output.
    Returns:
      [N, D, H, W, C] in x's dtype.
    """
    check_rank(x, 5, "x", "N, d, h, w, C")
    out_d, out_h, out_w = positive_ints(output_dhw, 3, "output_dhw")
    if np.shape(indices) != x.shape:
        raise ValueError(f"indices shape {np.shape(indices)} must equal x shape {x.shape}")
    if not jnp.issubdtype(jnp.result_type(indices), jnp.integer):
        raise ValueError(f"indices must be integer, got {jnp.result_type(indices)}")
    size = out_d * out_h * out_w
    if not isinstance(indices, jax.core.Tracer):
        # Only checkable for concrete indices; under jit out-of-range entries would be dropped.
        idx = np.asarray(indices)
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise ValueError(
                f"indices must lie in [0, {size}) for output_dhw={output_dhw!r}, "
                f"got range [{idx.min()}, {idx.max()}]")
    n, d, h, w, c = x.shape
    # A flat index into a [D, H, W] volume is one into a [D * H, W] plane: the 2-D scatter.
    planes = _max_unpool(x.reshape(n, d * h, w, c), jnp.asarray(indices).reshape(n, d * h, w, c),
                         (out_d * out_h, out_w))
    return planes.reshape(n, out_d, out_h, out_w, c)
