"""segjax.ops.nms / batched_nms vs torchvision.ops.nms / batched_nms (padded, static shapes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from segjax.ops import batched_nms, box_iou, nms


def _boxes(np_rng, k, extent=100.0, max_wh=30.0):
    xy = np_rng.uniform(0, extent, (k, 2))
    wh = np_rng.uniform(1.0, max_wh, (k, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _tv_nms(boxes, scores, thr):
    return torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), thr).numpy()


def _real(indices, count):
    indices, count = np.asarray(indices), int(count)
    assert (indices[count:] == -1).all()
    return indices[:count]


@pytest.mark.parametrize("k,thr", [(1, 0.5), (60, 0.3), (400, 0.7)])
def test_nms_matches_torchvision_with_ties(np_rng, k, thr):
    boxes = _boxes(np_rng, k)
    scores = np_rng.uniform(size=k).astype(np.float32)
    scores[1::4] = scores[0::4][: len(scores[1::4])]  # many exactly equal scores
    ref = _tv_nms(boxes, scores, thr)
    np.testing.assert_array_equal(_real(*nms(boxes, scores, thr, k)), ref)
    # Truncation to max_output keeps the highest scoring kept boxes.
    m = max(1, len(ref) // 2)
    idx, n = nms(boxes, scores, thr, m)
    assert int(n) == m
    np.testing.assert_array_equal(idx, ref[:m])


def test_iou_exactly_at_threshold_is_kept_and_duplicates_suppressed():
    # [0,0,4,1] and [0,0,2,1]: intersection 2, union 4, IoU exactly 0.5 in float32.
    boxes = np.array([[0, 0, 4, 1], [0, 0, 2, 1], [0, 0, 4, 1], [10, 10, 12, 12], [10, 10, 12, 12]],
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.6], np.float32)
    assert float(box_iou(boxes[:1], boxes[1:2])[0, 0]) == 0.5
    ref = _tv_nms(boxes, scores, 0.5)
    idx, n = nms(boxes, scores, 0.5, 5)
    np.testing.assert_array_equal(_real(idx, n), ref)
    # IoU == 0.5 is not > 0.5: box 1 survives; the duplicate box 2 (IoU 1) is suppressed; of the
    # equal-score duplicates 3 and 4 the lower index wins.
    np.testing.assert_array_equal(ref, [0, 1, 3])
    np.testing.assert_array_equal(_real(*nms(boxes, scores, 0.49, 5)), _tv_nms(boxes, scores, 0.49))


def test_validity_mask_and_empty_input(np_rng):
    boxes = _boxes(np_rng, 50, extent=40.0)
    scores = np_rng.uniform(size=50).astype(np.float32)
    valid = np_rng.uniform(size=50) < 0.6
    scores[~valid] = 10.0  # padding with the highest scores must neither survive nor suppress
    idx, n = nms(boxes, scores, 0.5, 50, valid=valid)
    sub = np.flatnonzero(valid)
    np.testing.assert_array_equal(_real(idx, n), sub[_tv_nms(boxes[valid], scores[valid], 0.5)])
    idx, n = nms(boxes, scores, 0.5, 7, valid=np.zeros(50, bool))
    assert int(n) == 0 and (np.asarray(idx) == -1).all()
    idx, n = nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.5, 3)
    assert int(n) == 0 and (np.asarray(idx) == -1).all()


def test_batched_nms_per_class(np_rng):
    k = 300
    boxes = _boxes(np_rng, k, extent=60.0)
    scores = np_rng.uniform(size=k).astype(np.float32)
    classes = np_rng.integers(0, 4, k)
    ref = torchvision.ops.boxes._batched_nms_vanilla(
        torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes), 0.5).numpy()
    idx, n = batched_nms(boxes, scores, classes, 0.5, k)
    np.testing.assert_array_equal(_real(idx, n), ref)
    # torchvision's public entry point (the coordinate-offset path at this size) agrees here.
    np.testing.assert_array_equal(ref, torchvision.ops.batched_nms(
        torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes), 0.5).numpy())
    # With a validity mask.
    valid = np_rng.uniform(size=k) < 0.5
    idx, n = batched_nms(boxes, scores, classes, 0.5, k, valid=valid)
    sub = np.flatnonzero(valid)
    ref = torchvision.ops.batched_nms(torch.tensor(boxes[valid]), torch.tensor(scores[valid]),
                                      torch.tensor(classes[valid]), 0.5).numpy()
    np.testing.assert_array_equal(_real(idx, n), sub[ref])


def test_jit_and_vmap(np_rng):
    b, k = 3, 80
    boxes = np.stack([_boxes(np_rng, k, extent=50.0) for _ in range(b)])
    scores = np_rng.uniform(size=(b, k)).astype(np.float32)
    valid = np_rng.uniform(size=(b, k)) < 0.8
    valid[2] = False  # one element has nothing to do: the batched loop must still be right
    f = jax.jit(jax.vmap(lambda bx, s, v: nms(bx, s, 0.6, 40, valid=v)))
    idx, n = f(boxes, scores, valid)
    for i in range(b):
        sub = np.flatnonzero(valid[i])
        ref = sub[_tv_nms(boxes[i][valid[i]], scores[i][valid[i]], 0.6)][:40]
        np.testing.assert_array_equal(_real(idx[i], n[i]), ref)
    # The threshold may be traced.
    g = jax.jit(lambda t: nms(boxes[0], scores[0], t, k))
    np.testing.assert_array_equal(_real(*g(jnp.float32(0.3))), _tv_nms(boxes[0], scores[0], 0.3))
