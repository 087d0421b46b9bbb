"""Class-balanced sampling: presence from the masks, weights by hand, rare classes oversampled."""
import dataclasses

import numpy as np
import pytest

from segjax.data import get_dataset_info, train_batches
from segjax.data.balance import (balanced_weights, class_pixel_counts, class_presence,
                                 loss_class_weights)
from segjax.data.builders.synthetic_shapes import SyntheticShapesConfig, generate
from segjax.data.pipeline import train_positions
from segjax.data.records import _builder


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    import tensorflow_datasets as tfds

    from segjax.data import prepare
    tfds.disable_progress_bar()
    config = SyntheticShapesConfig(name="imb40", image_size=40, num_train=40,
                                   num_validation=4, factors=("imbalance",), max_objects=2)
    info = dataclasses.replace(get_dataset_info("synthetic_shapes/imbalance"),
                               builder_kwargs={"config": config})
    data_dir = str(tmp_path_factory.mktemp("imb"))
    prepare(info, data_dir)
    return info, data_dir, config


def test_weights_by_hand():
    presence = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 1]], bool)
    # f = (1, 1/4, 1/4): images with class 1 or 2 weigh 1/sqrt(1/4) = 2, the rest 1.
    np.testing.assert_allclose(balanced_weights(presence), [1, 2, 1, 2])
    np.testing.assert_allclose(balanced_weights(np.zeros((2, 3), bool)), [1, 1])


def test_presence_matches_generated_masks(imbalanced):
    info, data_dir, config = imbalanced
    presence = class_presence(info, data_dir, "train")
    source = _builder(info, data_dir).as_data_source("train")
    for i in range(len(source)):
        split, number = source[i]["image_id"].decode().split("_")
        label = generate(config, split, int(number))["label"]
        want = np.bincount(label.ravel(), minlength=6)[:6] > 0
        np.testing.assert_array_equal(presence[i], want)
    np.testing.assert_array_equal(class_presence(info, data_dir, "train"), presence)  # cached


def test_pixel_counts_match_generated_masks(imbalanced):
    info, data_dir, config = imbalanced
    counts = class_pixel_counts(info, data_dir, "train")
    source = _builder(info, data_dir).as_data_source("train")
    assert counts.shape == (len(source), 6) and counts.dtype == np.int64
    for i in range(len(source)):
        split, number = source[i]["image_id"].decode().split("_")
        label = generate(config, split, int(number))["label"]
        np.testing.assert_array_equal(counts[i], np.bincount(label.ravel(), minlength=6)[:6])


def test_loss_class_weights_by_hand():
    # Two images of 10 pixels: image 0 has classes 0 (8 px) and 1 (2 px); image 1 only class 0.
    counts = np.array([[8, 2, 0], [10, 0, 0]])
    # median frequency: freq0 = 18/20, freq1 = 2/10 (only image 0 holds class 1);
    # median(0.9, 0.2) = 0.55 -> w = (0.55/0.9, 0.55/0.2); class 2 never occurs -> 1.
    np.testing.assert_allclose(loss_class_weights(counts, "median_frequency"),
                               [0.55 / 0.9, 0.55 / 0.2, 1.0])
    # inverse frequency: p = (0.9, 0.1), K' = 2 -> w = 1/(2p); the mean pixel weight is 1.
    w = loss_class_weights(counts, "inverse_frequency")
    np.testing.assert_allclose(w, [1 / 1.8, 1 / 0.2, 1.0])
    np.testing.assert_allclose((counts.sum(0) * w).sum() / counts.sum(), 1.0)
    with pytest.raises(ValueError, match="not one of"):
        loss_class_weights(counts, "sqrt")
    with pytest.raises(ValueError, match="no labelled pixels"):
        loss_class_weights(np.zeros((2, 3)), "inverse_frequency")


def test_rare_classes_are_oversampled(imbalanced):
    info, data_dir, _ = imbalanced
    presence = class_presence(info, data_dir, "train")
    weights = balanced_weights(presence)
    stream = train_positions(len(presence), seed=0, batch_size=8, weights=weights)
    drawn = np.array([next(stream)[0] for _ in range(4000)])
    rare = presence[:, 3:].any(axis=1)  # triangle, star, cross: 16% of objects together
    assert rare.mean() > 0 and presence[drawn][:, 3:].any(axis=1).mean() > 1.3 * rare.mean()


def test_class_balanced_batches_resume_exactly(imbalanced):
    info, data_dir, _ = imbalanced
    args = dict(split="train", batch_size=4, crop_size=32, seed=1, data_dir=data_dir,
                class_balanced=True)
    full = train_batches(info, **args)
    full = [next(full) for _ in range(6)]
    resumed = train_batches(info, start_step=4, **args)
    for a in full[4:]:
        b = next(resumed)
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["image"], b["image"])
