"""segjax.metrics.segmentation against numpy loops and hand-computed examples."""

import functools
import math

import jax
import numpy as np
import pytest

from segjax import metrics

IGNORE = 255


def confusion_loops(pred, labels, k, valid=None):
    conf = np.zeros((k, k), np.int64)
    for n in range(labels.shape[0]):
        if valid is not None and not valid[n]:
            continue
        for i in range(labels.shape[1]):
            for j in range(labels.shape[2]):
                if labels[n, i, j] != IGNORE:
                    conf[labels[n, i, j], pred[n, i, j]] += 1
    return conf


def test_confusion_matrix_matches_loops(np_rng):
    k = 5
    pred = np_rng.integers(0, k, size=(3, 7, 9))
    labels = np_rng.integers(0, k, size=(3, 7, 9))
    labels[np_rng.random(labels.shape) < 0.25] = IGNORE
    valid = np.array([True, False, True])
    conf = metrics.confusion_matrix(pred, labels, k, ignore_label=IGNORE, valid_mask=valid)
    assert conf.dtype == np.int32
    np.testing.assert_array_equal(conf, confusion_loops(pred, labels, k, valid))
    jitted = jax.jit(functools.partial(metrics.confusion_matrix, num_classes=k, ignore_label=IGNORE))
    np.testing.assert_array_equal(jitted(pred, labels), confusion_loops(pred, labels, k))


def test_confusion_matrix_rejects_labels_out_of_range(np_rng):
    labels = np.zeros((1, 3, 3), np.int32)
    labels[0, 1, 1] = 7
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix(np.zeros_like(labels), labels, 3, ignore_label=IGNORE)
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_matrix(np.zeros((1, 3, 4), np.int32), labels, 3, ignore_label=IGNORE)


