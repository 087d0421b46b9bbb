"""segjax.ops.max_pool vs torch max_pool2d (forward and gradient, ties included) and flax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax.ops import max_pool
from tests.ops.helpers import grad_nhwc, nchw, nhwc

# (window, stride, padding): ResNet's stem pool, VGG's 2x2/2 and its 3x3/1 pool5, non-square,
# stride 3 (phases with no tap), stride > window (inputs no window reads).
POOLS = [(3, 2, 1), (2, 2, 0), (3, 1, 1), ((2, 3), (1, 2), (1, 1)), (3, 3, 0), (2, 3, 0)]


@pytest.mark.parametrize("window,stride,padding", POOLS)
@pytest.mark.parametrize("hw", [(9, 8), (6, 7)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_forward_and_gradient_match_torch(np_rng, window, stride, padding, hw, ties):
    if ties:  # values from {0, 1, 2}: many windows with several maxima (as after a ReLU)
        x = np_rng.integers(0, 3, size=(2, *hw, 3)).astype(np.float32)
    else:
        x = np_rng.normal(size=(2, *hw, 3)).astype(np.float32)
    y, vjp = jax.vjp(lambda v: max_pool(v, window, stride, padding), jnp.asarray(x))
    tx = nchw(x)
    ty = F.max_pool2d(tx, window, stride, padding)
    np.testing.assert_array_equal(y, nhwc(ty))
    ct = np_rng.normal(size=y.shape)
    ty.backward(torch.tensor(ct).permute(0, 3, 1, 2))
    np.testing.assert_allclose(vjp(jnp.asarray(ct, jnp.float32))[0], grad_nhwc(tx.grad.numpy()),
                               rtol=1e-6, atol=1e-6)


def test_gradient_equals_flax_autodiff_with_asymmetric_padding_jit_vmap_and_bf16(np_rng):
    x = jnp.asarray(np_rng.integers(0, 4, size=(3, 2, 7, 5, 4)), jnp.float32)
    ct = jnp.asarray(np_rng.normal(size=(3, 2, 4, 3, 4)), jnp.float32)
    pads = ((0, 1), (0, 1))  # VGG's ceil-mode padding

    def ours(v):
        return jax.vjp(lambda u: max_pool(u, 2, 2, pads), v)

    def flax_pool(v):
        return jax.vjp(lambda u: nn.max_pool(u, (2, 2), strides=(2, 2), padding=pads), v)

    got = jax.jit(jax.vmap(lambda v, c: ours(v)[1](c)[0]))(x, ct)
    want = jax.vmap(lambda v, c: flax_pool(v)[1](c)[0])(x, ct)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    y16, vjp16 = ours(x[0].astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y16.astype(jnp.float32), flax_pool(x[0])[0])
    np.testing.assert_allclose(vjp16(ct[0].astype(jnp.bfloat16))[0].astype(jnp.float32),
                               flax_pool(x[0])[1](ct[0].astype(jnp.bfloat16).astype(jnp.float32))[0],
                               rtol=1e-2, atol=1e-2)


def test_max_pool_worked_example_routes_ties_to_the_first_maximum():
    x = jnp.array([[1., 3., 3., 0.],
                   [4., 2., 1., 5.],
                   [0., 0., 2., 2.],
                   [0., 0., 2., 2.]])[None, :, :, None]
    y, vjp = jax.vjp(lambda v: max_pool(v, 2, 2), x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[4., 5.], [0., 2.]])
    g = vjp(jnp.array([[10., 20.], [30., 40.]])[None, :, :, None])[0][0, :, :, 0]
    np.testing.assert_array_equal(g, [[0., 0., 0., 0.],
                                      [10., 0., 0., 20.],
                                      [30., 0., 40., 0.],
                                      [0., 0., 0., 0.]])


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=0), "window"),
    (dict(window=3, padding=3), "smaller than the window"),
    (dict(window=9), "does not fit"),
    (dict(window=2, padding=((0, -1), (0, 0))), "non-negative"),
])
def test_max_pool_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        max_pool(jnp.zeros((1, 4, 4, 1)), **kwargs)
    with pytest.raises(ValueError, match="N, H, W, C"):
        max_pool(jnp.zeros((4, 4, 1)), 2)
