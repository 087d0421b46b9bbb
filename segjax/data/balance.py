"""Class balance: sampling weights that oversample images of rare classes, and loss weights.

The weight of image i is `max(1 / sqrt(f_c))` over the classes c present in it, where `f_c` is
the fraction of the split's images that contain c (a square-root repeat factor, as in LVIS's
repeat-factor sampling with threshold 1): an image holding a class seen in 1% of images is drawn
10x as often as one holding only ubiquitous classes. Deterministic: it depends only on the masks.
`loss_class_weights` turns the same per-image pixel counts into per-class loss weights.
"""
from __future__ import annotations

import os

import numpy as np

from segjax.data._tf import tf
from segjax.data.datasets import DatasetInfo
from segjax.data.records import checked, decode_fn, open_split


def class_pixel_counts(info: DatasetInfo, data_dir, split: str) -> np.ndarray:
    """int64 `[n, K]`: pixels of class k in example i of `split` (ignore pixels skipped).

    Decodes every mask once; the result is cached as a `.npy` beside the TFDS files when that
    directory is writable.
    """
    builder, records = open_split(info, data_dir, split)
    n, k = len(records), info.num_classes
    cache = os.path.join(os.fspath(builder.data_dir), f"segjax_class_pixels_{split}_{k}.npy")
    if os.path.isfile(cache):
        counts = np.load(cache)
        if counts.shape == (n, k):
            return counts
    decode = decode_fn(info, builder)

    @tf.autograph.experimental.do_not_convert
    def count(serialized, index):
        _, label, _ = decode(serialized, index)
        valid = tf.boolean_mask(label, label != info.ignore_label)
        return tf.math.bincount(valid, minlength=k, maxlength=k, dtype=tf.int64)

    ds = tf.data.Dataset.from_generator(
        lambda: ((records[i], i) for i in range(n)),
        output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)))
    ds = ds.map(count, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256)
    counts = np.concatenate(list(checked(ds, f"{info.name} split {split!r}")) or
                            [np.zeros((0, k), np.int64)]).astype(np.int64)
    try:
        np.save(cache, counts)
    except OSError:  # read-only data dir: recompute next time
        pass
    return counts


def class_presence(info: DatasetInfo, data_dir, split: str) -> np.ndarray:
    """bool `[n, K]`: whether class k occurs in example i of `split` (ignore pixels skipped)."""
    return class_pixel_counts(info, data_dir, split) > 0


LOSS_WEIGHTINGS = ("median_frequency", "inverse_frequency")


def loss_class_weights(counts: np.ndarray, method: str) -> np.ndarray:
    """float64 `[K]` loss weights (`class_weights` of the losses) from `[n, K]` pixel counts.

    * "median_frequency" (Eigen & Fergus 2015, used by SegNet): `freq_c` = pixels of c / pixels
      of the images that contain c; `w_c = median(freq) / freq_c`.
    * "inverse_frequency": `w_c = 1 / (K' * p_c)` with `p_c` the fraction of all pixels that are
      c and K' the number of classes present, so that the average pixel weight is 1.

    Classes absent from every image get weight 1 (they never occur in the loss).
    """
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be [n, K], got shape {counts.shape}")
    per_class = counts.sum(axis=0)
    present = per_class > 0
    if not present.any():
        raise ValueError("no labelled pixels: cannot compute class weights")
    weights = np.ones(counts.shape[1])
    if method == "median_frequency":
        image_pixels = counts.sum(axis=1, keepdims=True)
        denom = np.where(counts > 0, image_pixels, 0.0).sum(axis=0)
        freq = per_class[present] / denom[present]
        weights[present] = np.median(freq) / freq
    elif method == "inverse_frequency":
        p = per_class[present] / per_class.sum()
        weights[present] = 1.0 / (present.sum() * p)
    else:
        raise ValueError(f"class weighting {method!r} is not one of {LOSS_WEIGHTINGS}")
    return weights


def balanced_weights(presence: np.ndarray) -> np.ndarray:
    """float64 `[n]` sampling weights from a `[n, K]` presence matrix (see module doc)."""
    presence = np.asarray(presence, bool)
    freq = presence.mean(axis=0)
    factor = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
    weights = (presence * factor).max(axis=1, initial=0.0)
    return np.maximum(weights, 1.0)


def class_balanced_weights(info: DatasetInfo, data_dir, split: str) -> np.ndarray:
    """Sampling weights `[n]` of the examples of `split` (see module doc)."""
    return balanced_weights(class_presence(info, data_dir, split))