def test_metrics_from_confusion_worked_example():
    # rows = ground truth. Class 3 is absent from both ground truth and predictions.
    conf = np.array([[5, 1, 0, 0], [2, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.int64)
    # Class 2 never occurs in the ground truth but is predicted once.
    m = metrics.metrics_from_confusion(conf)
    iou0 = 5 / (6 + 7 - 5)  # tp 5, gt 6, pred 7
    iou1 = 3 / (6 + 4 - 3)
    iou2 = 0 / (0 + 1 - 0)
    assert m["iou_per_class"][:3] == pytest.approx([iou0, iou1, iou2])
    assert math.isnan(m["iou_per_class"][3])
    assert m["miou"] == pytest.approx((iou0 + iou1 + iou2) / 3)
    assert m["pixel_accuracy"] == pytest.approx(8 / 12)
    assert m["accuracy_per_class"][:2] == pytest.approx([5 / 6, 3 / 6])
    assert math.isnan(m["accuracy_per_class"][2])
    assert m["mean_accuracy"] == pytest.approx((5 / 6 + 3 / 6) / 2)
    assert m["fw_iou"] == pytest.approx(6 / 12 * iou0 + 6 / 12 * iou1)
    assert m["num_pixels"] == 12


def test_metrics_from_random_confusion_match_formulas(np_rng):
    k = 6
    conf = np_rng.integers(0, 50, size=(k, k))
    m = metrics.metrics_from_confusion(conf)
    for c in range(k):
        tp = conf[c, c]
        assert m["iou_per_class"][c] == pytest.approx(tp / (conf[c].sum() + conf[:, c].sum() - tp))
    assert m["pixel_accuracy"] == pytest.approx(np.trace(conf) / conf.sum())
    with pytest.raises(ValueError, match="square"):
        metrics.metrics_from_confusion(np.zeros((2, 3)))


def test_host_accumulation_is_exact_past_float32_range():
    # One batch with 2^24 pixels of class 0, then single pixels: float32 cannot count past 2^24 in
    # steps of one (2^24 + 1 rounds back to 2^24), int64 can.
    big = np.array([[2**24, 0], [0, 3]], np.int32)
    one = np.array([[1, 0], [0, 0]], np.int32)
    acc = metrics.ConfusionAccumulator(2)
    f32 = np.zeros((2, 2), np.float32)
    for conf in [big] + [one] * 8:
        acc.update(conf)
        f32 += conf.astype(np.float32)
    assert acc.confusion.dtype == np.int64
    assert acc.confusion[0, 0] == 2**24 + 8
    assert acc.result()["num_pixels"] == 2**24 + 11
    assert f32[0, 0] == 2**24  # float32 lost all eight pixels: the test would catch such a sum.
    batch = big
    with pytest.raises(ValueError, match="integer"):
        acc.update(batch.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros((3, 3), np.int32))
    acc.reset()
    assert acc.confusion.sum() == 0


def boundary_reference(mask, dilation):
    """Cheng et al.'s mask_to_boundary: pad one zero pixel, erode `dilation` times with 3x3 (numpy loops)."""
    h, w = mask.shape
    m = np.pad(mask.astype(np.uint8), 1)
    for _ in range(dilation):
        # cv2.erode treats pixels beyond the padded image as foreground (its default border).
        padded = np.pad(m, 1, constant_values=1)
        out = np.zeros_like(m)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                out[i, j] = padded[i : i + 3, j : j + 3].min()
        m = out
    return mask.astype(np.uint8) - m[1 : h + 1, 1 : w + 1]


def blobs(np_rng, n, h, w, k):
    """Label maps made of a few random rectangles (so that they have real boundaries)."""
    out = np.zeros((n, h, w), np.int32)
    for i in range(n):
        for _ in range(4):
            y0, x0 = np_rng.integers(0, h - 2), np_rng.integers(0, w - 2)
            out[i, y0 : y0 + np_rng.integers(2, h), x0 : x0 + np_rng.integers(2, w)] = np_rng.integers(0, k)
    return out


def test_mask_boundary_hand_example():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True  # a 5x5 square: its 1-pixel inner boundary is a ring of 16 pixels.
    b = np.asarray(metrics.mask_boundary(mask, 1))
    assert b.sum() == 16 and not b[3:6, 3:6].any()
    full = np.ones((4, 5), bool)  # touching the border: the border is boundary.
    assert np.asarray(metrics.mask_boundary(full, 1)).sum() == 4 * 5 - 2 * 3


@pytest.mark.parametrize("dilation", [1, 3])
def test_boundary_iou_matches_reference(np_rng, dilation):
    k = 3
    labels = blobs(np_rng, 2, 13, 15, k)
    pred = blobs(np_rng, 2, 13, 15, k)
    pred[0] = labels[0]
    pred[0, 4:8, 5:9] = (labels[0, 4:8, 5:9] + 1) % k
    labels[1, :2] = IGNORE
    inter_ref = np.zeros(k, np.int64)
    union_ref = np.zeros(k, np.int64)
    for n in range(2):
        valid = labels[n] != IGNORE
        for c in range(k):
            g = boundary_reference(labels[n] == c, dilation).astype(bool) & valid
            p = boundary_reference(pred[n] == c, dilation).astype(bool) & valid
            inter_ref[c] += (g & p).sum()
            union_ref[c] += (g | p).sum()
    inter, union = metrics.boundary_iou_counts(pred, labels, k, ignore_label=IGNORE, dilation=dilation)
    np.testing.assert_array_equal(inter, inter_ref)
    np.testing.assert_array_equal(union, union_ref)
    mean, per_class = metrics.boundary_iou(pred, labels, k, ignore_label=IGNORE, dilation=dilation)
    np.testing.assert_allclose(per_class, inter_ref / union_ref)
    assert mean == pytest.approx(np.mean(inter_ref / union_ref))
    assert 0 < mean < 1
    acc = metrics.ConfusionAccumulator(k)
    acc.update_boundary(inter, union)
    acc.update_boundary(inter, union)
    assert acc.result()["boundary_iou"] == pytest.approx(mean)
    with pytest.raises(ValueError, match="boundary counts"):
        acc.update_boundary(inter[:2], union[:2])


def test_boundary_iou_perfect_and_dilation_from_ratio(np_rng):
    labels = blobs(np_rng, 1, 11, 12, 3)
    mean, _ = metrics.boundary_iou(labels, labels, 3, ignore_label=IGNORE)
    assert mean == 1.0
    assert metrics.dilation_pixels(11, 12, 0.02) == 1
    assert metrics.dilation_pixels(300, 400, 0.02) == 10  # 0.02 * 500
