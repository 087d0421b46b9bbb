"""synthetic_shapes: determinism, what each difficulty factor changes, build speed."""
import dataclasses
import time

import numpy as np
import pytest

from segjax.data.builders import synthetic_shapes as ss

CONFIGS = {c.name: c for c in ss.BUILDER_CONFIGS}


def _small(name, **kw):
    """The named config at 64x64 (same factors)."""
    return dataclasses.replace(CONFIGS[name], image_size=64, **kw)


def _examples(config, n, split="train"):
    return [ss.generate(config, split, i) for i in range(n)]


def test_same_seed_same_bytes_other_seed_differs():
    config = _small("all")
    a, b = ss.generate(config, "train", 5), ss.generate(config, "train", 5)
    for key in ("image", "label", "instances"):
        assert a[key].tobytes() == b[key].tobytes()
    c = ss.generate(dataclasses.replace(config, seed=1), "train", 5)
    d = ss.generate(config, "validation", 5)
    assert a["image"].tobytes() != c["image"].tobytes()
    assert a["image"].tobytes() != d["image"].tobytes()


def test_shapes_dtypes_and_label_instance_consistency():
    for ex in _examples(_small("all"), 6) + _examples(_small("clean"), 6):
        assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
        assert ex["label"].shape == (64, 64, 1) and ex["label"].dtype == np.uint8
        assert ex["instances"].dtype == np.uint16
        assert ex["label"].max() < ss.NUM_CLASSES
        # Instance pixels carry a class, background pixels none; one class per instance.
        np.testing.assert_array_equal(ex["instances"] > 0, ex["label"] > 0)
        for k in np.unique(ex["instances"])[1:]:
            assert len(np.unique(ex["label"][ex["instances"] == k])) == 1


def test_clean_objects_fully_visible_and_separate():
    for ex in _examples(_small("clean"), 20):
        np.testing.assert_allclose(ex["visible_fraction"], 1.0)
        np.testing.assert_array_equal(ex["label"], ex["clean_label"])
        assert len(ex["classes"]) >= 1


def test_occlusion_hides_part_of_every_object():
    visible = np.concatenate([ex["visible_fraction"] for ex in _examples(_small("occlusion"), 20)])
    assert (visible < 1.0).mean() > 0.9 and visible.min() > 0.0
    assert 0.3 < visible.mean() < 0.95


def test_overlap_makes_objects_hide_each_other():
    visible = np.concatenate([ex["visible_fraction"] for ex in _examples(_small("overlap"), 20)])
    assert (visible < 0.999).sum() >= 5  # earlier objects partly covered by later ones


def test_imbalance_skews_class_frequencies():
    def object_freq(name):
        classes = np.concatenate([ex["classes"] for ex in _examples(_small(name), 150)])
        return np.bincount(classes, minlength=ss.NUM_CLASSES)[1:] / len(classes)

    clean, skewed = object_freq("clean"), object_freq("imbalance")
    assert clean.min() > 0.12  # roughly uniform over 5 classes
    assert skewed[0] > 0.5 and skewed[-1] < 0.05
    assert np.all(np.diff(skewed) < 0)


def test_noise_and_illumination_change_only_the_image():
    for factor in ("noise", "illumination"):
        for clean, hard in zip(_examples(_small("clean"), 4), _examples(_small(factor), 4)):
            np.testing.assert_array_equal(clean["label"], hard["label"])
            diff = hard["image"].astype(float) - clean["image"]
            if factor == "noise":
                assert 8 < diff.std() < 20 and abs(diff.mean()) < 3
            else:  # a smooth multiplicative gain: large changes, varying over the image
                ratio = (hard["image"].astype(float) + 1) / (clean["image"].astype(float) + 1)
                spread = np.ptp(ratio.mean(axis=(0, 2))) + np.ptp(ratio.mean(axis=(1, 2)))
                assert spread > 0.2


def test_label_noise_changes_labels_not_images():
    disagree = []
    for clean, noisy in zip(_examples(_small("clean"), 20), _examples(_small("label_noise"), 20)):
        disagree.append((noisy["label"] != noisy["clean_label"]).mean())
        np.testing.assert_array_equal(clean["image"], noisy["image"])
        np.testing.assert_array_equal(clean["label"], noisy["clean_label"])
    assert 0.005 < np.mean(disagree) < 0.2


def test_shape_variation_changes_geometry():
    pairs = zip(_examples(_small("clean"), 10), _examples(_small("shape_variation"), 10))
    changed = []
    for clean, varied in pairs:
        np.testing.assert_array_equal(clean["classes"], varied["classes"])  # same scene
        changed.append((clean["label"] != varied["label"]).mean())
    assert np.mean(changed) > 0.01


def test_shape_only_decouples_colour_from_class():
    def hue_spread(name):  # largest distance (degrees) of a circle's hue from red (0 deg)
        hues = []
        for ex in _examples(_small(name), 40):
            circle = ex["label"][..., 0] == 1
            if circle.sum() > 20:
                r, g, b = ex["image"][circle].astype(float).mean(0)
                hues.append(np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360)
        return max(min(h, 360 - h) for h in hues)

    assert hue_spread("clean") < 30 < 90 < hue_spread("shape_only")


def test_unknown_factor_rejected():
    with pytest.raises(ValueError, match="factors"):
        ss.SyntheticShapesConfig(name="x", factors=("fog",))


def test_generation_is_fast():
    config = CONFIGS["clean"]  # the default 128x128 config
    # CPU time of this process, not wall time: other processes on the machine do not count.
    start = time.process_time()
    _examples(config, 30)
    per_example = (time.process_time() - start) / 30
    # 2,250 examples plus PNG encoding (~2 ms) must fit well inside a minute.
    assert per_example < 0.015, per_example
