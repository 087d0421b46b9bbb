"""Class-balanced sampling: weights that oversample images containing rare classes.

The weight of image i is `max(1 / sqrt(f_c))` over the classes c present in it, where `f_c` is
the fraction of the split's images that contain c (a square-root repeat factor, as in LVIS's
repeat-factor sampling with threshold 1): an image holding a class seen in 1% of images is drawn
10x as often as one holding only ubiquitous classes. Deterministic: it depends only on the masks.
"""
from __future__ import annotations

import os

import numpy as np

from segjax.data._tf import tf
from segjax.data.datasets import DatasetInfo


def class_presence(info: DatasetInfo, data_dir, split: str) -> np.ndarray:
    """bool `[n, K]`: whether class k occurs in example i of `split` (ignore pixels skipped).

    Decodes every mask once; the result is cached as a `.npy` beside the TFDS files when that
    directory is writable.
    """
    from segjax.data.pipeline import _checked, _decode_fn, _open
    builder, records = _open(info, data_dir, split)
    n, k = len(records), info.num_classes
    cache = os.path.join(os.fspath(builder.data_dir), f"segjax_class_presence_{split}_{k}.npy")
    if os.path.isfile(cache):
        presence = np.load(cache)
        if presence.shape == (n, k):
            return presence
    decode = _decode_fn(info, builder)

    @tf.autograph.experimental.do_not_convert
    def present(serialized, index):
        _, label, _ = decode(serialized, index)
        valid = tf.boolean_mask(label, label != info.ignore_label)
        return tf.math.bincount(valid, minlength=k, maxlength=k) > 0

    ds = tf.data.Dataset.from_generator(
        lambda: ((records[i], i) for i in range(n)),
        output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)))
    ds = ds.map(present, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256)
    presence = np.concatenate(list(_checked(ds, f"{info.name} split {split!r}")) or
                              [np.zeros((0, k), bool)])
    try:
        np.save(cache, presence)
    except OSError:  # read-only data dir: recompute next time
        pass
    return presence


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
