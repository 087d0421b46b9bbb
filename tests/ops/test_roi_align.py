"""segjax.ops.roi_align vs torchvision.ops.roi_align: values, gradients, worked example; its gathered
pyramid form (`roi_align_table`) and adaptive sampling matrices (`roi_align_weights`) against it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from segjax.ops import roi_align
from segjax.ops.roi_align import pyramid_geometry, pyramid_table, roi_align_table, roi_align_weights
from tests.ops.helpers import grad_nhwc, nchw

H, W = 7, 9


def _boxes(np_rng, k, n, scale):
    """Random boxes in image coordinates, many partly outside the map, plus edge cases."""
    xs = np.sort(np_rng.uniform(-0.4 * W, 1.4 * W, size=(k, 2)), axis=1) / scale
    ys = np.sort(np_rng.uniform(-0.4 * H, 1.4 * H, size=(k, 2)), axis=1) / scale
    rand = np.stack([np_rng.integers(0, n, k), xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
    edge = np.array([
        [0, 2.0, 2.0, 2.3, 2.2],                  # smaller than a pixel
        [n - 1, -8.0, -8.0, -1.4, -1.2],          # fully outside (left/top)
        [0, W - 1.5, H - 2.0, W + 3.0, H + 4.0],  # across the bottom-right border
        [n - 1, 0.0, 0.0, W, H],                  # the whole map
        [0, 5.0, 4.0, 3.0, 1.0],                  # x2 < x1 and y2 < y1 (negative extent)
    ]) / scale
    edge[:, 0] *= scale
    return np.concatenate([rand, edge]).astype(np.float32)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio,spatial_scale,output_size", [
    (1, 1.0, (3, 4)), (2, 1.0, 2), (2, 0.5, (2, 3)), (3, 0.25, (4, 1)), (4, 1.0, (5, 3)),
])
def test_matches_torchvision_forward_and_gradient(np_rng, aligned, sampling_ratio, spatial_scale,
                                                  output_size):
    feats = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    boxes = _boxes(np_rng, 6, 2, spatial_scale)
    kw = dict(spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned)
    y, vjp = jax.vjp(lambda f: roi_align(f, boxes, output_size, **kw), jnp.asarray(feats))
    ct = np_rng.normal(size=y.shape).astype(np.float32)
    tf = nchw(feats)
    ty = torchvision.ops.roi_align(tf, torch.tensor(boxes, dtype=torch.float64), output_size, **kw)
    ty.backward(torch.tensor(ct, dtype=torch.float64).permute(0, 3, 1, 2))
    np.testing.assert_allclose(y, ty.detach().permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vjp(jnp.asarray(ct))[0], grad_nhwc(tf.grad.numpy()), rtol=1e-5,
                               atol=1e-5)
    assert np.abs(y).max() > 0


def test_worked_example_on_a_linear_ramp():
    # f(y, x) = x + 10 y; bilinear sampling reproduces it inside the map. Box (0.5, 0.5)-(2.5, 2.5)
    # with aligned=True starts at 0 and is 2 wide: 2x2 bins of 1 pixel, sub-samples at
    # 0.25 and 0.75 (bin 0) and 1.25 and 1.75 (bin 1), i.e. bin means 0.5 and 1.5 per axis.
    ys, xs = np.mgrid[0:4, 0:4].astype(np.float32)
    feats = (xs + 10 * ys)[None, :, :, None]
    out = roi_align(feats, np.array([[0, 0.5, 0.5, 2.5, 2.5]], np.float32), 2)
    np.testing.assert_allclose(out[0, :, :, 0], [[5.5, 6.5], [15.5, 16.5]], rtol=1e-6)
    # A sample beyond the -1 border is 0; one between -1 and 0 is clamped to row/column 0.
    out = roi_align(feats, np.array([[0, -2.5, 0.5, -0.5, 1.5]], np.float32), 1, sampling_ratio=2)
    # x sub-samples at -2.5 (dropped: counts as 0) and -1.5 (dropped) -> 0.
    np.testing.assert_allclose(out[0, 0, 0, 0], 0.0)
    out = roi_align(feats, np.array([[0, -1.0, 0.5, 0.0, 1.5]], np.float32), 1, sampling_ratio=2)
    # x sub-samples at -1.25 (dropped, counts as 0) and -0.75 (clamped to column 0), y sub-samples
    # at 0.25 and 0.75: the mean of 0, f(0.25, 0) = 2.5, 0 and f(0.75, 0) = 7.5.
    np.testing.assert_allclose(out[0, 0, 0, 0], (0 + 2.5 + 0 + 7.5) / 4, rtol=1e-6)


def test_jit_vmap_bfloat16(np_rng):
    feats = np_rng.normal(size=(3, 2, H, W, 4)).astype(np.float32)
    boxes = _boxes(np_rng, 5, 2, 1.0)
    f = jax.jit(jax.vmap(lambda v: roi_align(v, boxes, (3, 2), sampling_ratio=2)))
    ref = np.stack([roi_align(v, boxes, (3, 2), sampling_ratio=2) for v in feats])
    np.testing.assert_allclose(f(feats), ref, rtol=1e-5, atol=1e-5)
    yb = f(jnp.asarray(feats, jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), ref, rtol=0.03, atol=0.03)
    # Boxes as a traced argument work too (no host-side checks under jit).
    g = jax.jit(lambda b: roi_align(feats[0], b, 2))(boxes)
    np.testing.assert_allclose(g, roi_align(feats[0], boxes, 2), rtol=1e-6, atol=1e-6)


def test_bad_input_raises():
    feats = np.zeros((2, 5, 5, 3), np.float32)
    box = np.array([[0, 0, 0, 2, 2]], np.float32)
    with pytest.raises(ValueError, match="rank 4"):
        roi_align(feats[0], box, 2)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        roi_align(feats, box[:, 1:], 2)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        roi_align(feats, box[0], 2)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(feats, box, 2, sampling_ratio=0)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(feats, box, 2, sampling_ratio=-1)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(feats, box, (2, 0))
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(feats, np.array([[2, 0, 0, 2, 2]], np.float32), 2)
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(feats, np.array([[0.5, 0, 0, 2, 2]], np.float32), 2)


@pytest.mark.parametrize("aligned", [True, False])
def test_table_form_equals_dense_roi_align_per_level(np_rng, aligned):
    """`roi_align_table`, each box on its level of a two-image, two-level pyramid, equals the dense
    `roi_align` of that level and image at that level's scale (one sampling rule, two forms)."""
    levels_hw, scales = [(H, W), (4, 5)], (1.0, 0.5)
    feats = [np_rng.normal(size=(2, h, w, 3)).astype(np.float32) for h, w in levels_hw]
    boxes = _boxes(np_rng, 8, 2, 1.0)
    level = np.arange(len(boxes)) % 2
    table = pyramid_table([jnp.asarray(f) for f in feats])
    out = roi_align_table(table, pyramid_geometry(feats), jnp.asarray(boxes[:, 1:]), jnp.asarray(boxes[:, 0]),
                          jnp.asarray(level), 3, scales=scales, sampling_ratio=2, aligned=aligned)
    for lv, scale in enumerate(scales):
        ref = roi_align(feats[lv], boxes[level == lv], 3, spatial_scale=scale, sampling_ratio=2, aligned=aligned)
        np.testing.assert_allclose(np.asarray(out)[level == lv], ref, rtol=1e-5, atol=1e-5)


