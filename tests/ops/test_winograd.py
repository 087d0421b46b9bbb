"""segjax.ops.winograd: the F(m, 3) transforms against direct 1-D correlation, the 2-D (dilated)
convolution and its gradients against torch, and the routing in `conv_general_dilated`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch.nn.functional as F
from jax import lax

from segjax.ops import conv as conv_lib
from segjax.ops.winograd import TILES, transforms, winograd_conv3x3
from tests.ops.helpers import grad_nhwc, jaxpr_eqns, nchw, torch_kernel, torch_vjp


@pytest.mark.parametrize("m", TILES)
def test_1d_transforms_compute_correlation(np_rng, m):
    """Lavin & Gray's identity y = A^T [(G g) * (B^T d)] for y[i] = sum_k g[k] d[i + k], i < m."""
    bt, g_mat, at = transforms(m)
    for _ in range(5):
        d, g = np_rng.normal(size=m + 2), np_rng.normal(size=3)
        direct = np.array([np.dot(g, d[i:i + 3]) for i in range(m)])
        np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), direct, rtol=1e-12, atol=1e-12)


# (in_hw, channels in, out, dilation, padding ((lo, hi), (lo, hi)))
CASES = [
    ((8, 8), 5, 6, (1, 1), ((1, 1), (1, 1))),      # torch's padding 1
    ((13, 10), 4, 3, (2, 3), ((2, 2), (3, 3))),    # dilated, outputs not a multiple of m * d
    ((9, 7), 3, 5, (1, 2), ((0, 2), (1, 4))),      # asymmetric, up to 2d
    ((7, 11), 2, 2, (1, 1), ((0, 0), (0, 0))),     # VALID
    ((20, 20), 6, 4, (4, 4), ((4, 4), (4, 4))),    # ResNet layer4's rate-4 conv
]


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("in_hw,c_in,c_out,dilation,pads", CASES)
def test_matches_torch_forward_and_gradients(np_rng, m, in_hw, c_in, c_out, dilation, pads):
    x = np_rng.normal(size=(2, *in_hw, c_in)).astype(np.float32)
    w = np_rng.normal(size=(3, 3, c_in, c_out)).astype(np.float32)
    fn = jax.jit(lambda a, b: winograd_conv3x3(a, b, dilation, pads, m))
    y, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(w))
    ct = np_rng.normal(size=y.shape).astype(np.float32)
    gx, gw = vjp(jnp.asarray(ct))

    def reference(a, b):  # torch pads symmetrically: pad explicitly for the asymmetric cases
        (t, bo), (le, r) = pads
        return F.conv2d(F.pad(a, (le, r, t, bo)), b, dilation=dilation)

    ty, (tgx, tgw) = torch_vjp(reference, [nchw(x), torch_kernel(w)], ct)
    # float64 reference; F(4, 3)'s transforms amplify float32 rounding by ~10x over F(2, 3).
    tol = dict(rtol=1e-5, atol=1e-4) if m == 2 else dict(rtol=1e-4, atol=3e-4)
    np.testing.assert_allclose(y, ty, **tol)
    np.testing.assert_allclose(gx, grad_nhwc(tgx), **tol)
    np.testing.assert_allclose(gw, np.transpose(tgw, (2, 3, 1, 0)), **tol)


@pytest.mark.parametrize("m,bound", [(2, 1e-6), (4, 1e-5)])
def test_float32_error_relative_to_output_scale(np_rng, m, bound):
    """The documented accuracy: a 64-channel conv's worst error stays below `bound` x max |y|."""
    x = np_rng.normal(size=(2, 16, 16, 64)).astype(np.float32)
    w = (np_rng.normal(size=(3, 3, 64, 64)) / 24).astype(np.float32)
    y = np.asarray(winograd_conv3x3(jnp.asarray(x), jnp.asarray(w), (2, 2), ((2, 2), (2, 2)), m))
    ref = F.conv2d(nchw(x), torch_kernel(w), padding=2, dilation=2).detach().permute(0, 2, 3, 1).numpy()
    assert np.abs(y - ref).max() <= bound * np.abs(ref).max()


def test_bad_arguments_raise():
    x, w = jnp.zeros((1, 6, 6, 2)), jnp.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match="padding"):
        winograd_conv3x3(x, w, (1, 1), ((3, 1), (1, 1)), 2)
    with pytest.raises(ValueError, match=r"w \[3, 3, C, O\]"):
        winograd_conv3x3(x, jnp.zeros((5, 5, 2, 2)), (1, 1), ((1, 1), (1, 1)), 2)
    with pytest.raises(ValueError, match="tile m"):
        winograd_conv3x3(x, w, (1, 1), ((1, 1), (1, 1)), 3)


def _lax_convs(fn, *args):
    return [e for e in jaxpr_eqns(fn, *args) if e.primitive.name == "conv_general_dilated"]


def test_conv_general_dilated_routes_dense_3x3_to_winograd(np_rng, monkeypatch):
    """float32, stride 1, >= WINOGRAD_MIN_CHANNELS and WINOGRAD_MIN_FLOPS: Winograd (no lax conv),
    equal to lax's conv; SEGJAX_WINOGRAD=0, bfloat16, narrow channels, small and strided convs
    stay on lax."""
    c = conv_lib.WINOGRAD_MIN_CHANNELS
    x = jnp.asarray(np_rng.normal(size=(2, 9, 10, c)).astype(np.float32))
    w = jnp.asarray((np_rng.normal(size=(3, 3, c, c)) / 12).astype(np.float32))
    dims = ("NHWC", "HWIO", "NHWC")

    def ours(a, b, stride=(1, 1), dilation=(2, 2)):
        return conv_lib.conv_general_dilated(a, b, stride, ((2, 2), (2, 2)), rhs_dilation=dilation,
                                             dimension_numbers=dims)

    def plain(a, b):
        return lax.conv_general_dilated(a, b, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                        dimension_numbers=dims)

    assert _lax_convs(ours, x, w)  # 2 * 9 * 2 * 9 * 10 * 16 * 16 flops: too small to pay
    monkeypatch.setattr(conv_lib, "WINOGRAD_MIN_FLOPS", 0)
    assert not _lax_convs(ours, x, w)
    np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-4, atol=1e-4)
    grads = jax.grad(lambda a, b: jnp.sum(ours(a, b) ** 2), (0, 1))(x, w)
    ref = jax.grad(lambda a, b: jnp.sum(plain(a, b) ** 2), (0, 1))(x, w)
    for a, b in zip(grads, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    assert _lax_convs(ours, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert _lax_convs(ours, x[..., :c - 1], w[:, :, :c - 1])
    assert _lax_convs(lambda a, b: ours(a, b, stride=(2, 2), dilation=(1, 1)), x, w)
    monkeypatch.setenv("SEGJAX_WINOGRAD", "0")
    assert _lax_convs(ours, x, w)
    monkeypatch.setenv("SEGJAX_WINOGRAD", "2")
    assert not _lax_convs(ours, x, w)
    monkeypatch.setenv("SEGJAX_WINOGRAD", "3")
    with pytest.raises(ValueError, match="SEGJAX_WINOGRAD"):
        ours(x, w)
