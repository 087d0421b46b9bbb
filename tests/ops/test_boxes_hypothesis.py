"""Property tests (Hypothesis, issue 29) of the box ops and NMS against torchvision.ops, on the
boxes that break things: empty (zero width, zero height, a point), huge (1e6-scale coordinates),
identical and duplicated boxes, tied scores.

References: `torchvision.ops.box_iou`, `clip_boxes_to_image`, `nms`, `batched_nms`'s per-class
("vanilla") path, and `BoxCoder.encode_single` / `decode_single`. Shapes are fixed per test (only
the values are generated), so each jitted function compiles once.
"""

import jax
import numpy as np
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops.boxes import _batched_nms_vanilla

from segjax.ops import batched_nms, box_iou, clip_boxes, decode_boxes, encode_boxes, nms
from segjax.ops.boxes import BBOX_XFORM_CLIP

KINDS = ("proper", "proper", "proper", "zero_width", "zero_height", "point", "huge")


@st.composite
def box_rows(draw, k, kinds=KINDS):
    """float32 [k, 4] non-inverted boxes of mixed kinds; some rows copies of earlier rows."""
    rows = []
    for i in range(k):
        if i and draw(st.integers(0, 4)) == 0:  # a duplicate of an earlier box
            rows.append(rows[draw(st.integers(0, i - 1))])
            continue
        kind = draw(st.sampled_from(kinds))
        scale = 1e6 if kind == "huge" else 100.0
        x1, y1 = (draw(st.floats(-scale, scale, width=32)) for _ in range(2))
        w, h = (draw(st.floats(1024.0 if kind == "huge" else 0.125, scale, width=32)) for _ in range(2))
        w = 0.0 if kind in ("zero_width", "point") else w
        h = 0.0 if kind in ("zero_height", "point") else h
        rows.append([x1, y1, x1 + w, y1 + h])
    return np.asarray(rows, np.float32)


def _area(b):
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


_iou = jax.jit(box_iou)


@given(box_rows(5), box_rows(6))
def test_box_iou_equals_torchvision(a, b):
    got = np.asarray(_iou(a, b))
    ref = torchvision.ops.box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    # NaN where torchvision has NaN; else equal up to rounding (at 1e6-scale areas XLA's fused
    # multiply-add can round `area1 + area2 - inter` one ulp differently from torch).
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0, equal_nan=True)
    # NaN (0 / 0) only for two empty boxes; everything else in [0, 1], and a box meets its copy at 1.
    both_empty = (_area(a)[:, None] == 0) & (_area(b)[None, :] == 0)
    assert np.array_equal(np.isnan(got), both_empty)
    finite = got[~both_empty]
    assert ((finite >= 0) & (finite <= 1)).all()
    same = (a[:, None, :] == b[None, :, :]).all(-1) & ~both_empty
    np.testing.assert_allclose(got[same], 1.0, rtol=1e-6)


_encode = jax.jit(lambda r, p: encode_boxes(r, p, (10.0, 10.0, 5.0, 5.0)))
_decode = jax.jit(lambda d, b: decode_boxes(d, b, (10.0, 10.0, 5.0, 5.0)))
PROPER = ("proper", "huge")


@given(box_rows(6, PROPER), box_rows(6, PROPER),
       st.lists(st.floats(-1e6, 1e6, width=32), min_size=24, max_size=24))
def test_box_coder_equals_torchvision_and_round_trips(refs, props, deltas):
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0), BBOX_XFORM_CLIP)
    enc = np.asarray(_encode(refs, props))
    ref_enc = coder.encode_single(torch.tensor(refs), torch.tensor(props)).numpy()
    assert np.isfinite(enc).all()
    np.testing.assert_allclose(enc, ref_enc, rtol=1e-5, atol=1e-5)
    # Decoding any finite deltas, however wild, stays finite (sizes clamped at BBOX_XFORM_CLIP).
    deltas = np.asarray(deltas, np.float32).reshape(6, 4)
    dec = np.asarray(_decode(deltas, props))
    ref_dec = coder.decode_single(torch.tensor(deltas), torch.tensor(props)).numpy()
    assert np.isfinite(dec).all()
    scale = np.abs(ref_dec).max(-1, keepdims=True) + 1.0
    assert (np.abs(dec - ref_dec) <= 1e-5 * scale + 1e-6).all(), (dec, ref_dec)
    # decode(encode(ref)) = ref wherever the size ratio is within the clamp.
    back = np.asarray(_decode(enc, props))
    ratio = np.stack([(refs[:, 2] - refs[:, 0]) / (props[:, 2] - props[:, 0]),
                      (refs[:, 3] - refs[:, 1]) / (props[:, 3] - props[:, 1])], -1)
    ok = (np.log(ratio) < BBOX_XFORM_CLIP).all(-1)
    scale = np.maximum(np.abs(refs).max(-1), np.abs(props).max(-1))[:, None] + 1.0
    assert (np.abs(back - refs) <= 1e-5 * scale + 1e-6)[ok].all(), (back, refs)


_clip = jax.jit(lambda b: clip_boxes(b, (48, 64)))


@given(st.lists(st.sampled_from([-np.inf, -1e6, -3.5, 0.0, 7.25, 47.9, 48.0, 63.0, 64.0, 1e6, np.inf]),
                min_size=20, max_size=20))
def test_clip_equals_torchvision(coords):
    boxes = np.asarray(coords, np.float32).reshape(5, 4)
    got = np.asarray(_clip(boxes))
    np.testing.assert_array_equal(got, torchvision.ops.clip_boxes_to_image(torch.tensor(boxes), (48, 64)).numpy())
    assert np.isfinite(got).all() and (got[:, 0::2] <= 64).all() and (got[:, 1::2] <= 48).all()


K = 10
_nms = jax.jit(lambda b, s, t, v: nms(b, s, t, K, valid=v))
_bnms = jax.jit(lambda b, s, c, t: batched_nms(b, s, c, t, K))
SCORES = st.lists(st.sampled_from([0.1, 0.5, 0.5, 0.9, 0.9, 1.0]), min_size=K, max_size=K)
THRESHOLDS = st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0])


@given(box_rows(K), SCORES, THRESHOLDS, st.lists(st.booleans(), min_size=K, max_size=K))
def test_nms_equals_torchvision(boxes, scores, threshold, valid):
    scores = np.asarray(scores, np.float32)
    valid = np.asarray(valid)
    idx, count = _nms(boxes, scores, np.float32(threshold), valid)
    got = np.asarray(idx)[:int(count)]
    keep = torchvision.ops.nms(torch.tensor(boxes[valid]), torch.tensor(scores[valid]), threshold).numpy()
    np.testing.assert_array_equal(got, np.flatnonzero(valid)[keep])
    assert (np.asarray(idx)[int(count):] == -1).all()


@given(box_rows(K), SCORES, st.lists(st.integers(0, 2), min_size=K, max_size=K), THRESHOLDS)
def test_batched_nms_equals_torchvision(boxes, scores, classes, threshold):
    scores, classes = np.asarray(scores, np.float32), np.asarray(classes)
    idx, count = _bnms(boxes, scores, classes, np.float32(threshold))
    ref = _batched_nms_vanilla(torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes), threshold).numpy()
    np.testing.assert_array_equal(np.asarray(idx)[:int(count)], ref)
