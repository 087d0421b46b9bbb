"""segjax.metrics.coco: ground truth submitted as detections scores AP 1.0; hand-computed partial AP;
instance extraction from class and instance-id maps against a numpy loop."""

import numpy as np
import pytest

from segjax.metrics import coco


def square(h, w, y, x, s):
    m = np.zeros((h, w), bool)
    m[y:y + s, x:x + s] = True
    return m


def test_ground_truth_as_detections_scores_one(np_rng):
    acc = coco.CocoAccumulator(num_classes=4)
    for _ in range(3):
        n = int(np_rng.integers(1, 5))
        masks = np.stack([square(40, 50, *np_rng.integers(0, 25, 2), int(np_rng.integers(5, 15)))
                          for _ in range(n)])
        classes = np_rng.integers(1, 4, n)
        boxes = np.stack([coco.mask_box(m) for m in masks])
        acc.add_image(gt_classes=classes, gt_masks=masks, det_boxes=boxes,
                      det_scores=np_rng.uniform(0.5, 1, n), det_classes=classes, det_masks=masks)
    r = acc.result()
    for key in ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75"):
        assert r[key] == pytest.approx(1.0), key
    assert r["num_images"] == 3 and r["num_detections"] == r["num_instances"]


def test_partial_overlap_counts_the_thresholds_it_passes():
    """One 10x10 ground truth and one detection shifted 3 px: IoU = 70 / 130 = 0.538, so the
    detection matches at threshold 0.5 only: AP50 = 1, AP75 = 0, AP = 1/10 (box and mask)."""
    gt = square(32, 32, 5, 5, 10)
    det = square(32, 32, 5, 8, 10)
    acc = coco.CocoAccumulator(num_classes=2)
    acc.add_image(gt_classes=[1], gt_masks=gt[None], det_boxes=coco.mask_box(det)[None],
                  det_scores=[0.9], det_classes=[1], det_masks=det[None])
    r = acc.result()
    for kind in ("box", "mask"):
        assert r[f"{kind}_ap50"] == pytest.approx(1.0)
        assert r[f"{kind}_ap75"] == pytest.approx(0.0)
        assert r[f"{kind}_ap"] == pytest.approx(0.1)
    assert r["mask_ap_small"] == pytest.approx(0.1) and r["mask_ap_large"] is None


def test_wrong_class_and_no_detections_score_zero():
    gt = square(20, 20, 2, 2, 8)
    acc = coco.CocoAccumulator(num_classes=3)
    acc.add_image(gt_classes=[1], gt_masks=gt[None], det_boxes=coco.mask_box(gt)[None],
                  det_scores=[0.9], det_classes=[2], det_masks=gt[None])
    assert acc.result()["mask_ap"] == pytest.approx(0.0)
    empty = coco.CocoAccumulator(num_classes=3)
    empty.add_image(gt_classes=[1], gt_masks=gt[None], det_boxes=np.zeros((0, 4)),
                    det_scores=[], det_classes=[], det_masks=np.zeros((0, 20, 20), bool))
    assert empty.result()["mask_ap"] == 0.0


def test_instances_from_maps_matches_a_loop(np_rng):
    label = np_rng.integers(0, 4, (12, 13))
    instance = np_rng.integers(0, 5, (12, 13))
    label[0, :] = 255
    instance[:, 0] = 7  # an id whose pixels we make all background
    label[:, 0] = 0
    classes, masks = coco.instances_from_maps(label, instance, ignore_label=255)
    want = []
    for k in range(1, 8):
        m = instance == k
        ids = label[m][(label[m] != 255) & (label[m] != 0)]
        if m.any() and ids.size:
            want.append((np.bincount(ids).argmax(), m))
    assert [int(c) for c in classes] == [c for c, _ in want]
    for got, (_, m) in zip(masks, want):
        np.testing.assert_array_equal(got, m)
    assert len(classes) == len(want)
