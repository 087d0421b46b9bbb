"""Convolution and atrous convolution (NHWC/HWIO); their adjoint is `segjax.ops.conv_transpose`.

`conv2d` is cross-correlation like `torch.nn.functional.conv2d`.

Atrous convolutions with large rates read mostly padding, and XLA's dilated convolution is slow on
CPU (DESIGN §6). `conv2d` therefore computes stride-1 dilated convolutions (dense or depthwise) as
a sum over kernel taps of 1x1 products restricted to the output region where the tap reads real
input: exact, matmul-bound, and with no work at all for taps that only see padding (at
rate >= map size a 3x3 atrous conv costs a 1x1 conv). For other convolutions it still drops
kernel border rows/columns that only ever read padding, adjusting the padding so the output is
unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from segjax.ops._args import check_rank, non_negative_ints, positive_pair
from segjax.ops.winograd import TILES as WINOGRAD_TILES
from segjax.ops.winograd import winograd_conv3x3

_DIMS = ("NHWC", "HWIO", "NHWC")


def _explicit_padding(padding, in_hw, k_hw, stride, dilation) -> list[tuple[int, int]]:
    """(low, high) padding per spatial axis for int / one int per axis / "SAME" / "VALID"."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return [(0, 0)] * len(in_hw)
        if mode == "SAME":  # TF/lax rule: output ceil(in / stride), extra padding at the end.
            pads = []
            for n, k, s, d in zip(in_hw, k_hw, stride, dilation):
                total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
                pads.append((total // 2, total - total // 2))
            return pads
        raise ValueError(f"padding must be an int, {len(in_hw)} ints, 'SAME' or 'VALID', "
                         f"got {padding!r}")
    return [(p, p) for p in non_negative_ints(padding, len(in_hw), "padding")]


def _out_size(n, k, s, d, lo, hi) -> int:
    return (n + lo + hi - d * (k - 1) - 1) // s + 1


# Per-tap dilated convolution pays for slicing the input and padding the partial outputs once per
# tap; it wins when it skips enough dead work. Measured on the 2-core AVX-512 CPU (BENCHMARKS.md,
# forward + backward, 4x32x32 maps): rates 2 and 4 (live fraction 0.92, 0.84) are 1.9x / 1.2x
# faster through XLA's convolution; rates 12 and 24 (0.56, 0.25) are 2.0x / 6.3x faster per tap.
PER_TAP_MAX_LIVE_FRACTION = 0.7


def live_fraction(in_hw, k_hw, dilation, pad_lo, out_hw) -> float:
    """Fraction of a stride-1 conv's tap x output products that read real input (not padding)."""
    total = 1.0
    for n, k, d, lo, o in zip(in_hw, k_hw, dilation, pad_lo, out_hw):
        live = sum(max(0, min(o, n - (i * d - lo)) - max(0, -(i * d - lo))) for i in range(k))
        total *= live / (k * o)
    return total


def _live_taps(n, k, s, d, lo, out) -> tuple[int, int]:
    """[first, last] kernel taps along one axis that read real input for some output position."""
    def reads_input(i):
        first, last = i * d - lo, (out - 1) * s + i * d - lo
        # Positions first, first+s, ..., last; some lies in [0, n) iff the strided range hits it.
        if last < 0 or first >= n:
            return False
        lo_hit = max(0, -(-(0 - first) // s)) if first < 0 else 0
        return first + lo_hit * s < n

    live = [i for i in range(k) if reads_input(i)]
    return (live[0], live[-1]) if live else (k // 2, k // 2)


def _check_conv_args(x, w, groups):
    check_rank(x, 4, "x", "N, H, W, C")
    check_rank(w, 4, "w", "kh, kw, in/groups, out")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if w.shape[2] * groups != x.shape[3]:
        raise ValueError(
            f"x has {x.shape[3]} channels but w {w.shape} expects in/groups={w.shape[2]} x "
            f"groups={groups} = {w.shape[2] * groups}")
    if w.shape[3] % groups:
        raise ValueError(f"w out-channels {w.shape[3]} must be divisible by groups={groups}")


def conv2d(x: jax.Array, w: jax.Array, *, stride=1, padding=0, dilation=1, groups=1) -> jax.Array:
    """2-D cross-correlation, like `torch.nn.functional.conv2d` (NHWC input, HWIO kernel).

    Args:
      x: [N, H, W, C] input.
      w: [kh, kw, C / groups, O] kernel.
      stride, dilation: int or (h, w) pair, >= 1.
      padding: int or (h, w) pair of symmetric zero padding, or "SAME" (output ceil(H / stride),
        odd padding extra at the end, as lax) or "VALID".
      groups: feature groups; C and O must be divisible by it.
    Returns:
      [N, Ho, Wo, O] with Ho = floor((H + pad_lo + pad_hi - dilation * (kh - 1) - 1) / stride) + 1,
      computed in x's dtype (w is cast to it).
    """
    _check_conv_args(x, w, groups)
    s = positive_pair(stride, "stride")
    d = positive_pair(dilation, "dilation")
    in_hw, k_hw = x.shape[1:3], w.shape[:2]
    pads = _explicit_padding(padding, in_hw, k_hw, s, d)
    out_hw = [_out_size(n, k, si, di, lo, hi)
              for n, k, si, di, (lo, hi) in zip(in_hw, k_hw, s, d, pads)]
    if min(out_hw) < 1:
        raise ValueError(f"conv2d output would be empty: x {x.shape}, w {w.shape}, stride {s}, "
                         f"padding {padding!r}, dilation {d}")
    depthwise = groups == x.shape[3] == w.shape[3] and groups > 1
    if (s == (1, 1) and max(d) > 1 and (groups == 1 or depthwise)
            and live_fraction(in_hw, k_hw, d, [lo for lo, _ in pads], out_hw)
            <= PER_TAP_MAX_LIVE_FRACTION):
        return _conv_by_taps(x, jnp.asarray(w), tuple(lo for lo, _ in pads), tuple(out_hw), d,
                             depthwise)
    # Drop kernel rows/columns that only ever read padding (exact; see module docstring).
    (r0, r1), (c0, c1) = [_live_taps(n, k, si, di, lo, o)
                          for n, k, si, di, (lo, _), o in zip(in_hw, k_hw, s, d, pads, out_hw)]
    taps = None
    if (r0, r1, c0, c1) != (0, k_hw[0] - 1, 0, k_hw[1] - 1):
        taps = (r0, r1 + 1, c0, c1 + 1)
        new_pads = []
        for n, (t0, t1), si, di, (lo, _), o in zip(in_hw, ((r0, r1), (c0, c1)), s, d, pads, out_hw):
            lo2 = lo - t0 * di
            hi2 = si * (o - 1) + di * (t1 - t0) + 1 - n - lo2
            new_pads.append((lo2, hi2))
        pads = new_pads
    return _conv(x, jnp.asarray(w), s, tuple(pads), d, groups, taps)


# Jitted so eager calls compile once per configuration instead of dispatching op by op.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _conv(x, w, stride, pads, dilation, groups, taps):
    w = w.astype(x.dtype)
    if taps is not None:
        w = w[taps[0]:taps[1], taps[2]:taps[3]]
    return lax.conv_general_dilated(
        x, w, window_strides=stride, padding=pads, rhs_dilation=dilation,
        dimension_numbers=_DIMS, feature_group_count=groups)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _conv_by_taps(x, w, pad_lo, out_hw, dilation, depthwise):
    """Stride-1 dilated conv as a sum over kernel taps of 1x1 products on the overlapping region.

    Tap (i, j) reads input row `oy + i * dh - pad_lo` for output row `oy`: only the output
    rectangle where that lies inside the input is computed (a matmul, or an elementwise product
    for depthwise kernels) and the rest of the tap is skipped. Exact; much faster than XLA's
    dilated convolution on CPU, forward and backward, as the rate grows (DESIGN §6).
    """
    n, h, wd, _ = x.shape
    kh, kw, _, o = w.shape
    ho, wo = out_hw
    acc = jnp.promote_types(x.dtype, jnp.float32)
    w = w.astype(x.dtype)
    out = jnp.zeros((n, ho, wo, o), acc)
    for i in range(kh):
        dy = i * dilation[0] - pad_lo[0]
        oy0, oy1 = max(0, -dy), min(ho, h - dy)
        for j in range(kw):
            dx = j * dilation[1] - pad_lo[1]
            ox0, ox1 = max(0, -dx), min(wo, wd - dx)
            if oy0 >= oy1 or ox0 >= ox1:
                continue  # this tap only ever reads padding
            xs = x[:, oy0 + dy:oy1 + dy, ox0 + dx:ox1 + dx]
            if depthwise:
                part = xs.astype(acc) * w[i, j, 0].astype(acc)
            else:
                part = jnp.einsum("nhwc,co->nhwo", xs, w[i, j], preferred_element_type=acc)
            part = lax.pad(part, jnp.zeros((), acc),
                           ((0, 0, 0), (oy0, ho - oy1, 0), (ox0, wo - ox1, 0), (0, 0, 0)))
            out = out + part
    return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise_conv(x: jax.Array, w: jax.Array, precision=None) -> jax.Array:
    """1x1 convolution `[N, H, W, C] x [C, O] -> [N, H, W, O]` as one matrix product.

    Its VJP computes the kernel gradient `x^T g` (a product over the N*H*W rows of both) with
    the narrower of x and g as the transposed operand: XLA:CPU's matrix kernels want the
    contracted axis minor in the left operand and transpose one operand with a copy, and left
    to itself it copies the gradient g even when g is 4x wider than x (ResNet's expanding 1x1
    convs), which cost ~10% of a DeepLabV3-R50 training step (BENCHMARKS.md).
    """
    return jnp.einsum("nhwc,co->nhwo", x, w, precision=precision)


def _pointwise_fwd(x, w, precision):
    return pointwise_conv(x, w, precision), (x, w)


def _pointwise_bwd(precision, res, g):
    x, w = res
    c, o = w.shape
    x2, g2 = x.reshape(-1, c), g.reshape(-1, o)
    dx = lax.dot_general(g2, w, (((1,), (1,)), ((), ())), precision=precision,
                         preferred_element_type=x.dtype).reshape(x.shape)
    rows = (((0,), (0,)), ((), ()))
    if c <= o:  # transpose the narrower operand
        dw = lax.dot_general(x2, g2, rows, precision=precision, preferred_element_type=w.dtype)
    else:
        dw = lax.dot_general(g2, x2, rows, precision=precision, preferred_element_type=w.dtype).T
    return dx, dw.astype(w.dtype)


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
    """Drop-in for `lax.conv_general_dilated` that routes stride-1 dilated NHWC/HWIO convs
    (dense or depthwise) that mostly read padding to the per-tap form of `conv2d`, unpadded 1x1
    convs (any stride) to a subsample + matmul, other dense stride-1 3x3 float32 convs to
    Winograd F(4x4, 3x3) (`winograd_tile`); everything else goes to lax unchanged.

    Meant for `flax.linen.Conv(..., conv_general_dilated=segjax.ops.conv_general_dilated)`: the
    same parameters and results, the CPU speed of the explicit atrous convolution.
    """
    nhwc = lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), _DIMS)
    dilation = tuple(rhs_dilation or (1, 1))
    # NHWC/HWIO, no input dilation or batch groups, output in the input's dtype: what every
    # explicit form below handles.
    plain = (
        jnp.ndim(lhs) == 4 and jnp.ndim(rhs) == 4
        and lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers) == nhwc
        and tuple(lhs_dilation or (1, 1)) == (1, 1) and batch_group_count == 1
        and preferred_element_type is None)
    stride1 = tuple(window_strides) == (1, 1)
    fast = (
        plain and stride1 and max(dilation) > 1
        and (feature_group_count == 1
             or feature_group_count == lhs.shape[3] == rhs.shape[3]))
    pointwise = (
        plain and not isinstance(padding, str) and rhs.shape[:2] == (1, 1)
        and all(tuple(pd) == (0, 0) for pd in padding) and feature_group_count == 1)
    if pointwise:
        # A (strided) 1x1 conv is a subsample and a matmul; XLA's kernel gradient for the
        # strided conv form is ~3x slower on CPU (ResNet's downsample branches).
        sh, sw = window_strides
        return pointwise_conv(lhs[:, ::sh, ::sw], rhs[0, 0], precision)
    if fast:  # stride 1, so string padding resolves with stride (1, 1)
        pads = padding
        if isinstance(padding, str):
            dilated_k = [d * (k - 1) + 1 for d, k in zip(dilation, rhs.shape[:2])]
            pads = lax.padtype_to_pads(lhs.shape[1:3], dilated_k, (1, 1), padding)
        pads = [(int(lo), int(hi)) for lo, hi in pads]
        out_hw = tuple(_out_size(n, k, 1, d, lo, hi)
                       for n, k, d, (lo, hi) in zip(lhs.shape[1:3], rhs.shape[:2], dilation, pads))
        fast = live_fraction(lhs.shape[1:3], rhs.shape[:2], dilation, [lo for lo, _ in pads],
                             out_hw) <= PER_TAP_MAX_LIVE_FRACTION
    if fast:
        return _conv_by_taps(lhs, rhs, tuple(lo for lo, _ in pads), out_hw, dilation,
                             feature_group_count > 1)
    m = (_winograd_tile_for(lhs, rhs, padding, dilation)
         if plain and stride1 and rhs.shape[:2] == (3, 3) and feature_group_count == 1 else 0)
    if m:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        return winograd_conv3x3(lhs, rhs, dilation, pads, m)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)


# Winograd F(m x m, 3 x 3) for dense stride-1 3x3 convs (`segjax.ops.winograd`): F(4x4) has 1/4 of
# the direct convolution's multiplications. On the 2-core AVX-512 CPU, forward + backward at
# 4x32x32 (DeepLabV3-R50 at 256^2), XLA's convolution / F(4x4): 512 ch rate 4 175 / 90 ms, 256 ch
# 41 / 25, 128 ch 12 / 6, 64 ch at 64^2 21 / 7 (BENCHMARKS.md). float32 only: the transforms
# amplify rounding (float32 results within ~1e-5 of the output's scale; bfloat16 would lose
# ~1e-2). `SEGJAX_WINOGRAD=0` turns it off, `=2` uses F(2x2, 3x3).
WINOGRAD_MIN_CHANNELS = 16
# Below ~1e8 multiply-adds x 2 the transforms cost as much as they save (fwd + bwd ms, XLA /
# F(4x4): 2x32^2x32 ch, 38 MFLOP: 0.67 / 0.56; 2x16^2x16: 0.20 / 0.20), and each Winograd conv
# adds ~0.5 s of compilation against XLA's ~0.1 s.
WINOGRAD_MIN_FLOPS = 1e8


def winograd_tile() -> int:
    """The Winograd output tile m from `SEGJAX_WINOGRAD` (default 4; 0 = off)."""
    import os

    choice = os.environ.get("SEGJAX_WINOGRAD", "4")
    if choice not in ("0", *map(str, WINOGRAD_TILES)):
        raise ValueError(f"SEGJAX_WINOGRAD must be 0 or one of {WINOGRAD_TILES}, got {choice!r}")
    return int(choice)


def _winograd_tile_for(lhs, rhs, padding, dilation) -> int:
    """`winograd_tile()` for a dense stride-1 3x3 conv that Winograd suits, else 0."""
    m = winograd_tile()
    if not m or isinstance(padding, str):
        return 0
    if not (lhs.dtype == rhs.dtype == jnp.float32):
        return 0
    if min(rhs.shape[2], rhs.shape[3]) < WINOGRAD_MIN_CHANNELS:
        return 0
    out_hw = [_out_size(n, 3, 1, d, lo, hi) for n, d, (lo, hi) in zip(lhs.shape[1:3], dilation, padding)]
    if 2 * 9 * lhs.shape[0] * out_hw[0] * out_hw[1] * rhs.shape[2] * rhs.shape[3] < WINOGRAD_MIN_FLOPS:
        return 0
    ok = all(0 <= lo <= 2 * d and 0 <= hi <= 2 * d for (lo, hi), d in zip(padding, dilation))
    return m if ok else 0


def atrous_conv2d(x: jax.Array, w: jax.Array, rate, *, padding="SAME") -> jax.Array:
    """Atrous (dilated) convolution: `conv2d(x, w, dilation=rate, padding=padding)`, stride 1.

    With the default "SAME" padding the output has the input's spatial size. `rate` is an int or
    (h, w) pair >= 1; x [N, H, W, C], w [kh, kw, C, O] -> [N, H, W, O].
    """
    return conv2d(x, w, stride=1, padding=padding, dilation=positive_pair(rate, "rate"))
