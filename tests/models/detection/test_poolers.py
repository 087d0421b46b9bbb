"""Multi-scale ROI Align and the FPN level mapper vs torchvision's MultiScaleRoIAlign / LevelMapper."""

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from segjax.models.detection.poolers import (map_levels, multiscale_roi_align, multiscale_roi_align_table,
                                            pyramid_geometry, pyramid_table)

S = 448  # image size; levels 112, 56, 28, 14: boxes land on all four
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def _boxes(np_rng, k):
    xy = np_rng.uniform(-4, S, (k, 2))
    wh = np.exp(np_rng.uniform(np.log(0.3), np.log(2.5 * S), (k, 2)))
    b = np.clip(np.concatenate([xy, xy + wh], 1), 0, S)
    # Level boundaries: sqrt(area) exactly 112 (level 3/4 edge) and 224 (4/5), plus a point box.
    edge = [[0, 0, 112, 112], [0, 0, 56, 224], [10, 10, 234, 234], [5, 5, 5, 5], [0, 0, S, S]]
    return np.concatenate([b, edge]).astype(np.float32)


def test_level_mapper_matches_torchvision(np_rng):
    boxes = _boxes(np_rng, 200)
    ref = LevelMapper(2, 5)([torch.tensor(boxes)]).numpy()
    np.testing.assert_array_equal(map_levels(boxes), ref)
    assert set(np.unique(ref)) == {0, 1, 2, 3}


def test_multiscale_roi_align_matches_torchvision(np_rng):
    c = 5
    feats = [np_rng.normal(size=(int(S * s), int(S * s), c)).astype(np.float32) for s in SCALES]
    boxes = _boxes(np_rng, 30)
    tfeats = [torch.tensor(f, dtype=torch.float64).permute(2, 0, 1)[None].requires_grad_(True) for f in feats]
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    ref = pool(OrderedDict((str(i), t) for i, t in enumerate(tfeats)),
               [torch.tensor(boxes, dtype=torch.float64)], [(S, S)])
    f = jax.jit(lambda fs, b: multiscale_roi_align(fs, b, 7, scales=SCALES))
    out, vjp = jax.vjp(lambda fs: f(fs, boxes), [jnp.asarray(x) for x in feats])
    np.testing.assert_allclose(out, ref.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=2e-5)
    # Gradient w.r.t. every level (scatter of the bilinear weights), against torch autograd.
    ct = np_rng.normal(size=out.shape).astype(np.float32)
    ref.backward(torch.tensor(ct, dtype=torch.float64).permute(0, 3, 1, 2))
    grads = vjp(jnp.asarray(ct))[0]
    for g, t in zip(grads, tfeats):
        np.testing.assert_allclose(g, t.grad[0].permute(1, 2, 0).numpy(), rtol=1e-4, atol=1e-4)
    assert all(float(jnp.abs(g).max()) > 0 for g in grads)
    # 14 x 14 (the mask head's size) on a batch via vmap.
    two = [jnp.stack([jnp.asarray(x), 2 * jnp.asarray(x)]) for x in feats]
    out14 = jax.jit(jax.vmap(lambda fs, b: multiscale_roi_align(fs, b, 14, scales=SCALES)))(
        two, np.stack([boxes] * 2))
    ref14 = pool.__class__(["0", "1", "2", "3"], 14, 2)(
        OrderedDict((str(i), t.detach().float()) for i, t in enumerate(tfeats)), [torch.tensor(boxes)], [(S, S)])
    # float32 on both sides: sample positions near 112 differ by an ulp (~1e-5), values by ~1e-5.
    np.testing.assert_allclose(out14[0], ref14.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out14[1], 2 * out14[0], rtol=1e-5, atol=2e-5)


def test_multiscale_roi_align_table_pools_boxes_of_any_image_of_a_batch(np_rng):
    """One table for a batch of 3 pyramids, boxes of shuffled images (torchvision's batch index):
    values and the gradient of every level equal torchvision's MultiScaleRoIAlign (float64)."""
    c, n = 4, 3
    feats = [np_rng.normal(size=(n, int(S * s), int(S * s), c)) for s in SCALES]
    boxes = _boxes(np_rng, 24)
    image = np_rng.integers(0, n, len(boxes)).astype(np.int32)
    assert set(image) == {0, 1, 2}
    order = np.argsort(image, kind="stable")  # torchvision takes one box list per image
    tfeats = [torch.tensor(f).permute(0, 3, 1, 2).requires_grad_(True) for f in feats]
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 5, 2)
    ref = pool(OrderedDict((str(i), t) for i, t in enumerate(tfeats)),
               [torch.tensor(boxes[image == i], dtype=torch.float64) for i in range(n)], [(S, S)] * n)
    levels = [jnp.asarray(f, jnp.float32) for f in feats]
    f = jax.jit(lambda lv: multiscale_roi_align_table(pyramid_table(lv), pyramid_geometry(lv), jnp.asarray(boxes),
                                                      jnp.asarray(image), 5, scales=SCALES))
    out, vjp = jax.vjp(f, levels)
    np.testing.assert_allclose(np.asarray(out)[order], ref.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
    ct = np_rng.normal(size=out.shape)
    ref.backward(torch.tensor(ct[order]).permute(0, 3, 1, 2))
    for g, t in zip(vjp(jnp.asarray(ct, jnp.float32))[0], tfeats):
        np.testing.assert_allclose(g, t.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
        assert float(jnp.abs(g).max()) > 0
