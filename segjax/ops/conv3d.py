"""3-D convolution, atrous convolution and transposed convolution (NDHWC volumes, DHWIO kernels).

The volumetric counterparts of `segjax.ops.conv` and `segjax.ops.conv_transpose`, for 3D U-Net /
V-Net (Çiçek et al. 2016, §2: 3x3x3 convolutions and 2x2x2 up-convolutions; Milletari et al.
2016, §2: 5x5x5 convolutions and 2x2x2 de-convolutions):

* `conv3d` is cross-correlation like `torch.nn.functional.conv3d`, `atrous_conv3d` its stride-1
  dilated form with "SAME" padding;
* `conv_transpose3d` is the exact adjoint of `conv3d`, equal to `F.conv_transpose3d` with weight
  `w.transpose(4, 3, 0, 1, 2)`. Strided, it is computed by output phase as in 2-D: output position
  t = i * s + k receives y[i] * w[k], so phase t % s = f only meets the taps k = f + m * s and is a
  stride-1 "full" correlation of y with the sub-kernel w[f::s]. All s_d * s_h * s_w phases are the
  output channels of one stride-1 conv, interleaved afterwards (depth-to-space): no zeros are
  inserted into y and multiplied, which is s_d * s_h * s_w times fewer multiplications than the
  input-dilated form.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from segjax.ops._args import check_rank, non_negative_ints, positive_ints
from segjax.ops.conv import _explicit_padding, _out_size

_DIMS3 = ("NDHWC", "DHWIO", "NDHWC")


def _check_groups(groups, w):
    """`groups` is a positive int dividing the kernel's out-channels (w's last axis)."""
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if w.shape[-1] % groups:
        raise ValueError(f"w out-channels {w.shape[-1]} must be divisible by groups={groups}")


def conv3d(x: jax.Array, w: jax.Array, *, stride=1, padding=0, dilation=1, groups=1) -> jax.Array:
    """3-D cross-correlation, like `torch.nn.functional.conv3d` (NDHWC input, DHWIO kernel).

    Args:
      x: [N, D, H, W, C] input volume.
      w: [kd, kh, kw, C / groups, O] kernel.
      stride, dilation: int or (d, h, w) triple, >= 1.
      padding: int or triple of symmetric zero padding, or "SAME" (output ceil(D / stride), odd
        padding extra at the end, as lax) or "VALID".
      groups: feature groups; C and O must be divisible by it.
    Returns:
      [N, Do, Ho, Wo, O] with Do = floor((D + pad_lo + pad_hi - dilation * (kd - 1) - 1) / stride)
      + 1 (likewise Ho, Wo), computed in x's dtype (w is cast to it).
    """
    check_rank(x, 5, "x", "N, D, H, W, C")
    check_rank(w, 5, "w", "kd, kh, kw, in/groups, out")
    _check_groups(groups, w)
    if w.shape[3] * groups != x.shape[4]:
        raise ValueError(f"x has {x.shape[4]} channels but w {w.shape} expects in/groups="
                         f"{w.shape[3]} x groups={groups} = {w.shape[3] * groups}")
    s = positive_ints(stride, 3, "stride")
    d = positive_ints(dilation, 3, "dilation")
    pads = _explicit_padding(padding, x.shape[1:4], w.shape[:3], s, d)
    out = [_out_size(n, k, si, di, lo, hi)
           for n, k, si, di, (lo, hi) in zip(x.shape[1:4], w.shape[:3], s, d, pads)]
    if min(out) < 1:
        raise ValueError(f"conv3d output would be empty: x {x.shape}, w {w.shape}, stride {s}, "
                         f"padding {padding!r}, dilation {d}")
    return _conv3d(x, jnp.asarray(w), s, tuple(pads), d, groups)


# Jitted so eager calls compile once per configuration instead of dispatching op by op.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _conv3d(x, w, stride, pads, dilation, groups):
    return lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=stride, padding=pads, rhs_dilation=dilation,
        dimension_numbers=_DIMS3, feature_group_count=groups)


def atrous_conv3d(x: jax.Array, w: jax.Array, rate, *, padding="SAME") -> jax.Array:
    """Atrous (dilated) 3-D convolution: `conv3d(x, w, dilation=rate, padding=padding)`, stride 1.

    With the default "SAME" padding the output has the input's spatial size. `rate` is an int or
    (d, h, w) triple >= 1; x [N, D, H, W, C], w [kd, kh, kw, C, O] -> [N, D, H, W, O].
    """
    return conv3d(x, w, stride=1, padding=padding, dilation=positive_ints(rate, 3, "rate"))


def conv_transpose3d(y: jax.Array, w: jax.Array, *, stride=1, padding=0, output_padding=0,
                     dilation=1, groups=1) -> jax.Array:
    """Transposed 3-D convolution: the adjoint of `x -> conv3d(x, w, stride, padding, dilation,
    groups)`.

    Equal to `torch.nn.functional.conv_transpose3d(y, w.transpose(4, 3, 0, 1, 2), ...)` (NDHWC
    here). A 2x2x2 kernel at stride 2 is 3D U-Net's up-convolution.

    Args:
      y: [N, D', H', W', B] (the conv's output space).
      w: [kd, kh, kw, A / groups, B] — the kernel of the forward conv A -> B.
      stride, dilation: int or (d, h, w) triple >= 1; padding: int or triple >= 0 (the forward
        conv's padding).
      output_padding: int or triple, extra planes/rows/columns at the end, each < stride or
        < dilation (as torch), choosing among the input sizes that map to the same D'.
      groups: as in the forward conv.
    Returns:
      [N, D, H, W, A] with D = (D' - 1) * stride - 2 * padding + dilation * (kd - 1)
      + output_padding + 1 (likewise H, W).
    """
    check_rank(y, 5, "y", "N, D', H', W', B")
    check_rank(w, 5, "w", "kd, kh, kw, A/groups, B")
    if y.shape[4] != w.shape[4]:
        raise ValueError(f"y has {y.shape[4]} channels but w {w.shape} maps to B={w.shape[4]}")
    _check_groups(groups, w)
    s = positive_ints(stride, 3, "stride")
    d = positive_ints(dilation, 3, "dilation")
    p = non_negative_ints(padding, 3, "padding")
    op = non_negative_ints(output_padding, 3, "output_padding")
    for oi, si, di in zip(op, s, d):
        if oi >= si and oi >= di:
            raise ValueError(f"output_padding {output_padding!r} must be smaller than stride "
                             f"{stride!r} or dilation {dilation!r}")
    out = [(n - 1) * si - 2 * pi + di * (k - 1) + oi + 1
           for n, si, pi, di, k, oi in zip(y.shape[1:4], s, p, d, w.shape[:3], op)]
    if min(out) < 1:
        raise ValueError(f"conv_transpose3d output would be empty: y {y.shape}, w {w.shape}, "
                         f"stride {s}, padding {p}, dilation {d}")
    w = jnp.asarray(w)
    if s == (1, 1, 1):
        pads = tuple((di * (k - 1) - pi, di * (k - 1) - pi + oi)
                     for di, k, pi, oi in zip(d, w.shape[:3], p, op))
        return _conv_transpose3d_stride1(y, w, pads, d, groups)
    return _conv_transpose3d_phases(y, w, s, p, tuple(out), d, groups)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _conv_transpose3d_stride1(y, w, pads, dilation, groups):
    """Stride 1: correlation with the flipped kernel, in/out swapped per group, fully padded."""
    kd, kh, kw, a_g, b = w.shape
    wt = w[::-1, ::-1, ::-1].reshape(kd, kh, kw, a_g, groups, b // groups)
    wt = wt.transpose(0, 1, 2, 5, 4, 3).reshape(kd, kh, kw, b // groups, groups * a_g)
    return lax.conv_general_dilated(
        y, wt.astype(y.dtype), window_strides=(1, 1, 1), padding=pads, rhs_dilation=dilation,
        dimension_numbers=_DIMS3, feature_group_count=groups)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _conv_transpose3d_phases(y, w, stride, padding, out, dilation, groups):
    """Strided transposed conv as one stride-1 conv onto s_d * s_h * s_w phase channels.

    Along an axis with m = ceil(k / s) sub-kernel taps, phase f's grid of q = ceil((pad + out) / s)
    positions is the "full" correlation of y (padded by m - 1 before) with the flipped taps
    w[f::s]; the padded input is cropped back to `out` after interleaving.
    """
    n, b = y.shape[0], y.shape[4]
    if dilation != (1, 1, 1):  # spread the taps out: a dilated kernel is a sparse undilated one
        k = [(ki - 1) * di + 1 for ki, di in zip(w.shape[:3], dilation)]
        w = jnp.zeros((*k, *w.shape[3:]), w.dtype).at[
            ::dilation[0], ::dilation[1], ::dilation[2]].set(w)
    (kd, kh, kw, a_g, _), b_g = w.shape, b // groups
    (sd, sh, sw) = stride
    m = [-(-ki // si) for ki, si in zip((kd, kh, kw), stride)]
    q = [-(-(pi + oi) // si) for pi, oi, si in zip(padding, out, stride)]
    w = jnp.pad(w, [(0, mi * si - ki) for mi, si, ki in zip(m, stride, (kd, kh, kw))] + [(0, 0)] * 2)
    w = w.reshape(m[0], sd, m[1], sh, m[2], sw, a_g, groups, b_g)[::-1, :, ::-1, :, ::-1]
    # -> [md, mh, mw, B/g, (g, sd, sh, sw, A/g)]: phase channels grouped like y's channels.
    w = w.transpose(0, 2, 4, 8, 7, 1, 3, 5, 6).reshape(*m, b_g, groups * sd * sh * sw * a_g)
    z = lax.conv_general_dilated(
        y, w.astype(y.dtype), (1, 1, 1),
        [(mi - 1, qi - ni) for mi, qi, ni in zip(m, q, y.shape[1:4])],
        dimension_numbers=_DIMS3, feature_group_count=groups)
    z = z.reshape(n, *q, groups, sd, sh, sw, a_g).transpose(0, 1, 5, 2, 6, 3, 7, 4, 8)
    z = z.reshape(n, q[0] * sd, q[1] * sh, q[2] * sw, groups * a_g)
    (pd, ph, pw) = padding
    return z[:, pd:pd + out[0], ph:ph + out[1], pw:pw + out[2]]
