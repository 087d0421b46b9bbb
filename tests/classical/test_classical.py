"""segjax.classical: determinism, the mapping to labels on images with a known answer, the
unsupervised scores on hand-counted examples, mIoU floors on `synthetic_shapes/tiny`, and the
`experiments.classical` command end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from segjax.classical import METHODS, available_methods, labelling, scoring, segment
from segjax.classical import benchmark

K = 6  # synthetic_shapes: background + 5 shapes
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _square_scene(size=40, cls=2):
    """A saturated square (class `cls`) on a flat grey background, with a little texture so
    that the region methods have something to work with. Returns (image, label, instances)."""
    rng = np.random.default_rng(0)
    image = np.full((size, size, 3), 110.0) + rng.normal(0, 2.0, (size, size, 3))
    label = np.zeros((size, size), np.uint8)
    label[10:26, 12:30] = cls
    image[label > 0] = (230.0, 200.0, 40.0)
    return np.clip(image, 0, 255).astype(np.uint8), label, (label > 0).astype(np.uint16)


def test_every_method_is_registered_with_known_kinds():
    missing = set(METHODS) - set(available_methods())
    assert not missing, f"{missing} need the classical extra: pip install -e .[classical]"
    for name, m in METHODS.items():
        assert m.output in {"foreground", "objects", "regions", "classes"}, name
        assert m.inputs in {"automatic", "boxes", "seeds"}, name
        assert (m.inputs == "automatic") == (m.output != "classes"), name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_is_deterministic_and_right_on_a_known_image(name):
    image, label, instances = _square_scene()
    first = segment(name, image, label, instances, K)
    second = segment(name, image, label, instances, K)
    np.testing.assert_array_equal(first["raw"], second["raw"])
    np.testing.assert_array_equal(first["pred"], second["pred"])
    pred = first["pred"]
    assert pred.dtype == np.int32 and pred.shape == label.shape
    assert set(np.unique(pred)) <= {0, 2}, "the only object class here is 2"
    iou = ((pred == 2) & (label == 2)).sum() / ((pred == 2) | (label == 2)).sum()
    # The adaptive threshold sees only the square's edges at this block size; the snake stops
    # on the blurred edge; every other method finds the square.
    floor = {"adaptive_threshold": 0.1, "snake": 0.8}.get(name, 0.95)
    assert iou >= floor, (name, iou)


def test_label_regions_takes_the_majority_class_background_included():
    label = np.zeros((4, 6), np.uint8)
    label[:, 3:] = 4
    label[0, 0] = 1
    regions = np.array([[7, 7, 7, 7, 3, 3]] * 4)  # region 7: 11 background, 4 class-4, 1 class-1
    got = labelling.label_regions(regions, label, K)
    np.testing.assert_array_equal(got, np.where(regions == 7, 0, 4))
    assert got.dtype == np.int32


def test_label_foreground_names_objects_and_keeps_background():
    label = np.zeros((8, 8), np.uint8)
    label[1:5, 1:5] = 3  # 16 px of class 3
    label[6:8, 6:8] = 5  # 4 px of class 5
    mask = np.zeros((8, 8), bool)
    mask[0:5, 0:5] = True  # the class-3 square and a 1-px rim of background
    mask[7, 0:2] = True  # a false detection over background only
    got = labelling.label_foreground(mask, label, K)
    want = np.zeros((8, 8), np.int32)
    want[0:5, 0:5] = 3
    want[7, 0:2] = 3  # the image's most common object class
    np.testing.assert_array_equal(got, want)
    # An object region over mostly background still gets its object class (not background).
    regions = np.zeros((8, 8), np.int32)
    regions[4:8, 4:8] = 2  # 12 background px, 4 class-5 px
    np.testing.assert_array_equal(labelling.label_foreground(regions, label, K),
                                  np.where(regions == 2, 5, 0))


def test_instance_boxes_and_seeds_come_from_the_ground_truth():
    label = np.zeros((30, 30), np.uint8)
    instances = np.zeros((30, 30), np.uint16)
    label[2:12, 3:9], instances[2:12, 3:9] = 1, 1
    label[15:28, 14:29], instances[15:28, 14:29] = 4, 2
    boxes, classes = labelling.instance_boxes(instances, label, K)
    np.testing.assert_array_equal(boxes, [[3, 2, 9, 12], [14, 15, 29, 28]])
    np.testing.assert_array_equal(classes, [1, 4])
    seeds = labelling.ground_truth_seeds(label, radius_fraction=0.1)  # disk radius 3
    assert set(np.unique(seeds)) == {0, 1, 2, 5}
    assert np.all(seeds[seeds > 0] == label[seeds > 0].astype(np.int32) + 1)
    # The cores: the 13x15 rectangle shrunk by the radius; the 10x6 one erodes away entirely
    # and keeps one innermost pixel; the background keeps 3 px off the objects and the border.
    np.testing.assert_array_equal(np.argwhere(seeds == 5).min(0), [18, 17])
    np.testing.assert_array_equal(np.argwhere(seeds == 5).max(0), [24, 25])
    assert (seeds == 2).sum() == 1 and label[tuple(np.argwhere(seeds == 2)[0])] == 1
    assert (seeds[:3] == 0).all() and (seeds[13:16, 14:29] == 0).all()
    tiny = np.zeros((30, 30), np.uint8)
    tiny[5, 5] = 2  # a one-pixel object erodes away and keeps its single pixel
    assert labelling.ground_truth_seeds(tiny, radius_fraction=0.1)[5, 5] == 3


def test_unsupervised_scores_on_hand_counted_examples():
    label = np.zeros((4, 4), np.uint8)
    label[:, 2:] = 1  # two segments of 8 px
    assert scoring.undersegmentation_error(np.zeros((4, 4), int), label) == 1.0  # 8 + 8 of 16
    three_one = np.array([[0, 0, 0, 1]] * 4)  # region 0 straddles: min(8, 4) + min(4, 8)
    assert scoring.undersegmentation_error(three_one, label) == 0.5
    assert scoring.undersegmentation_error(label.astype(int) + 5, label) == 0.0
    assert scoring.boundary_recall(label.astype(int), label) == 1.0
    assert scoring.boundary_recall(np.zeros((4, 4), int), label) == 0.0
    wide = np.zeros((12, 12), np.uint8)
    wide[:, 6:] = 1
    shifted = np.zeros((12, 12), int)
    shifted[:, 9:] = 1  # boundary pixels: columns 5, 6 (truth) and 8, 9 (regions)
    assert scoring.boundary_recall(shifted, wide, tolerance=1) == 0.0
    assert scoring.boundary_recall(shifted, wide) == 0.5  # column 6 is 2 px from column 8
    assert scoring.boundary_recall(shifted, wide, tolerance=3) == 1.0


# mIoU on synthetic_shapes/tiny validation images 0-7, as measured when the methods were added
# minus 0.02: a floor, so a regression in a method or its labelling shows up.
MIOU_FLOORS = {  # measured: 0.628 0.235 0.624 0.624 0.445 0.568 0.580 0.996 1 1 0.750 0.913 1 1
    "otsu": 0.60, "adaptive_threshold": 0.21, "otsu_morphology": 0.60, "watershed_distance": 0.60,
    "chan_vese": 0.42, "morph_chan_vese": 0.54, "watershed_gradient": 0.55, "slic": 0.97,
    "felzenszwalb": 0.98, "quickshift": 0.98, "snake": 0.72, "morph_geodesic": 0.89,
    "grabcut": 0.98, "random_walker": 0.98,
}


@pytest.fixture(scope="module")
def tiny_results():
    results, preds, examples = benchmark.evaluate("synthetic_shapes/tiny", num_images=8,
                                                       workers=1, progress=lambda s: None)
    return results, preds, examples


def test_miou_floors_on_tiny(tiny_results):
    results, preds, examples = tiny_results
    assert set(results) == set(MIOU_FLOORS)
    for name, floor in MIOU_FLOORS.items():
        r = results[name]
        assert r["miou"] >= floor, (name, r["miou"])
        assert 0.0 <= r["boundary_iou"] <= 1.0 and r["seconds_per_image"] > 0
        assert preds[name].shape == (8, 48, 48)
        if METHODS[name].output == "regions":
            # watershed_gradient leaves some flat tiny images as one region: recall 0.5 there.
            assert 0.0 <= r["undersegmentation_error"] < 0.1 and r["boundary_recall"] >= 0.5


def test_scores_agree_with_a_direct_count(tiny_results):
    results, preds, examples = tiny_results
    labels = np.stack([ex["label"] for ex in examples]).astype(int)
    p = preds["otsu"].astype(int)
    ious = [((p == c) & (labels == c)).sum() / ((p == c) | (labels == c)).sum()
            for c in range(K) if ((p == c) | (labels == c)).any()]
    assert results["otsu"]["miou"] == pytest.approx(np.mean(ious), abs=1e-12)


@pytest.mark.slow
def test_experiments_classical_end_to_end(tmp_path):
    # Two datasets (a study): each gets its own directory, plus the study table and figure.
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.classical", f"--workdir={workdir}",
           "--dataset=synthetic_shapes/tiny,synthetic_shapes/clean", "--num_images=2",
           "--workers=2", "--methods=otsu,slic,grabcut,random_walker"]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=240)
    for config in ("tiny", "clean"):
        # Strict JSON (a class absent from truth and prediction has IoU null, not NaN).
        results = json.loads((workdir / config / "results.json").read_text(),
                             parse_constant=lambda name: pytest.fail(f"{name} in results.json"))
        assert list(results) == ["otsu", "slic", "grabcut", "random_walker"]
        for r in results.values():
            assert {"miou", "boundary_iou", "seconds_per_image", "inputs"} <= set(r)
            defined = [v for v in r["iou_per_class"] if v is not None]
            assert r["miou"] == pytest.approx(np.mean(defined)) and r["seconds_per_image"] > 0
        assert results["grabcut"]["inputs"].startswith("ground-truth instance boxes")
        assert results["random_walker"]["inputs"].startswith("ground-truth seeds")
        assert "automatic" in results["otsu"]["inputs"]
        assert "boundary_recall" in results["slic"] and "boundary_recall" not in results["otsu"]
        assert (workdir / config / "figure.png").stat().st_size > 1000
        assert "| random_walker |" in (workdir / config / "report.md").read_text()
    study = (workdir / "study.md").read_text()
    assert "| method | inputs | tiny | clean |" in study
    assert (workdir / "study.png").stat().st_size > 1000
