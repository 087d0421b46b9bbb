"""segjax.ops.unpool vs torch max_pool2d / max_unpool2d / interpolate and lecture examples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax.ops import bed_of_nails_unpool, max_pool_with_argmax, max_unpool, nearest_unpool
from tests.ops.helpers import grad_nhwc, nchw, nhwc, torch_vjp

# (window, stride, padding): square, overlapping, padded, pairs, stride 3.
POOLS = [(2, 2, 0), (3, 2, 1), (3, 3, 0), (2, 1, 0), ((2, 3), (1, 2), (1, 1)), ((3, 2), (3, 2), 0)]
SHAPES = [(7, 9), (6, 5)]


def _torch_pool(t, window, stride, padding):
    return F.max_pool2d(t, window, stride, padding, return_indices=True)


@pytest.mark.parametrize("window,stride,padding", POOLS)
@pytest.mark.parametrize("hw", SHAPES)
def test_max_pool_with_argmax_matches_torch(np_rng, window, stride, padding, hw):
    x = np_rng.normal(size=(2, *hw, 3)).astype(np.float32)
    pooled, vjp = jax.vjp(lambda v: max_pool_with_argmax(v, window, stride, padding)[0], jnp.asarray(x))
    idx = max_pool_with_argmax(x, window, stride, padding)[1]
    tx = nchw(x)
    tp, ti = _torch_pool(tx, window, stride, padding)
    np.testing.assert_array_equal(pooled, nhwc(tp))
    np.testing.assert_array_equal(idx, nhwc(ti))
    assert idx.dtype == jnp.int32
    ct = np_rng.normal(size=pooled.shape)
    tp.backward(torch.tensor(ct).permute(0, 3, 1, 2))
    np.testing.assert_allclose(vjp(jnp.asarray(ct, jnp.float32))[0], grad_nhwc(tx.grad.numpy()),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window,stride,padding", [(2, 2, 0), (3, 2, 1), (2, 1, 0)])
def test_ties_go_to_first_maximum_like_torch(np_rng, window, stride, padding):
    # Values from {0, 1, 2} make many ties inside each window.
    x = np_rng.integers(0, 3, size=(1, 7, 6, 2)).astype(np.float32)
    _, idx = max_pool_with_argmax(x, window, stride, padding)
    _, ti = _torch_pool(torch.tensor(x).permute(0, 3, 1, 2), window, stride, padding)
    np.testing.assert_array_equal(idx, nhwc(ti))


def test_max_pool_worked_example():
    x = np.array([[1, 3, 2, 0],
                  [4, 2, 1, 5],
                  [0, 1, 7, 6],
                  [2, 8, 3, 3]], np.float32)[None, :, :, None]
    pooled, idx = max_pool_with_argmax(x)
    np.testing.assert_array_equal(pooled[0, :, :, 0], [[4, 5], [8, 7]])
    np.testing.assert_array_equal(idx[0, :, :, 0], [[4, 7], [13, 10]])
    restored = max_unpool(pooled, idx, (4, 4))
    np.testing.assert_array_equal(restored[0, :, :, 0], [[0, 0, 0, 0],
                                                          [4, 0, 0, 5],
                                                          [0, 0, 7, 0],
                                                          [0, 8, 0, 0]])


def test_nan_wins_like_torch():
    x = np.array([[1, np.nan, 0], [3, 2, 5], [4, 4, np.nan]], np.float32)[None, :, :, None]
    pooled, idx = max_pool_with_argmax(x, 2, 1)
    tp, ti = _torch_pool(torch.tensor(x).permute(0, 3, 1, 2), 2, 1, 0)
    np.testing.assert_array_equal(pooled, nhwc(tp))  # NaNs compare equal here
    np.testing.assert_array_equal(idx, nhwc(ti))
    np.testing.assert_array_equal(idx[0, :, :, 0], [[1, 1], [6, 8]])


@pytest.mark.parametrize("window,stride", [(2, 2), (3, 3), ((2, 3), (2, 3))])
def test_unpool_of_pool_puts_each_max_back(np_rng, window, stride):
    x = np_rng.normal(size=(2, 7, 9, 3)).astype(np.float32)
    pooled, idx = max_pool_with_argmax(x, window, stride)
    out = np.asarray(max_unpool(pooled, idx, (7, 9)))
    flat_x, flat_out = x.reshape(2, -1, 3), out.reshape(2, -1, 3)
    is_max = np.zeros_like(flat_out, bool)
    for n in range(2):
        for c in range(3):
            is_max[n, np.asarray(idx)[n, :, :, c].ravel(), c] = True
    assert is_max.sum() == pooled.size  # non-overlapping windows: all argmaxes distinct
    np.testing.assert_array_equal(flat_out[is_max], flat_x[is_max])
    assert not flat_out[~is_max].any()


@pytest.mark.parametrize("window,stride,padding,hw", [(2, 2, 0, (7, 9)), (3, 3, 1, (8, 6)),
                                                      ((2, 3), (2, 3), 0, (5, 9))])
def test_max_unpool_matches_torch(np_rng, window, stride, padding, hw):
    x = np_rng.normal(size=(2, *hw, 3)).astype(np.float32)
    pooled, idx = max_pool_with_argmax(x, window, stride, padding)
    y, vjp = jax.vjp(lambda v: max_unpool(v, idx, hw), pooled)
    ct = np_rng.normal(size=y.shape)
    tv = nchw(np.asarray(pooled))
    ti = torch.tensor(np.asarray(idx), dtype=torch.int64).permute(0, 3, 1, 2)
    ty, (tg,) = torch_vjp(lambda t: F.max_unpool2d(t, ti, window, stride, padding, output_size=hw),
                          [tv], ct)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_allclose(vjp(jnp.asarray(ct, jnp.float32))[0], grad_nhwc(tg), rtol=1e-6)


def test_lecture_nearest_and_bed_of_nails():
    x = np.array([[1, 2], [3, 4]], np.float32)[None, :, :, None]
    np.testing.assert_array_equal(nearest_unpool(x)[0, :, :, 0], [[1, 1, 2, 2],
                                                                 [1, 1, 2, 2],
                                                                 [3, 3, 4, 4],
                                                                 [3, 3, 4, 4]])
    np.testing.assert_array_equal(bed_of_nails_unpool(x)[0, :, :, 0], [[1, 0, 2, 0],
                                                                      [0, 0, 0, 0],
                                                                      [3, 0, 4, 0],
                                                                      [0, 0, 0, 0]])
    np.testing.assert_array_equal(bed_of_nails_unpool(x, (1, 3))[0, :, :, 0], [[1, 0, 0, 2, 0, 0],
                                                                              [3, 0, 0, 4, 0, 0]])


@pytest.mark.parametrize("factor", [2, 3, (2, 3), (1, 2)])
def test_nearest_and_bed_of_nails_vs_references(np_rng, factor):
    fh, fw = (factor, factor) if isinstance(factor, int) else factor
    x = np_rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    ct = np_rng.normal(size=(2, 3 * fh, 5 * fw, 4)).astype(np.float32)

    y, vjp = jax.vjp(lambda v: nearest_unpool(v, factor), jnp.asarray(x))
    ty, (tg,) = torch_vjp(lambda t: F.interpolate(t, scale_factor=(fh, fw), mode="nearest"),
                          [nchw(x)], ct)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_allclose(vjp(ct)[0], grad_nhwc(tg), rtol=1e-5, atol=1e-5)

    # Bed of nails == max_unpool with every index at its block's top-left corner.
    rows = np.arange(3)[:, None] * fh
    cols = np.arange(5)[None, :] * fw
    top_left = np.broadcast_to((rows * 5 * fw + cols)[None, :, :, None], x.shape)
    y, vjp = jax.vjp(lambda v: bed_of_nails_unpool(v, factor), jnp.asarray(x))
    ti = torch.tensor(np.ascontiguousarray(top_left), dtype=torch.int64).permute(0, 3, 1, 2)
    ty, (tg,) = torch_vjp(lambda t: F.max_unpool2d(t, ti, (fh, fw), output_size=(3 * fh, 5 * fw)),
                          [nchw(x)], ct)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_allclose(vjp(ct)[0], ct[:, ::fh, ::fw], rtol=0, atol=0)


def test_jit_vmap_bfloat16(np_rng):
    x = np_rng.normal(size=(3, 2, 7, 6, 4)).astype(np.float32)

    def chain(v):
        pooled, idx = max_pool_with_argmax(v, 3, 2, 1)
        return (max_unpool(pooled, idx, (7, 6)) + nearest_unpool(v[:, :4, :3], (2, 2))[:, :7, :6]
                + bed_of_nails_unpool(v[:, :4, :3], 2)[:, :7, :6])

    f = jax.jit(jax.vmap(chain))
    single = jax.jit(chain)  # the unbatched reference, one compile
    ref = np.stack([single(v) for v in x])
    np.testing.assert_array_equal(f(x), ref)
    # Rounding to bf16 can create new ties, so the f32 reference runs on the rounded input.
    xb = jnp.asarray(x, jnp.bfloat16)
    yb = f(xb)
    assert yb.dtype == jnp.bfloat16
    ref_b = f(np.asarray(xb, np.float32))
    np.testing.assert_allclose(np.asarray(yb, np.float32), ref_b, rtol=0.02, atol=0.02)
    g = jax.jit(jax.grad(lambda v: f(v).astype(jnp.float32).sum()))(jnp.asarray(x, jnp.bfloat16))
    assert g.dtype == jnp.bfloat16 and np.isfinite(np.asarray(g, np.float32)).all()


def test_bad_input_raises():
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="rank 4"):
        max_pool_with_argmax(x[0])
    with pytest.raises(ValueError, match="window"):
        max_pool_with_argmax(x, window=0)
    with pytest.raises(ValueError, match="stride"):
        max_pool_with_argmax(x, stride=(1, 0))
    with pytest.raises(ValueError, match="padding"):
        max_pool_with_argmax(x, padding=-1)
    with pytest.raises(ValueError, match="half the window"):
        max_pool_with_argmax(x, window=2, padding=2)
    with pytest.raises(ValueError, match="larger than"):
        max_pool_with_argmax(x, window=5)
    pooled, idx = max_pool_with_argmax(x)
    with pytest.raises(ValueError, match="indices shape"):
        max_unpool(pooled, idx[:, :1], (4, 4))
    with pytest.raises(ValueError, match="output_hw"):
        max_unpool(pooled, idx, (0, 4))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        max_unpool(pooled, idx + 3, (2, 2))
    with pytest.raises(ValueError, match="integer"):
        max_unpool(pooled, pooled, (4, 4))
    for op in (nearest_unpool, bed_of_nails_unpool):
        with pytest.raises(ValueError, match="factor"):
            op(x, 0)
        with pytest.raises(ValueError, match="rank 4"):
            op(x[0], 2)
