"""synthetic_lesions: one connected, hole-free lesion per image in PH2's range of sizes and
contrasts, deterministic, and the prepared TFDS data equal to the generator's bytes."""
import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from segjax.data import eval_batches, get_dataset_info, prepare
from segjax.data.builders import synthetic_lesions as sl
from segjax.data.records import _builder

SMALL = dataclasses.replace(sl.BUILDER_CONFIGS[0], image_size=48)


@pytest.fixture(scope="module")
def examples():
    return [sl.generate(SMALL, "train", i) for i in range(80)]


def test_same_seed_same_bytes_other_seed_or_split_differs():
    a, b = sl.generate(SMALL, "train", 3), sl.generate(SMALL, "train", 3)
    assert a["image"].tobytes() == b["image"].tobytes()
    assert a["label"].tobytes() == b["label"].tobytes()
    for other in (sl.generate(dataclasses.replace(SMALL, seed=1), "train", 3),
                  sl.generate(SMALL, "validation", 3), sl.generate(SMALL, "train", 4)):
        assert a["image"].tobytes() != other["image"].tobytes()


def test_one_connected_lesion_without_holes(examples):
    """scipy's labelling: exactly one 8-connected component, equal to its hole-filled self."""
    for ex in examples:
        label = ex["label"][..., 0]
        assert ex["image"].shape == (48, 48, 3) and ex["image"].dtype == np.uint8
        assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
        _, count = ndimage.label(label, structure=np.ones((3, 3)))
        assert count == 1
        np.testing.assert_array_equal(ndimage.binary_fill_holes(label), label.astype(bool))


def test_sizes_contrasts_and_hair_span_dermoscopys_range(examples):
    """PH2-like: lesions cover ~10-60 % of the image; contrast from faint to strong."""
    fraction = np.array([ex["label"].mean() for ex in examples])
    assert 0.05 < fraction.min() < 0.18 and 0.45 < fraction.max() < 0.7
    drawn = np.array([ex["area"] for ex in examples])
    assert np.all((drawn >= 0.10) & (drawn <= 0.60))
    assert np.corrcoef(fraction, drawn)[0, 1] > 0.9  # the label is the drawn blob
    # Grey-level difference between lesion and skin: the lesion is darker in every image.
    diff = np.array([ex["image"][ex["label"][..., 0] == 0].mean()
                     - ex["image"][ex["label"][..., 0] == 1].mean() for ex in examples])
    assert diff.min() > 3 and np.percentile(diff, 10) < 25 and np.percentile(diff, 90) > 55
    contrast = np.array([ex["contrast"] for ex in examples])
    assert np.corrcoef(contrast, diff)[0, 1] > 0.7
    hairs = np.mean([ex["hairs"] for ex in examples])
    assert 0.15 < hairs < 0.55


def test_soft_border_darkens_towards_the_inside(examples):
    """Mean brightness rises monotonically with the distance from the lesion's core into the
    skin (scipy's Euclidean distance transform of the label), over hair-free images."""
    profiles = []
    for ex in examples:
        if ex["hairs"]:
            continue
        label = ex["label"][..., 0].astype(bool)
        signed = ndimage.distance_transform_edt(~label) - ndimage.distance_transform_edt(label)
        grey = ex["image"].astype(float).mean(-1)
        bands = [grey[(signed > lo) & (signed <= lo + 2)].mean() for lo in (-6, -4, -2, 0, 2)]
        if all(np.isfinite(bands)):
            profiles.append(bands)
    mean = np.mean(profiles, 0)
    assert len(profiles) > 20 and np.all(np.diff(mean) > 0)


def test_prepared_tiny_equals_the_generator(tmp_path):
    """`prepare` -> TFDS records -> `eval_batches` hold the generator's labels and images."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    info = get_dataset_info("synthetic_lesions/tiny")
    assert (info.num_classes, info.class_names) == (2, ("background", "lesion"))
    prepare(info, str(tmp_path))
    source = _builder(info, str(tmp_path)).as_data_source("validation")
    config = sl.BUILDER_CONFIGS[sl.CONFIG_NAMES.index("tiny")]
    assert len(source) == config.num_validation
    for i in range(len(source)):
        ex = sl.generate(config, "validation", int(source[i]["image_id"].decode()[-6:]))
        np.testing.assert_array_equal(source[i]["image"], ex["image"])
        np.testing.assert_array_equal(source[i]["segmentation_mask"], ex["label"])
    batch = next(iter(eval_batches(info, split="validation", batch_size=4, pad_to=32,
                                   data_dir=str(tmp_path))))
    labels = batch["label"][np.asarray(batch["valid"], bool)]
    assert set(np.unique(labels)) == {0, 1}


def test_registry_names_and_bad_config():
    assert get_dataset_info("synthetic_lesions").tfds_name == "synthetic_lesions/default"
    for name in sl.CONFIG_NAMES:
        assert get_dataset_info(f"synthetic_lesions/{name}").num_classes == 2
    with pytest.raises(ValueError, match="image_size"):
        sl.SyntheticLesionsConfig(name="x", image_size=8)
