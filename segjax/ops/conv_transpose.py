"""Transposed convolution and convolution as a matrix (NHWC/HWIO): the adjoint of `conv2d`.

`conv_transpose2d` is written as the explicit adjoint of `segjax.ops.conv.conv2d`: at stride 1
the input is padded by `dilation * (k - 1) - padding` (plus `output_padding` at the end) and
correlated with the spatially flipped kernel whose in/out channels are swapped; at stride s the
same sum is split by output phase (sub-pixel form, see `_conv_transpose_subpixel`), so no zeros
are inserted and multiplied. `conv_as_matrix` builds the dense operator from index arithmetic
alone, so the tests can check all three against each other.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.ops._args import check_rank, non_negative_pair, positive_pair
from segjax.ops.conv import _DIMS, _conv_by_taps, _explicit_padding, _out_size


def conv_transpose2d(y: jax.Array, w: jax.Array, *, stride=1, padding=0, output_padding=0,
                     dilation=1, groups=1) -> jax.Array:
    """Transposed convolution: the adjoint of `x -> conv2d(x, w, stride, padding, dilation, groups)`.

    Equal to `torch.nn.functional.conv_transpose2d(y, w.transpose(3, 2, 0, 1), ...)` (NHWC here).

    Args:
      y: [N, H', W', B] (the conv's output space).
      w: [kh, kw, A / groups, B] — the kernel of the forward conv A -> B.
      stride, dilation: int or pair >= 1; padding: int or pair >= 0 (the forward conv's padding).
      output_padding: int or pair, extra rows/columns at the end, each < stride or < dilation
        (as torch), choosing among the input sizes that map to the same H'.
      groups: as in the forward conv.
    Returns:
      [N, H, W, A] with H = (H' - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1.
    """
    check_rank(y, 4, "y", "N, H', W', B")
    check_rank(w, 4, "w", "kh, kw, A/groups, B")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if y.shape[3] != w.shape[3]:
        raise ValueError(f"y has {y.shape[3]} channels but w {w.shape} maps to B={w.shape[3]}")
    if w.shape[3] % groups:
        raise ValueError(f"w out-channels {w.shape[3]} must be divisible by groups={groups}")
    s = positive_pair(stride, "stride")
    d = positive_pair(dilation, "dilation")
    p = non_negative_pair(padding, "padding")
    op = non_negative_pair(output_padding, "output_padding")
    for oi, si, di in zip(op, s, d):
        if oi >= si and oi >= di:
            raise ValueError(f"output_padding {output_padding!r} must be smaller than stride "
                             f"{stride!r} or dilation {dilation!r}")
    kh, kw, a_g, b = w.shape
    out_hw = [(n - 1) * si - 2 * pi + di * (k - 1) + oi + 1
              for n, si, pi, di, k, oi in zip(y.shape[1:3], s, p, d, (kh, kw), op)]
    if min(out_hw) < 1:
        raise ValueError(f"conv_transpose2d output would be empty: y {y.shape}, w {w.shape}")
    if s != (1, 1):
        return _conv_transpose_subpixel(y, jnp.asarray(w), s, p, tuple(out_hw), d, groups)
    pads = tuple((di * (k - 1) - pi, di * (k - 1) - pi + oi)
                 for di, k, pi, oi in zip(d, (kh, kw), p, op))
    return _conv_transpose(y, jnp.asarray(w), s, pads, d, groups)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _conv_transpose_subpixel(y, w, stride, padding, out_hw, dilation, groups):
    """Strided transposed conv as one stride-1 conv onto stride_h * stride_w phase channels.

    Along an axis, output t = i * s + k (before cropping `padding`) receives y[i] * w[k]; output
    phase t % s = f only meets taps k = f + m * s, so phase f is a stride-1 "full" correlation of
    y with the sub-kernel w[f::s] (padded to ceil(k / s) taps). All phases are computed as the
    output channels of one small conv and interleaved (depth-to-space). Same result as the
    lhs-dilated form but without multiplying the inserted zeros: stride^2 x fewer FLOPs, and XLA
    uses its fast convolution instead of the generic fallback for lhs dilation (DESIGN §6).
    """
    n, h_in, w_in, b = y.shape
    if dilation != (1, 1):  # spread the taps out: a dilated kernel is a sparse undilated one
        kh, kw = w.shape[:2]
        wd = jnp.zeros(((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1, *w.shape[2:]), w.dtype)
        w = wd.at[::dilation[0], ::dilation[1]].set(w)
    kh, kw, a_g, _ = w.shape
    (sh, sw), (ph, pw) = stride, padding
    mh, mw = -(-kh // sh), -(-kw // sw)
    qh, qw = -(-(ph + out_hw[0]) // sh), -(-(pw + out_hw[1]) // sw)
    b_g = b // groups
    w = jnp.pad(w, ((0, mh * sh - kh), (0, mw * sw - kw), (0, 0), (0, 0)))
    w = w.reshape(mh, sh, mw, sw, a_g, groups, b_g)[::-1, :, ::-1]
    w = w.transpose(0, 2, 6, 5, 1, 3, 4).reshape(mh, mw, b_g, groups * sh * sw * a_g)
    if groups == 1:  # per-tap matmuls: also keeps the kernel gradient off XLA's slow path
        z = _conv_by_taps(y, w, (mh - 1, mw - 1), (qh, qw), (1, 1), False)
    else:
        z = lax.conv_general_dilated(
            y, w.astype(y.dtype), (1, 1), [(mh - 1, qh - h_in), (mw - 1, qw - w_in)],
            dimension_numbers=_DIMS, feature_group_count=groups)
    z = z.reshape(n, qh, qw, groups, sh, sw, a_g).transpose(0, 1, 4, 2, 5, 3, 6)
    z = z.reshape(n, qh * sh, qw * sw, groups * a_g)
    return z[:, ph:ph + out_hw[0], pw:pw + out_hw[1]]


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _conv_transpose(y, w, stride, pads, dilation, groups):
    kh, kw, a_g, b = w.shape
    # Flip spatially and swap in/out per group: [kh, kw, B/g, A] for a grouped conv B -> A.
    wt = w[::-1, ::-1].reshape(kh, kw, a_g, groups, b // groups)
    wt = wt.transpose(0, 1, 4, 3, 2).reshape(kh, kw, b // groups, groups * a_g)
    return lax.conv_general_dilated(
        y, wt.astype(y.dtype), window_strides=(1, 1), padding=pads, lhs_dilation=stride,
        rhs_dilation=dilation, dimension_numbers=_DIMS, feature_group_count=groups)


def conv_as_matrix(w: jax.Array, in_hw, *, stride=1, padding=0, dilation=1) -> jax.Array:
    """The dense matrix C of `conv2d(., w, stride, padding, dilation)` on one [H, W, A] image.

    `conv2d(x[None], w)[0].ravel() == C @ x.ravel()` (row-major HWC), C of shape
    [Ho * Wo * B, H * W * A]; `C.T` is the transposed convolution. Built by index arithmetic
    (entry (out pixel, out channel; in pixel, in channel) = the kernel tap linking them), and
    differentiable in w. For teaching and tests: memory grows as (H * W)^2.

    Args:
      w: [kh, kw, A, B] kernel; in_hw: (H, W); stride, padding, dilation as in conv2d (int/pair).
    """
    check_rank(w, 4, "w", "kh, kw, A, B")
    h, wd = positive_pair(in_hw, "in_hw")
    s = positive_pair(stride, "stride")
    d = positive_pair(dilation, "dilation")
    kh, kw, a, b = w.shape
    pads = _explicit_padding(padding, (h, wd), (kh, kw), s, d)
    ho, wo = [_out_size(n, k, si, di, lo, hi)
              for n, k, si, di, (lo, hi) in zip((h, wd), (kh, kw), s, d, pads)]
    if min(ho, wo) < 1:
        raise ValueError(f"conv output would be empty for in_hw {in_hw!r} and w {w.shape}")
    oy, ox, i, j = np.meshgrid(np.arange(ho), np.arange(wo), np.arange(kh), np.arange(kw),
                               indexing="ij")
    iy = oy * s[0] + i * d[0] - pads[0][0]
    ix = ox * s[1] + j * d[1] - pads[1][0]
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd)
    oy, ox, i, j, iy, ix = (v[inside] for v in (oy, ox, i, j, iy, ix))
    # Every (out pixel, tap) pair links A x B channel entries.
    ca, cb = np.meshgrid(np.arange(a), np.arange(b), indexing="ij")
    rows = ((oy * wo + ox) * b)[:, None, None] + cb[None]
    cols = ((iy * wd + ix) * a)[:, None, None] + ca[None]
    return _scatter_taps(jnp.asarray(w), i, j, rows, cols, (ho * wo * b, h * wd * a))


@functools.partial(jax.jit, static_argnums=(5,))
def _scatter_taps(w, i, j, rows, cols, shape):
    return jnp.zeros(shape, w.dtype).at[rows, cols].add(w[i, j])  # w[i, j]: [T, A, B]
