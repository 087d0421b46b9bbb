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


def test_no_ground_truth_at_all_is_none_as_documented():
    """Issue 29: the module promises None where COCOeval has no ground truth to score (its -1).
    An evaluation without any ground-truth instance -- with detections (all false positives) or
    without -- has no defined AP; it used to report 0.0, the score of a model that misses every
    object. With ground truth but no detections AP is 0.0, and the sizes without ground truth
    are still None (one 8x8 = 64 px instance: small only)."""
    gt = square(20, 20, 2, 2, 8)
    for dets in (0, 1):
        acc = coco.CocoAccumulator(num_classes=3)
        acc.add_image(gt_classes=[], gt_masks=np.zeros((0, 20, 20), bool),
                      det_boxes=np.tile(coco.mask_box(gt), (dets, 1)), det_scores=[0.9] * dets,
                      det_classes=[1] * dets, det_masks=np.repeat(gt[None], dets, 0))
        r = acc.result()
        for kind in ("box", "mask"):
            for stat in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"):
                assert r[f"{kind}_{stat}"] is None, (dets, kind, stat)
        assert (r["num_images"], r["num_instances"], r["num_detections"]) == (1, 0, dets)
    assert all(v is None for k, v in coco.CocoAccumulator(3).result().items() if "_ap" in k)  # no image
    acc = coco.CocoAccumulator(num_classes=3)
    acc.add_image(gt_classes=[1], gt_masks=gt[None], det_boxes=np.zeros((0, 4)), det_scores=[],
                  det_classes=[], det_masks=np.zeros((0, 20, 20), bool))
    r = acc.result()
    for kind in ("box", "mask"):
        assert r[f"{kind}_ap"] == r[f"{kind}_ap50"] == r[f"{kind}_ap_small"] == 0.0
        assert r[f"{kind}_ap_medium"] is None and r[f"{kind}_ap_large"] is None


def test_undefined_ap_reaches_the_log_and_checkpoints(tmp_path):
    """Downstream of None: the instance task's eval line prints n/a, and a checkpoint whose
    ranking metric is None is saved without metrics (never the best) instead of float(None)."""
    import jax.numpy as jnp

    from segjax.tasks.instance import InstanceTask
    from segjax.train.checkpoint import Checkpointer

    task = InstanceTask(num_classes=3, ignore_label=255, max_instances=4)
    line = task.summary_line({"mask_ap": None, "mask_ap50": None, "box_ap": 0.25})
    assert line == "mask_ap n/a  mask_ap50 n/a  box_ap 0.2500"
    ckpt = Checkpointer(tmp_path / "ckpt", keep=3, best_metric=task.best_metric)
    state = {"w": jnp.zeros(2)}
    ckpt.save(1, state, metrics={"mask_ap": 0.1})
    ckpt.save(2, state, metrics={"mask_ap": None})
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2] and ckpt.best_step() == 1
    ckpt.close()