def test_adaptive_weights_equal_torchvision_adaptive_sampling(np_rng):
    """`roi_align_weights(sampling_ratio=0)` (capped) is torchvision's adaptive `sampling_ratio=0`."""
    feats = np_rng.normal(size=(1, 20, 24, 1)).astype(np.float32)
    xy = np_rng.uniform(-3, 18, (10, 2))
    boxes = np.concatenate([xy, xy + np_rng.uniform(0.5, 12, (10, 2))], 1).astype(np.float32)
    cap = -(-24 // 3)
    wy = roi_align_weights(jnp.asarray(boxes[:, 1]), jnp.asarray(boxes[:, 3]), 3, 20, sampling_ratio=0, max_grid=cap)
    wx = roi_align_weights(jnp.asarray(boxes[:, 0]), jnp.asarray(boxes[:, 2]), 3, 24, sampling_ratio=0, max_grid=cap)
    ours = np.einsum("kph,hw,kqw->kpq", wy, feats[0, :, :, 0], wx)
    ref = torchvision.ops.roi_align(torch.tensor(feats).permute(0, 3, 1, 2),
                                    torch.tensor(np.concatenate([np.zeros((10, 1), np.float32), boxes], 1)),
                                    3, 1.0, 0, False)
    np.testing.assert_allclose(ours, ref[:, 0].numpy(), rtol=1e-5, atol=1e-5)
