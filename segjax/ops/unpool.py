"""Max pooling that remembers where each maximum came from, and the three classic unpoolings.

* `max_pool_with_argmax` / `max_unpool`: SegNet/DeconvNet switches, with indices in torch's
  convention (flat `h * W + w` within each input plane, per sample and channel).
* `nearest_unpool`: every value fills its whole `factor` block.
* `bed_of_nails_unpool`: every value goes to the top-left cell of its block, zeros elsewhere.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.ops._args import check_rank, non_negative_pair, positive_pair


def max_pool_with_argmax(x: jax.Array, window=2, stride=2, padding=0) -> tuple[jax.Array, jax.Array]:
    """Max pooling over NHWC `x` returning the pooled values and the argmax positions.

    Like `torch.nn.functional.max_pool2d(x, window, stride, padding, return_indices=True)`:
    output size floor((H + 2 * pad - window) / stride) + 1 per axis; padding is implicit -inf
    (at most half the window, as in torch); ties go to the first maximum in row-major window
    order; a NaN in the window wins.

    Args:
      x: [N, H, W, C] floating.
      window, stride, padding: int or (h, w) pair.
    Returns:
      pooled [N, Ho, Wo, C] (x's dtype) and indices [N, Ho, Wo, C] int32 holding `h * W + w` in
      the unpadded input plane. The gradient of `pooled` flows to the argmax only.
    """
    check_rank(x, 4, "x", "N, H, W, C")
    kh, kw = positive_pair(window, "window")
    sh, sw = positive_pair(stride, "stride")
    ph, pw = non_negative_pair(padding, "padding")
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding {padding!r} must be at most half the window {window!r}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating, got {x.dtype}")
    n, h, w, c = x.shape
    if (h + 2 * ph - kh) < 0 or (w + 2 * pw - kw) < 0:
        raise ValueError(f"window {window!r} is larger than the padded input of shape {x.shape}")
    return _max_pool_with_argmax(x, (kh, kw), (sh, sw), (ph, pw))


# Jitted so eager calls compile once per configuration instead of dispatching op by op.
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _max_pool_with_argmax(x, window, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = window, stride, padding
    n, h, w, c = x.shape
    out_h = (h + 2 * ph - kh) // sh + 1
    out_w = (w + 2 * pw - kw) // sw + 1

    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=-jnp.inf)
    # One strided view per window offset, stacked in row-major window order so argmax's
    # first-occurrence rule is torch's tie-breaking.
    taps = [
        lax.slice(xp, (0, i, j, 0), (n, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, c),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ]
    stack = jnp.stack(taps, axis=-1)  # [N, Ho, Wo, C, kh*kw]
    arg = jnp.argmax(stack, axis=-1)
    pooled = jnp.take_along_axis(stack, arg[..., None], axis=-1)[..., 0]
    rows = (jnp.arange(out_h) * sh - ph)[None, :, None, None] + arg // kw
    cols = (jnp.arange(out_w) * sw - pw)[None, None, :, None] + arg % kw
    indices = (rows * w + cols).astype(jnp.int32)
    return pooled, indices


def max_unpool(x: jax.Array, indices: jax.Array, output_hw) -> jax.Array:
    """Scatters `x` to the positions `indices` in zero planes of size `output_hw`.

    Like `torch.nn.functional.max_unpool2d(x, indices, kernel, output_size=output_hw)` (NHWC here):
    `out[n, i // W, i % W, c] = x[n, h, w, c]` with `i = indices[n, h, w, c]`, zeros elsewhere.
    With duplicate indices one of the values wins (torch leaves that undefined too). The gradient
    gathers the output cotangent at `indices`.

    Args:
      x: [N, h, w, C] values (e.g. pooled).
      indices: [N, h, w, C] integer flat positions in [0, H * W), e.g. from max_pool_with_argmax.
      output_hw: (H, W) of the output.
    Returns:
      [N, H, W, C] in x's dtype.
    """
    check_rank(x, 4, "x", "N, h, w, C")
    out_h, out_w = positive_pair(output_hw, "output_hw")
    if np.shape(indices) != x.shape:
        raise ValueError(f"indices shape {np.shape(indices)} must equal x shape {x.shape}")
    if not jnp.issubdtype(jnp.result_type(indices), jnp.integer):
        raise ValueError(f"indices must be integer, got {jnp.result_type(indices)}")
    if not isinstance(indices, jax.core.Tracer):
        # Only checkable for concrete indices; under jit out-of-range entries would be dropped.
        idx = np.asarray(indices)
        if idx.size and (idx.min() < 0 or idx.max() >= out_h * out_w):
            raise ValueError(
                f"indices must lie in [0, {out_h * out_w}) for output_hw={output_hw!r}, "
                f"got range [{idx.min()}, {idx.max()}]")
    return _max_unpool(x, jnp.asarray(indices), (out_h, out_w))


@functools.partial(jax.jit, static_argnums=(2,))
def _max_unpool(x, indices, output_hw):
    out_h, out_w = output_hw
    n, h, w, c = x.shape
    flat_x = x.reshape(n, h * w, c)
    flat_i = indices.reshape(n, h * w, c)
    batch = jnp.arange(n)[:, None, None]
    chan = jnp.arange(c)[None, None, :]
    out = jnp.zeros((n, out_h * out_w, c), x.dtype)
    out = out.at[batch, flat_i, chan].set(flat_x, mode="drop")
    return out.reshape(n, out_h, out_w, c)


def nearest_unpool(x: jax.Array, factor=2) -> jax.Array:
    """Nearest-neighbour unpooling: each value fills its `factor` block. [N,h,w,C] -> [N,h*fh,w*fw,C]."""
    check_rank(x, 4, "x", "N, H, W, C")
    fh, fw = positive_pair(factor, "factor")
    n, h, w, c = x.shape
    y = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, fh, w, fw, c))
    return y.reshape(n, h * fh, w * fw, c)


def bed_of_nails_unpool(x: jax.Array, factor=2) -> jax.Array:
    """Bed-of-nails unpooling: value at the top-left of each `factor` block, zeros elsewhere.

    [N, h, w, C] -> [N, h*fh, w*fw, C]; the gradient reads the top-left cells back.
    """
    check_rank(x, 4, "x", "N, H, W, C")
    fh, fw = positive_pair(factor, "factor")
    zero = jnp.zeros((), x.dtype)
    # Interior padding puts fh-1 zeros between rows; the high padding closes the last block.
    return lax.pad(x, zero, ((0, 0, 0), (0, fh - 1, fh - 1), (0, fw - 1, fw - 1), (0, 0, 0)))
