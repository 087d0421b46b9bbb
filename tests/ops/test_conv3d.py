"""segjax.ops.conv3d vs torch conv3d / conv_transpose3d (values and autograd gradients), the
adjoint identity <conv3d(x), y> = <x, conv_transpose3d(y)>, jit/vmap, and bad arguments hunted
with Hypothesis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from segjax.ops import atrous_conv3d, conv3d, conv_transpose3d
from tests.ops.helpers import grad_ndhwc, ncdhw, ndhwc, torch_kernel3d, torch_vjp3d

TOL = dict(rtol=1e-5, atol=1e-4)

# (in_dhw, channels in, out, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    ((5, 4, 6), 2, 3, (3, 3, 3), 1, 1, 1, 1),                    # 3D U-Net's 3x3x3
    ((6, 5, 4), 4, 2, (2, 3, 1), (2, 1, 3), (0, 1, 0), 1, 2),
    ((5, 6, 5), 2, 2, (3, 2, 3), 1, (2, 0, 4), (2, 1, 3), 1),   # dilated, per-axis
]

# (y_dhw, A, B, kernel, stride, padding, output_padding, dilation, groups)
TRANSPOSE_CASES = [
    ((3, 2, 4), 2, 3, (2, 2, 2), 2, 0, 0, 1, 1),                # 3D U-Net's up-convolution
    ((3, 4, 2), 3, 2, (3, 2, 3), (2, 3, 1), (1, 0, 1), (1, 2, 0), 1, 1),
    ((2, 3, 4), 4, 6, (3, 3, 2), 2, 1, 1, (2, 1, 3), 2),         # grouped, dilated, strided
    ((2, 2, 3), 2, 2, (2, 3, 3), 3, (1, 2, 0), (0, 2, 1), (1, 2, 1), 1),  # stride > kernel
    ((3, 3, 3), 4, 4, (3, 3, 3), 1, 1, (0, 1, 0), 2, 2),         # output_padding < dilation
]


def _to_dhwio(t_grad):
    return np.transpose(t_grad, (2, 3, 4, 1, 0))


@pytest.mark.parametrize("in_dhw,c_in,c_out,k,stride,padding,dilation,groups", CONV_CASES)
def test_conv3d_matches_torch(np_rng, in_dhw, c_in, c_out, k, stride, padding, dilation, groups):
    x = np_rng.normal(size=(2, *in_dhw, c_in)).astype(np.float32)
    w = np_rng.normal(size=(*k, c_in // groups, c_out)).astype(np.float32)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y, vjp = jax.vjp(lambda a, b: conv3d(a, b, **kw), jnp.asarray(x), jnp.asarray(w))
    ct = np_rng.normal(size=y.shape).astype(np.float32)
    gx, gw = vjp(jnp.asarray(ct))
    ty, (tgx, tgw) = torch_vjp3d(lambda a, b: F.conv3d(a, b, **kw), [ncdhw(x), torch_kernel3d(w)], ct)
    np.testing.assert_allclose(y, ty, **TOL)
    np.testing.assert_allclose(gx, grad_ndhwc(tgx), **TOL)
    np.testing.assert_allclose(gw, _to_dhwio(tgw), **TOL)


@pytest.mark.parametrize("rate", [(1, 2, 3), 6])  # 6 > the map: only the centre tap is live
def test_atrous_conv3d_matches_torch(np_rng, rate):
    x = np_rng.normal(size=(1, 4, 5, 3, 2)).astype(np.float32)
    w = np_rng.normal(size=(3, 3, 3, 2, 3)).astype(np.float32)
    r = (rate,) * 3 if isinstance(rate, int) else rate
    y, vjp = jax.vjp(lambda a, b: atrous_conv3d(a, b, rate), jnp.asarray(x), jnp.asarray(w))
    assert y.shape == (1, 4, 5, 3, 3)
    ct = np_rng.normal(size=y.shape).astype(np.float32)
    gx, gw = vjp(jnp.asarray(ct))
    ty, (tgx, tgw) = torch_vjp3d(lambda a, b: F.conv3d(a, b, padding=r, dilation=r),
                                 [ncdhw(x), torch_kernel3d(w)], ct)
    np.testing.assert_allclose(y, ty, **TOL)
    np.testing.assert_allclose(gx, grad_ndhwc(tgx), **TOL)
    np.testing.assert_allclose(gw, _to_dhwio(tgw), **TOL)


def test_conv3d_same_padding_with_an_even_kernel_pads_the_end(np_rng):
    x = np_rng.normal(size=(1, 5, 4, 6, 2)).astype(np.float32)
    w = np_rng.normal(size=(2, 3, 4, 2, 3)).astype(np.float32)
    y = conv3d(x, w, stride=(1, 2, 1), padding="SAME")
    assert y.shape == (1, 5, 2, 6, 3)
    # Totals 1, 1, 3 split (0, 1), (0, 1), (1, 2): the extra goes at the end, as lax / TF.
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (1, 2), (0, 0)))
    ref = F.conv3d(ncdhw(xp), torch_kernel3d(w), stride=(1, 2, 1))
    np.testing.assert_allclose(y, ndhwc(ref), **TOL)


@pytest.mark.parametrize("y_dhw,a,b,k,stride,padding,output_padding,dilation,groups",
                         TRANSPOSE_CASES)
def test_conv_transpose3d_matches_torch_and_is_the_adjoint_of_conv3d(
        np_rng, y_dhw, a, b, k, stride, padding, output_padding, dilation, groups):
    y = np_rng.normal(size=(2, *y_dhw, b)).astype(np.float32)
    w = np_rng.normal(size=(*k, a // groups, b)).astype(np.float32)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    x_hat, vjp = jax.vjp(lambda u, v: conv_transpose3d(u, v, output_padding=output_padding, **kw),
                         jnp.asarray(y), jnp.asarray(w))
    ct = np_rng.normal(size=x_hat.shape).astype(np.float32)
    gy, gw = vjp(jnp.asarray(ct))
    tx, (tgy, tgw) = torch_vjp3d(
        lambda u, v: F.conv_transpose3d(u, v, output_padding=output_padding, **kw),
        [ncdhw(y), torch_kernel3d(w)], ct)
    np.testing.assert_allclose(x_hat, tx, **TOL)
    np.testing.assert_allclose(gy, grad_ndhwc(tgy), **TOL)
    np.testing.assert_allclose(gw, _to_dhwio(tgw), **TOL)

    # The adjoint: <conv3d(x), y> = <x, conv_transpose3d(y)> for x of the transposed output's
    # size. At stride 1 an output_padding (< dilation) makes conv3d(x) longer than y: the
    # transposed conv is the adjoint of conv3d cropped to y's size (its extra outputs meet no y).
    x = np_rng.normal(size=x_hat.shape).astype(np.float32)
    conv_x = np.asarray(conv3d(x, w, **kw), np.float64)
    assert all(c >= n for c, n in zip(conv_x.shape, y.shape))
    conv_x = conv_x[:, :y.shape[1], :y.shape[2], :y.shape[3]]
    lhs = np.sum(conv_x * y)
    rhs = np.sum(x.astype(np.float64) * np.asarray(x_hat, np.float64))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-4 * np.sqrt(y.size))


def test_jit_vmap_bfloat16(np_rng):
    x = np_rng.normal(size=(3, 1, 4, 3, 5, 2)).astype(np.float32)
    w = np_rng.normal(size=(2, 2, 2, 2, 3)).astype(np.float32)

    def chain(v):  # down by a strided conv, back up by its adjoint
        return conv_transpose3d(conv3d(v, w, stride=2, padding=1), w, stride=2, padding=1,
                                output_padding=(0, 1, 1))

    f = jax.jit(jax.vmap(chain))
    ref = np.stack([chain(v) for v in x])
    assert ref.shape == x.shape
    np.testing.assert_allclose(f(x), ref, rtol=1e-5, atol=1e-5)
    yb = f(jnp.asarray(x, jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), ref, rtol=0.1, atol=0.3)


@st.composite
def transpose_configs(draw):
    """A valid (y_dhw, kernel, stride, padding, output_padding, dilation) with a non-empty output."""
    k, s, d = (tuple(draw(st.integers(1, hi)) for _ in range(3)) for hi in (3, 3, 2))
    y_dhw = tuple(draw(st.integers(1, 3)) for _ in range(3))
    p = tuple(draw(st.integers(0, 2)) for _ in range(3))
    op = tuple(draw(st.integers(0, max(si, di) - 1)) for si, di in zip(s, d))
    out = [(n - 1) * si - 2 * pi + di * (ki - 1) + oi + 1
           for n, si, pi, di, ki, oi in zip(y_dhw, s, p, d, k, op)]
    assume(min(out) >= 1)
    return y_dhw, k, s, p, op, d


# Each example compiles its own configuration: a fifth of the profile's example budget.
@settings(max_examples=max(1, settings.default.max_examples // 5))
@given(transpose_configs(), st.integers(0, 2**31 - 1))
def test_conv_transpose3d_any_valid_arguments_equal_torch(config, seed):
    y_dhw, k, s, p, op, d = config
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(1, *y_dhw, 2)).astype(np.float32)
    w = rng.normal(size=(*k, 1, 2)).astype(np.float32)
    got = conv_transpose3d(y, w, stride=s, padding=p, output_padding=op, dilation=d)
    ref = F.conv_transpose3d(ncdhw(y), torch_kernel3d(w), stride=s,
                             padding=p, output_padding=op, dilation=d)
    np.testing.assert_allclose(got, ndhwc(ref), **TOL)


BAD_INTS = st.one_of(st.integers(-3, -1), st.just(True), st.just(1.5), st.just("2"),
                     st.lists(st.integers(1, 2), min_size=1, max_size=4).filter(lambda v: len(v) != 3))


@given(st.sampled_from(["stride", "padding", "output_padding", "dilation"]), BAD_INTS)
def test_conv_transpose3d_bad_arguments_raise_naming_them(name, bad):
    y, w = np.zeros((1, 2, 2, 2, 3), np.float32), np.zeros((2, 2, 2, 1, 3), np.float32)
    with pytest.raises(ValueError, match=name):
        conv_transpose3d(y, w, **{name: bad})


@given(st.sampled_from(["stride", "padding", "dilation"]), BAD_INTS)
def test_conv3d_bad_arguments_raise_naming_them(name, bad):
    x, w = np.zeros((1, 4, 4, 4, 2), np.float32), np.zeros((2, 2, 2, 2, 3), np.float32)
    with pytest.raises(ValueError, match=name):
        conv3d(x, w, **{name: bad})


@pytest.mark.parametrize("fn,x_shape,w_shape,kwargs,match", [
    (conv3d, (1, 4, 4, 4, 2), (2, 2, 2, 2, 3), dict(groups=0), "groups"),
    (conv3d, (1, 4, 4, 4, 2), (2, 2, 2, 2, 3), dict(groups=2), "divisible"),
    (conv3d, (1, 4, 4, 4, 3), (2, 2, 2, 2, 3), {}, "channels"),
    (conv3d, (4, 4, 4, 2), (2, 2, 2, 2, 3), {}, "rank 5"),
    (conv3d, (1, 4, 4, 4, 2), (2, 2, 2, 3), {}, "rank 5"),
    (conv3d, (1, 4, 1, 4, 2), (2, 2, 2, 2, 3), {}, "empty"),
    (conv3d, (1, 4, 4, 4, 2), (2, 2, 2, 2, 3), dict(padding="FULL"), "padding"),
    (atrous_conv3d, (1, 4, 4, 4, 2), (3, 3, 3, 2, 3), dict(rate=(1, 0, 1)), "rate"),
    (conv_transpose3d, (1, 2, 2, 2, 3), (2, 2, 2, 1, 2), {}, "channels"),
    (conv_transpose3d, (1, 2, 2, 2, 3), (2, 2, 2, 1, 3), dict(groups=2), "divisible"),
    (conv_transpose3d, (1, 2, 2, 2, 3), (2, 2, 2, 1, 3), dict(stride=2, output_padding=2),
     "output_padding"),
    (conv_transpose3d, (1, 1, 2, 2, 3), (1, 2, 2, 1, 3), dict(padding=1), "empty"),
])
def test_bad_shapes_raise(fn, x_shape, w_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32), **kwargs)
