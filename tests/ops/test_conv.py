"""segjax.ops.conv vs torch conv2d / conv_transpose2d, adjoint identities and the lecture example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch.nn.functional as F

from segjax.ops import atrous_conv2d, conv2d, conv_as_matrix, conv_transpose2d
from tests.ops.helpers import grad_nhwc, jaxpr_eqns, nchw, torch_kernel, torch_vjp

# (in_hw, channels in, out, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    ((7, 9), 3, 4, (3, 3), 1, 0, 1, 1),
    ((7, 6), 4, 6, (3, 3), 2, 1, 1, 2),
    ((8, 7), 3, 2, (3, 2), (3, 2), (2, 1), 1, 1),
    ((7, 7), 6, 6, (3, 3), 1, 2, 2, 6),            # depthwise, dilation 2
    ((5, 9), 2, 3, (3, 3), 2, 3, 3, 1),
    ((4, 6), 2, 3, (5, 3), (2, 1), (6, 2), (3, 2), 1),  # outer kernel rows only see padding
    ((5, 6), 3, 2, (3, 3), 1, 8, 8, 1),            # rate > map: reduces to a 1x1 conv
    ((6, 5), 2, 2, (1, 1), 3, 0, 1, 1),
]


def _weights(np_rng, k, c_in, c_out, groups):
    return np_rng.normal(size=(*k, c_in // groups, c_out)).astype(np.float32)


@pytest.mark.parametrize("in_hw,c_in,c_out,k,stride,padding,dilation,groups", CONV_CASES)
def test_conv2d_matches_torch(np_rng, in_hw, c_in, c_out, k, stride, padding, dilation, groups):
    x = np_rng.normal(size=(2, *in_hw, c_in)).astype(np.float32)
    w = _weights(np_rng, k, c_in, c_out, groups)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y, vjp = jax.vjp(lambda a, b: conv2d(a, b, **kw), jnp.asarray(x), jnp.asarray(w))
    ct = np_rng.normal(size=y.shape).astype(np.float32)
    gx, gw = vjp(jnp.asarray(ct))
    ty, (tgx, tgw) = torch_vjp(lambda a, b: F.conv2d(a, b, **kw), [nchw(x), torch_kernel(w)], ct)
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gx, grad_nhwc(tgx), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gw, np.transpose(tgw, (2, 3, 1, 0)), rtol=1e-5, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_string_padding(np_rng, padding):
    x = np_rng.normal(size=(1, 7, 10, 2)).astype(np.float32)
    w = np_rng.normal(size=(3, 5, 2, 3)).astype(np.float32)
    y = conv2d(x, w, dilation=2, padding=padding)
    ty = F.conv2d(nchw(x), torch_kernel(w), dilation=2, padding=padding.lower())
    np.testing.assert_allclose(y, ty.detach().permute(0, 2, 3, 1), rtol=1e-5, atol=1e-4)
    # Even kernels: the odd total padding goes at the end (torch's "same" and lax agree).
    w_even = np_rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
    y_even = conv2d(x, w_even, dilation=(1, 3), padding=padding)
    t_even = F.conv2d(nchw(x), torch_kernel(w_even), dilation=(1, 3), padding=padding.lower())
    np.testing.assert_allclose(y_even, t_even.detach().permute(0, 2, 3, 1), rtol=1e-5, atol=1e-4)
    # SAME with stride: output ceil(H / s), total padding split with the extra at the end.
    y2 = conv2d(x, w, stride=2, padding="SAME")
    assert y2.shape == (1, 4, 5, 3)
    ref = conv2d(np.pad(x, ((0, 0), (1, 1), (1, 2), (0, 0))), w, stride=2)
    np.testing.assert_allclose(y2, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rate", [1, 2, 3, 5, 6, (2, 7), 12])
def test_atrous_conv2d_matches_torch(np_rng, rate):
    x = np_rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    w = np_rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    r = (rate, rate) if isinstance(rate, int) else rate
    y, vjp = jax.vjp(lambda a, b: atrous_conv2d(a, b, rate), jnp.asarray(x), jnp.asarray(w))
    assert y.shape == (2, 5, 6, 4)
    ct = np_rng.normal(size=y.shape).astype(np.float32)
    gx, gw = vjp(jnp.asarray(ct))
    ty, (tgx, tgw) = torch_vjp(lambda a, b: F.conv2d(a, b, padding=r, dilation=r),
                               [nchw(x), torch_kernel(w)], ct)
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gx, grad_nhwc(tgx), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gw, np.transpose(tgw, (2, 3, 1, 0)), rtol=1e-5, atol=1e-4)


def test_atrous_computes_only_taps_that_read_input():
    x = jnp.zeros((1, 5, 6, 3))
    w = jnp.zeros((3, 3, 3, 4))

    def n_products(rate):
        eqns = jaxpr_eqns(lambda a: atrous_conv2d(a, w, rate), x)
        assert not [e for e in eqns if e.primitive.name == "conv_general_dilated"]
        return len([e for e in eqns if e.primitive.name == "dot_general"])

    assert n_products(6) == 1  # rate >= both sides: only the centre tap reads input
    assert n_products(5) == 3  # rows: only the centre; columns (6 > 5): all three
    assert n_products(4) == 9
    assert n_products((2, 9)) == 3
    # Other convolutions keep lax's conv but drop kernel rows that only read padding.
    eqns = jaxpr_eqns(lambda a: conv2d(a, jnp.zeros((5, 3, 3, 4)), stride=(2, 1), padding=(6, 2),
                                  dilation=(3, 2)), jnp.zeros((1, 4, 6, 3)))
    convs = [e.invars[1].aval.shape for e in eqns if e.primitive.name == "conv_general_dilated"]
    assert convs == [(2, 3, 3, 4)]


# (y channels B, A, kernel, stride, padding, output_padding, dilation, groups)
TRANSPOSE_CASES = [
    (3, 4, (3, 3), 1, 0, 0, 1, 1),
    (4, 2, (4, 4), 2, 1, 0, 1, 1),
    (4, 6, (3, 3), 2, 1, 1, 1, 2),
    (2, 3, (3, 2), (3, 2), (1, 0), (2, 1), 1, 1),
    (3, 3, (3, 3), 2, 2, 1, 3, 3),
    (2, 5, (2, 3), 1, (0, 2), (1, 0), (2, 3), 1),
    (2, 2, (5, 5), 3, 4, 0, 1, 1),                 # padding > kernel extent: crops
]


@pytest.mark.parametrize("b,a,k,stride,padding,output_padding,dilation,groups", TRANSPOSE_CASES)
def test_conv_transpose2d_matches_torch(np_rng, b, a, k, stride, padding, output_padding, dilation,
                                        groups):
    y = np_rng.normal(size=(2, 4, 5, b)).astype(np.float32)
    w = np_rng.normal(size=(*k, a // groups, b)).astype(np.float32)
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
              groups=groups)
    x, vjp = jax.vjp(lambda u, v: conv_transpose2d(u, v, **kw), jnp.asarray(y), jnp.asarray(w))
    ct = np_rng.normal(size=x.shape).astype(np.float32)
    gy, gw = vjp(jnp.asarray(ct))
    tw = torch_kernel(w)  # [B, A/g, kh, kw]: torch's conv_transpose weight layout
    tx, (tgy, tgw) = torch_vjp(lambda u, v: F.conv_transpose2d(u, v, **kw), [nchw(y), tw], ct)
    np.testing.assert_allclose(x, tx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gy, grad_nhwc(tgy), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gw, np.transpose(tgw, (2, 3, 1, 0)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("in_hw,c_in,c_out,k,stride,padding,dilation,groups", CONV_CASES)
def test_conv_transpose2d_is_the_adjoint_of_conv2d(np_rng, in_hw, c_in, c_out, k, stride, padding,
                                                   dilation, groups):
    x = np_rng.normal(size=(2, *in_hw, c_in)).astype(np.float32)
    w = _weights(np_rng, k, c_in, c_out, groups)
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    y_shape = conv2d(x, w, groups=groups, **kw).shape
    y = np_rng.normal(size=y_shape).astype(np.float32)
    # output_padding recovers the input sizes lost to the stride's floor.
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    op = tuple(n - ((m - 1) * s - 2 * p + d * (kk - 1) + 1)
               for n, m, s, p, d, kk in zip(in_hw, y_shape[1:3], (sh, sw), (ph, pw), (dh, dw), k))
    xt = conv_transpose2d(y, w, output_padding=op, groups=groups, **kw)
    _, vjp = jax.vjp(lambda a: conv2d(a, w, groups=groups, **kw), jnp.asarray(x))
    np.testing.assert_allclose(xt, vjp(jnp.asarray(y))[0], rtol=1e-5, atol=1e-4)
    lhs = np.vdot(np.asarray(conv2d(x, w, groups=groups, **kw), np.float64), y)
    rhs = np.vdot(x, np.asarray(xt, np.float64))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


@pytest.mark.parametrize("in_hw,k,stride,padding,dilation", [
    ((5, 6), (3, 3), 1, 0, 1), ((6, 5), (3, 2), 2, 1, 1), ((7, 7), (3, 3), 3, 2, 2),
    ((5, 4), (3, 3), 1, "SAME", 2),
])
def test_conv_as_matrix(np_rng, in_hw, k, stride, padding, dilation):
    x = np_rng.normal(size=(*in_hw, 2)).astype(np.float32)
    w = np_rng.normal(size=(*k, 2, 3)).astype(np.float32)
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    c = conv_as_matrix(w, in_hw, **kw)
    y = conv2d(x[None], w, **kw)[0]
    assert c.shape == (y.size, x.size)
    np.testing.assert_allclose(c @ x.ravel(), np.asarray(y).ravel(), rtol=1e-5, atol=1e-4)
    if isinstance(padding, int):
        g = np_rng.normal(size=y.shape).astype(np.float32)
        op = tuple(n - ((m - 1) * s - 2 * padding + dilation * (kk - 1) + 1)
                   for n, m, s, kk in zip(in_hw, y.shape[:2], (stride, stride), k))
        xt = conv_transpose2d(g[None], w, output_padding=op, **kw)[0]
        np.testing.assert_allclose(c.T @ g.ravel(), np.asarray(xt).ravel(), rtol=1e-5, atol=1e-4)
    # Differentiable in w: d<C x, g>/dw equals the conv's kernel gradient.
    g = np_rng.normal(size=y.shape).astype(np.float32)
    gw_mat = jax.grad(lambda v: (conv_as_matrix(v, in_hw, **kw) @ x.ravel()) @ g.ravel())(w)
    gw_conv = jax.grad(lambda v: jnp.vdot(conv2d(x[None], v, **kw)[0], g))(w)
    np.testing.assert_allclose(gw_mat, gw_conv, rtol=1e-5, atol=1e-4)


def test_lecture_worked_example():
    """4x4 input, 3x3 kernel, stride 1, no padding -> 2x2; the 4x16 matrix; transpose 2x2 -> 4x4."""
    w = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.float32)[:, :, None, None]
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    # Top-left: 0*1+1*2+2*3 + 4*4+5*5+6*6 + 8*7+9*8+10*9 = 303; a step right adds sum(w) = 45,
    # a step down adds 4 * 45 = 180.
    np.testing.assert_allclose(conv2d(x, w)[0, :, :, 0], [[303, 348], [483, 528]])
    expected_c = np.array([
        [1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 0, 0, 0, 0],
        [0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0],
        [0, 0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9],
    ], np.float32)
    c = conv_as_matrix(w, (4, 4))
    np.testing.assert_array_equal(c, expected_c)
    np.testing.assert_allclose(c @ x.ravel(), [303, 348, 483, 528])
    # Transposed: each y value stamps a scaled copy of w at its position (sum = 10 * 45 = 450).
    y = np.array([[1, 2], [3, 4]], np.float32)
    expected_t = np.array([[1, 4, 7, 6],
                           [7, 23, 33, 24],
                           [19, 53, 63, 42],
                           [21, 52, 59, 36]], np.float32)
    np.testing.assert_allclose((c.T @ y.ravel()).reshape(4, 4), expected_t)
    np.testing.assert_allclose(conv_transpose2d(y[None, :, :, None], w)[0, :, :, 0], expected_t)


def test_jit_vmap_bfloat16(np_rng):
    x = np_rng.normal(size=(3, 2, 7, 6, 4)).astype(np.float32)
    w = np_rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    w2 = np_rng.normal(size=(3, 3, 4, 4)).astype(np.float32)

    def chain(v, dt):
        y = conv2d(v.astype(dt), w.astype(dt), stride=2, padding=1, groups=2)
        y = atrous_conv2d(y, w2.astype(dt), 3)
        return conv_transpose2d(y, w2.astype(dt), stride=2, padding=1, output_padding=(0, 1))

    f = jax.jit(jax.vmap(lambda v: chain(v, jnp.float32)))
    single = jax.jit(lambda v: chain(v, jnp.float32))  # the unbatched reference, one compile
    ref = np.stack([single(v) for v in x])
    np.testing.assert_allclose(f(x), ref, rtol=1e-5, atol=1e-3)
    fb = jax.jit(jax.vmap(lambda v: chain(v, jnp.bfloat16)))
    yb = fb(x)
    assert yb.dtype == jnp.bfloat16
    scale = np.abs(ref).max()
    np.testing.assert_allclose(np.asarray(yb, np.float32) / scale, ref / scale, atol=0.03)
    g = jax.grad(lambda v: fb(v).astype(jnp.float32).sum())(x)
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    c = jax.jit(lambda v: conv_as_matrix(v, (5, 4), stride=2))(jnp.asarray(w[:, :, :1, :2]))
    np.testing.assert_array_equal(c, conv_as_matrix(w[:, :, :1, :2], (5, 4), stride=2))


def test_bad_input_raises():
    x = np.zeros((1, 5, 5, 4), np.float32)
    w = np.zeros((3, 3, 4, 2), np.float32)
    with pytest.raises(ValueError, match="rank 4"):
        conv2d(x[0], w)
    with pytest.raises(ValueError, match="rank 4"):
        conv2d(x, w[0])
    with pytest.raises(ValueError, match="channels"):
        conv2d(x, w[:, :, :3])
    with pytest.raises(ValueError, match="channels"):
        conv2d(x, w, groups=2)
    with pytest.raises(ValueError, match="divisible"):
        conv2d(x, np.zeros((3, 3, 2, 3)), groups=2)
    with pytest.raises(ValueError, match="groups"):
        conv2d(x, w, groups=0)
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="dilation"):
        conv2d(x, w, dilation=(1, -1))
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, w, padding="FULL")
    with pytest.raises(ValueError, match="empty"):
        conv2d(x, w, dilation=3)
    with pytest.raises(ValueError, match="rate"):
        atrous_conv2d(x, w, 0)
    y = np.zeros((1, 3, 3, 2), np.float32)
    with pytest.raises(ValueError, match="channels"):
        conv_transpose2d(y, w[..., :1])
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(y, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(y, w, stride=1, dilation=1, output_padding=1)
    conv_transpose2d(y, w, stride=1, dilation=2, output_padding=1)  # < dilation: allowed (torch)
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(y, w, output_padding=-1)
    with pytest.raises(ValueError, match="rank 4"):
        conv_transpose2d(y[0], w)
    with pytest.raises(ValueError, match="in_hw"):
        conv_as_matrix(w, (0, 4))
    with pytest.raises(ValueError, match="empty"):
        conv_as_matrix(w, (2, 2))


@pytest.mark.parametrize("kernel,dilation,padding,depthwise,stride", [
    (3, 2, ((2, 2), (2, 2)), False, 1), ((3, 5), (12, 3), "SAME", False, 1),
    (3, 4, ((4, 4), (4, 4)), True, 1),
    (3, 1, ((1, 1), (1, 1)), False, 1),  # not dilated: lax's path
    (1, 1, ((0, 0), (0, 0)), False, 2),  # strided 1x1: subsample + matmul
    (3, 1, ((1, 1), (1, 1)), False, 2),  # strided 3x3: lax's path
])
def test_flax_conv_with_the_fast_conv_general_dilated(np_rng, kernel, dilation, padding, depthwise,
                                                      stride):
    import flax.linen as nn

    from segjax.ops import conv_general_dilated

    x = np_rng.normal(size=(2, 9, 7, 4)).astype(np.float32)
    kw = dict(features=4, kernel_size=kernel if isinstance(kernel, tuple) else (kernel, kernel),
              kernel_dilation=dilation, padding=padding, feature_group_count=4 if depthwise else 1,
              strides=stride)
    plain, fast = nn.Conv(**kw), nn.Conv(**kw, conv_general_dilated=conv_general_dilated)
    k = kw["kernel_size"]
    variables = {"params": {"kernel": np_rng.normal(size=(*k, 1 if depthwise else 4, 4)).astype(np.float32),
                            "bias": np_rng.normal(size=(4,)).astype(np.float32)}}
    ct = np_rng.normal(size=(2, 9 if stride == 1 else 5, 7 if stride == 1 else 4, 4)).astype(np.float32)
    y0, vjp0 = jax.vjp(lambda v, a: plain.apply(v, a), variables, x)
    y1, vjp1 = jax.vjp(lambda v, a: fast.apply(v, a), variables, x)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-4)
    g0, g1 = vjp0(jnp.asarray(ct)), vjp1(jnp.asarray(ct))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    avoids_lax = not [e for e in jaxpr_eqns(lambda a: fast.apply(variables, a), x)
                      if e.primitive.name == "conv_general_dilated"]
    assert avoids_lax == (max(np.atleast_1d(dilation)) > 1 or kernel == 1)


def test_strided_conv_transpose_inserts_no_zeros():
    # Sub-pixel form: stride^2 phases as channels of one stride-1 computation, no lhs dilation.
    y, w = jnp.zeros((1, 4, 5, 3)), jnp.zeros((4, 4, 2, 3))
    for groups, wg in ((1, w), (3, jnp.zeros((4, 4, 2, 3)))):
        eqns = jaxpr_eqns(lambda a: conv_transpose2d(a, wg, stride=2, padding=1, groups=groups), y)
        dilations = [e.params["lhs_dilation"] for e in eqns if e.primitive.name == "conv_general_dilated"]
        assert all(tuple(d) == (1, 1) for d in dilations)
        assert dilations or groups == 1


def test_live_fraction_by_hand_and_dense_dilated_convs_stay_on_lax(np_rng):
    from segjax.ops import conv as conv_lib

    # 3 taps at rate 2 over 32 outputs with padding 2: 30 + 32 + 30 live per axis.
    assert conv_lib.live_fraction((32, 32), (3, 3), (2, 2), (2, 2), (32, 32)) == pytest.approx(
        (92 / 96) ** 2)
    # Rate >= the map: only the centre tap is live.
    assert conv_lib.live_fraction((5, 5), (3, 3), (6, 6), (6, 6), (5, 5)) == pytest.approx(1 / 9)
    # A dense dilated conv (rate 2 on 16x16: fraction 0.77) is left to lax, a sparse one (rate 8:
    # 0.44) goes per tap; both equal torch, forward and backward.
    for rate, per_tap in ((2, False), (8, True)):
        x = np_rng.normal(size=(1, 16, 16, 3)).astype(np.float32)
        w = np_rng.normal(size=(3, 3, 3, 2)).astype(np.float32)
        fn = lambda a, b, r=rate: atrous_conv2d(a, b, r)  # noqa: E731
        lax_convs = [e for e in jaxpr_eqns(fn, x, w) if e.primitive.name == "conv_general_dilated"]
        assert (not lax_convs) == per_tap
        y, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(w))
        ct = np_rng.normal(size=y.shape).astype(np.float32)
        ty, (tgx, tgw) = torch_vjp(lambda a, b, r=rate: F.conv2d(a, b, padding=r, dilation=r),
                                   [nchw(x), torch_kernel(w)], ct)
        gx, gw = vjp(jnp.asarray(ct))
        np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(gx, grad_nhwc(tgx), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(gw, np.transpose(tgw, (2, 3, 1, 0)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("c,o", [(3, 8), (8, 3)])
def test_pointwise_conv_vjp_equals_torch(np_rng, c, o):
    """The hand-written VJP (either operand transposed for the kernel gradient) is exact."""
    from segjax.ops.conv import pointwise_conv

    x = np_rng.normal(size=(2, 5, 4, c)).astype(np.float32)
    w = np_rng.normal(size=(c, o)).astype(np.float32)
    y, vjp = jax.vjp(lambda a, b: pointwise_conv(a, b), jnp.asarray(x), jnp.asarray(w))
    ct = np_rng.normal(size=y.shape).astype(np.float32)
    gx, gw = vjp(jnp.asarray(ct))
    ty, (tgx, tgw) = torch_vjp(F.conv2d, [nchw(x), torch_kernel(w[None, None])], ct)
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, grad_nhwc(tgx), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, np.transpose(tgw, (2, 3, 1, 0))[0, 0], rtol=1e-5, atol=1e-5)
