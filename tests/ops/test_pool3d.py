"""segjax.ops.pool3d vs torch max_pool3d(return_indices=True) / max_unpool3d: values, indices,
autograd gradients, ties / NaN / inf hunted with Hypothesis, jit/vmap, bad arguments."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segjax.ops import max_pool3d_with_argmax, max_unpool3d
from tests.ops.helpers import grad_ndhwc, ncdhw, ndhwc, torch_vjp3d

# (window, stride, padding): 3D U-Net's 2x2x2/2, per-axis with padding, overlapping 3/2/1.
POOLS = [(2, 2, 0), ((2, 3, 2), (2, 1, 3), (1, 1, 0)), (3, 2, 1)]
SHAPE = (2, 5, 4, 7, 3)


def _torch_pool(x, window, stride, padding):
    t = ncdhw(x)
    pooled, idx = F.max_pool3d(t, window, stride, padding, return_indices=True)
    return t, pooled, idx


@pytest.mark.parametrize("window,stride,padding", POOLS)
def test_max_pool3d_with_argmax_matches_torch(np_rng, window, stride, padding):
    x = np_rng.normal(size=SHAPE).astype(np.float32)
    pooled, idx = max_pool3d_with_argmax(x, window, stride, padding)
    _, vjp = jax.vjp(lambda v: max_pool3d_with_argmax(v, window, stride, padding)[0], jnp.asarray(x))
    tx, tp, ti = _torch_pool(x, window, stride, padding)
    np.testing.assert_array_equal(pooled, ndhwc(tp))
    np.testing.assert_array_equal(idx, ndhwc(ti))
    assert idx.dtype == jnp.int32
    ct = np_rng.normal(size=pooled.shape)
    tp.backward(torch.tensor(ct).permute(0, 4, 1, 2, 3))
    np.testing.assert_allclose(vjp(jnp.asarray(ct, jnp.float32))[0], grad_ndhwc(tx.grad.numpy()),
                               rtol=1e-6, atol=1e-6)


# Values that make ties, NaNs, infs and windows of -inf only (where torch's index is the window's
# first input cell, never a padding cell).
VALUES = st.sampled_from([-np.inf, -np.inf, 0.0, 1.0, 1.0, np.inf, np.nan])
PROPERTY_SHAPE = (1, 4, 5, 3, 2)


@functools.cache
def _pool_vjp(pool):
    """The jitted input gradient of the pooled values for one pool configuration."""
    return jax.jit(lambda x, ct: jax.vjp(lambda v: max_pool3d_with_argmax(v, *pool)[0], x)[1](ct)[0])


@given(hnp.arrays(np.float32, PROPERTY_SHAPE, elements=VALUES), st.sampled_from(POOLS),
       hnp.arrays(np.float32, (1, 6, 6, 6, 2), elements=st.floats(-2, 2, width=32)))
def test_any_input_pools_like_torch_and_its_gradient_goes_to_the_indices(x, pool, ct_full):
    pooled, idx = max_pool3d_with_argmax(x, *pool)
    _, tp, ti = _torch_pool(x, *pool)
    np.testing.assert_array_equal(pooled, ndhwc(tp))  # NaNs compare equal here
    np.testing.assert_array_equal(idx, ndhwc(ti))
    # The gradient reaches exactly the inputs the indices name (summed where windows overlap):
    # each window's winner is the tap the pooled value came from, not a tap equal to it.
    ct = ct_full[:, :pooled.shape[1], :pooled.shape[2], :pooled.shape[3]]
    want = np.zeros((1, 4 * 5 * 3, 2), np.float32)
    idx = np.asarray(idx).reshape(1, -1, 2)
    for c in range(2):
        np.add.at(want[0, :, c], idx[0, :, c], ct[0, ..., c].ravel())
    np.testing.assert_allclose(_pool_vjp(pool)(x, ct), want.reshape(x.shape), rtol=1e-6, atol=1e-6)


def test_worked_example_and_unpool_puts_each_maximum_back():
    x = np.arange(16, dtype=np.float32)[::-1].reshape(1, 2, 2, 4, 1).copy()
    x[0, 1, 1, 3, 0] = 20.0  # the second window's maximum moves to its last cell
    pooled, idx = max_pool3d_with_argmax(x)
    np.testing.assert_array_equal(pooled[0, 0, 0, :, 0], [15.0, 20.0])
    # Flat d * H * W + h * W + w: (0, 0, 0) = 0 and (1, 1, 3) = 8 + 4 + 3 = 15.
    np.testing.assert_array_equal(idx[0, 0, 0, :, 0], [0, 15])
    restored = np.zeros_like(x)
    restored[0, 0, 0, 0, 0], restored[0, 1, 1, 3, 0] = 15.0, 20.0
    np.testing.assert_array_equal(max_unpool3d(pooled, idx, (2, 2, 4)), restored)


@pytest.mark.parametrize("window,stride,padding,dhw", [(2, 2, 0, (5, 4, 7)),
                                                        ((2, 3, 2), (2, 3, 2), (1, 1, 0), (4, 6, 5))])
def test_max_unpool3d_matches_torch(np_rng, window, stride, padding, dhw):
    x = np_rng.normal(size=(2, *dhw, 3)).astype(np.float32)
    pooled, idx = max_pool3d_with_argmax(x, window, stride, padding)
    y, vjp = jax.vjp(lambda v: max_unpool3d(v, idx, dhw), pooled)
    ct = np_rng.normal(size=y.shape)
    ti = torch.tensor(np.asarray(idx), dtype=torch.int64).permute(0, 4, 1, 2, 3).contiguous()
    ty, (tg,) = torch_vjp3d(
        lambda t: F.max_unpool3d(t, ti, window, stride, padding, output_size=dhw),
        [ncdhw(np.asarray(pooled))], ct)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_allclose(vjp(jnp.asarray(ct, jnp.float32))[0], grad_ndhwc(tg), rtol=1e-6)


def test_jit_vmap_bfloat16(np_rng):
    x = np_rng.normal(size=(3, 2, 5, 4, 6, 2)).astype(np.float32)

    def chain(v):
        pooled, idx = max_pool3d_with_argmax(v, (2, 3, 2), (2, 1, 3), (1, 1, 0))
        return max_unpool3d(pooled, idx, (5, 4, 6))

    f = jax.jit(jax.vmap(chain))
    np.testing.assert_array_equal(f(x), np.stack([chain(v) for v in x]))
    # Rounding to bf16 can create new ties, so the reference runs on the rounded input.
    xb = jnp.asarray(x, jnp.bfloat16)
    yb = f(xb)
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(yb, np.float32), f(np.asarray(xb, np.float32)))


BAD_INTS = st.one_of(st.integers(-3, -1), st.just(True), st.just(2.0), st.just("2"),
                     st.lists(st.integers(1, 2), min_size=1, max_size=4).filter(lambda v: len(v) != 3))


@given(st.sampled_from(["window", "stride", "padding"]), BAD_INTS)
def test_bad_pool_arguments_raise_naming_them(name, bad):
    with pytest.raises(ValueError, match=name):
        max_pool3d_with_argmax(np.zeros((1, 4, 4, 4, 2), np.float32), **{name: bad})


@given(BAD_INTS | st.just(0))
def test_bad_output_dhw_raises(bad):
    pooled, idx = max_pool3d_with_argmax(np.zeros((1, 4, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="output_dhw"):
        max_unpool3d(pooled, idx, bad)


def test_bad_input_raises():
    x = np.zeros((1, 4, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="rank 5"):
        max_pool3d_with_argmax(x[0])
    with pytest.raises(ValueError, match="floating"):
        max_pool3d_with_argmax(x.astype(np.int32))
    with pytest.raises(ValueError, match="half the window"):
        max_pool3d_with_argmax(x, window=2, padding=(0, 2, 0))
    with pytest.raises(ValueError, match="larger than"):
        max_pool3d_with_argmax(x, window=(2, 7, 2))
    pooled, idx = max_pool3d_with_argmax(x)
    with pytest.raises(ValueError, match="rank 5"):
        max_unpool3d(pooled[0], idx[0], (4, 4, 4))
    with pytest.raises(ValueError, match="indices shape"):
        max_unpool3d(pooled, idx[:, :1], (4, 4, 4))
    with pytest.raises(ValueError, match="integer"):
        max_unpool3d(pooled, pooled, (4, 4, 4))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 8\)"):
        max_unpool3d(pooled, idx + 50, (2, 2, 2))
