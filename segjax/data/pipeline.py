"""Seeded tf.data input pipelines over TFDS segmentation datasets.

`train_batches` is an infinite, exactly resumable stream: the examples of global step `s` are the
consecutive positions `[s*G, (s+1)*G)` (G = batch_size * process_count) of an endless sequence of
per-epoch permutations (seeded by `(seed, epoch)`), process `p` takes the `p`-th slice of
`batch_size`, and each example's augmentation is seeded by `(seed, epoch, index)`. Nothing depends
on how the stream got to step `s`, so `start_step=s` skips on indices (before any decoding) and
reproduces an uninterrupted run bit for bit. Examples are read by index from the TFDS ArrayRecord
files (random access) and decoded/augmented in a parallel, order-preserving `map`.

`eval_batches` is one pass in index order, padded to a fixed shape with a validity mask; every
process yields the same number of batches.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from segjax.data import augment
from segjax.data._tf import tf
from segjax.data.balance import class_balanced_weights
from segjax.data.datasets import DatasetInfo
from segjax.data.records import (IMAGE_MEAN, IMAGE_STD, ERROR_TAG, chunked, decode_fn,
                                 denormalize, hw, num_examples, open_split, prepare,
                                 preprocess_image, resolve, split_instances)
from segjax.data.splits import data_splits, fold_indices, fold_subset, train_subset

__all__ = ["DataStreams", "IMAGE_MEAN", "IMAGE_STD", "denormalize", "epoch_order", "eval_batches",
           "from_config",
           "fold_indices", "num_examples", "prepare", "preprocess_image", "train_batches",
           "train_positions"]


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True,
                weights: np.ndarray | None = None) -> np.ndarray:
    """Positions `0..n-1` in the order epoch `epoch` visits them: a permutation from
    `(seed, epoch)`, or with `weights` (`[n]`, class-balanced sampling) `n` draws with
    replacement proportional to them."""
    if weights is not None:
        rng = np.random.default_rng([seed, epoch, 1])
        return rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_positions(n: int, *, seed: int, batch_size: int, start_step: int = 0,
                    process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                    weights: np.ndarray | None = None) -> Iterator[tuple[int, int]]:
    """Endless `(position, epoch)` pairs this process reads, from global step `start_step` on.

    Global step `s` covers stream positions `[s*G, (s+1)*G)`, G = batch_size * process_count;
    process `p` gets `[s*G + p*batch_size, s*G + (p+1)*batch_size)`.
    """
    if n <= 0:
        raise ValueError("the split has no examples")
    global_batch = batch_size * process_count
    orders = {}
    step = start_step
    while True:
        first = step * global_batch + process_index * batch_size
        for q in range(first, first + batch_size):
            epoch, r = divmod(q, n)
            if epoch not in orders:
                orders.clear()
                orders[epoch] = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle,
                                            weights=weights)
            yield int(orders[epoch][r]), epoch
        step += 1


def train_batches(dataset: str | DatasetInfo, *, split: str, batch_size: int, crop_size,
                  seed: int, data_dir: str | None = None, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1, min_scale: float = 0.5,
                  max_scale: float = 2.0, hflip: bool = True, photometric: bool = False,
                  class_balanced: bool = False, shuffle: bool = True, fold: int | None = None,
                  num_folds: int = 5, fold_seed: int = 0, leave_out: int | None = None,
                  num_threads: int | None = None, image_resize: str = "bilinear",
                  max_examples: int | None = None,
                  with_instances: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Endless augmented training batches for this process.

    Args:
      dataset: registry name (see `segjax.data.datasets`) or a `DatasetInfo`.
      split: TFDS split name, e.g. `"train_aug"`.
      batch_size: examples per batch *per process*.
      crop_size: int or `(h, w)` output size in pixels.
      seed: fixes the order (per-epoch shuffle) and every augmentation.
      start_step: the first global step to yield; resuming at `s` yields exactly what a fresh
        iterator yields from step `s` on.
      process_index, process_count: this process's slice of every global batch.
      min_scale, max_scale, hflip, photometric: augmentation (see `augment.train_augment`).
      class_balanced: oversample images containing rare classes (deterministic).
      fold, num_folds, fold_seed, leave_out: train on the complement of fold `fold` of `split`
        (k-fold, or leave-p-out with `leave_out=p`; see `fold_indices`). `fold_seed`, not
        `seed`, fixes the partition, so that runs with different seeds share it and
        `eval_batches(fold=...)` evaluates on the held-out part.
      num_threads: tf.data thread-pool size (None: TensorFlow's default).
      max_examples: train on only the first `max_examples` examples of the split (after the
        fold selection), e.g. for data-size and augmentation ablations; None: all of them.

    Yields:
      `{"image": float32 [B, h, w, 3] normalised, "label": int32 [B, h, w]}`, and with
      `with_instances` `"instance"` int32 [B, h, w] (the dataset's instance ids, 0 = none),
      augmented together with the label, and `"index"` int32 [B] (the example's index).
    """
    info = resolve(dataset)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if batch_size < 1 or start_step < 0:
        raise ValueError(f"need batch_size >= 1 and start_step >= 0, got {batch_size}, "
                         f"{start_step}")
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
    crop = hw(crop_size)
    builder, records = open_split(info, data_dir, split)
    subset = fold_subset(len(records), part=0, fold=fold, num_folds=num_folds,
                         fold_seed=fold_seed, leave_out=leave_out)
    if max_examples is not None:
        if max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {max_examples}")
        subset = subset[:max_examples]
    weights = None
    if class_balanced:
        weights = class_balanced_weights(info, data_dir, split)[subset]

    def generate():
        for position, epoch in train_positions(
                len(subset), seed=seed, batch_size=batch_size, start_step=start_step,
                process_index=process_index, process_count=process_count, shuffle=shuffle,
                weights=weights):
            index = int(subset[position])
            yield records[index], index, epoch

    decode = decode_fn(info, builder, with_instances=with_instances)

    @tf.autograph.experimental.do_not_convert  # plain TF ops; no Python control flow to convert
    def process(serialized, index, epoch):
        image, label, _ = decode(serialized, index)
        image, label = augment.train_augment(
            image, label, augment.example_seed(seed, epoch, index), crop_size=crop,
            min_scale=min_scale, max_scale=max_scale, hflip=hflip, photometric=photometric,
            ignore_label=info.ignore_label, fill=IMAGE_MEAN.tolist(), image_resize=image_resize)
        example = {"image": (image - IMAGE_MEAN) / IMAGE_STD, "label": label}
        if with_instances:  # instance tasks name the image when it has too many instances
            example["index"] = tf.cast(index, tf.int32)
        return _with_instances(example, with_instances)

    signature = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64),
                 tf.TensorSpec([], tf.int64))
    return chunked(generate(), process, signature, batch_size, drop_remainder=True,
                    num_threads=num_threads, context=f"{info.name} split {split!r}")


def eval_batches(dataset: str | DatasetInfo, *, split: str, batch_size: int, pad_to,
                 data_dir: str | None = None, process_index: int = 0, process_count: int = 1,
                 fold: int | None = None, num_folds: int = 5, fold_seed: int = 0,
                 leave_out: int | None = None,
                 num_threads: int | None = None,
                 with_instances: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `split` in index order, in fixed-shape batches.

    Global batch `k` holds positions `[k*G, (k+1)*G)` (G = batch_size * process_count), process
    `p` its `p`-th slice; positions past the end are filler examples. Every process yields
    `ceil(n / G)` batches.

    Args:
      pad_to: int or `(H, W)`: images are padded bottom/right to this size; a larger image
        raises ValueError.
      fold, num_folds, fold_seed, leave_out: evaluate only fold `fold` of `split` (see
        `fold_indices`).

    Yields:
      `{"image": float32 [B, H, W, 3] normalised (0 in padding), "label": int32 [B, H, W]
      (ignore label in padding and fillers), "valid": bool [B], "height", "width": int32 [B]
      original size (0 for fillers), "index": int32 [B] example index (-1 for fillers)}`, and
      with `with_instances` `"instance"` int32 [B, H, W] (0 in padding and fillers).
    """
    info = resolve(dataset)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pad_h, pad_w = hw(pad_to)
    builder, records = open_split(info, data_dir, split)
    subset = fold_subset(len(records), part=1, fold=fold, num_folds=num_folds,
                         fold_seed=fold_seed, leave_out=leave_out)
    n, global_batch = len(subset), batch_size * process_count
    num_batches = -(-n // global_batch)
    mine = [subset[q] for k in range(num_batches)
            for q in range(k * global_batch + process_index * batch_size,
                           k * global_batch + (process_index + 1) * batch_size) if q < n]
    decode = decode_fn(info, builder, with_instances=with_instances)

    @tf.autograph.experimental.do_not_convert
    def process(serialized, index):
        image, label, name = decode(serialized, index)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        fits = tf.debugging.Assert(tf.logical_and(height <= pad_h, width <= pad_w), [
            f"{ERROR_TAG} image", name, "of size", tf.shape(image)[:2],
            f"is larger than pad_to=({pad_h}, {pad_w}); raise pad_to (VOC needs 500x500)"])
        with tf.control_dependencies([fits]):
            image, label = augment.pad_to_size(
                tf.cast(image, tf.float32), label, pad_h, pad_w, fill=IMAGE_MEAN.tolist(),
                ignore_label=info.ignore_label)
        return _with_instances(
            {"image": tf.ensure_shape((image - IMAGE_MEAN) / IMAGE_STD, [pad_h, pad_w, 3]),
             "label": tf.ensure_shape(label, [pad_h, pad_w]), "valid": True,
             "height": height, "width": width, "index": tf.cast(index, tf.int32)},
            with_instances)

    batches = chunked(((records[int(i)], int(i)) for i in mine), process,
                       (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)), batch_size,
                       drop_remainder=False, num_threads=num_threads,
                       context=f"{info.name} split {split!r}")
    return (_fill_batch(next(batches, None), batch_size, pad_h, pad_w, info.ignore_label,
                        with_instances) for _ in range(num_batches))


def _with_instances(example: dict, with_instances: bool) -> dict:
    """Splits a combined label (`records.decode_fn(with_instances=True)`) into label/instance."""
    if with_instances:
        example["label"], example["instance"] = split_instances(example["label"])
    return example


def _fill_batch(batch, batch_size: int, pad_h: int, pad_w: int, ignore: int,
                with_instances: bool = False) -> dict:
    """Pads a (possibly missing or short) eval batch to `batch_size` with filler examples."""
    filler = {"image": np.zeros((pad_h, pad_w, 3), np.float32),
              "label": np.full((pad_h, pad_w), ignore, np.int32), "valid": False,
              "height": 0, "width": 0, "index": -1}
    if with_instances:
        filler["instance"] = np.zeros((pad_h, pad_w), np.int32)
    have = 0 if batch is None else len(batch["valid"])
    if have == batch_size:
        return batch
    out = {}
    for key, value in filler.items():
        fill = np.broadcast_to(np.asarray(value), (batch_size - have,) + np.shape(value))
        parts = [fill] if batch is None else [batch[key], fill.astype(batch[key].dtype)]
        out[key] = np.concatenate(parts).astype(
            {"image": np.float32, "label": np.int32, "valid": bool}.get(key, np.int32))
    return out


class DataStreams:
    """The run's data, from `config.dataset` alone (`from_config`).

    Attributes:
      info: the dataset's `DatasetInfo`.
      data_dir: the TFDS data dir (None = TFDS's default).
      num_train_examples: examples trained on (after the fold and `num_train_examples`).
      eval_split, eval_label: the split evaluated and its label in metrics.jsonl.
    """

    def __init__(self, ds, *, process_index: int = 0, process_count: int = 1):
        self._ds = ds
        self.info = resolve(ds.name)
        self.data_dir = ds.data_dir or None
        self._process = {"process_index": process_index, "process_count": process_count}
        self._train_fold, self.eval_split, self._eval_fold, self.eval_label = data_splits(ds)
        # Fails at once, with what to download, when the dataset is not prepared (and
        # generates the synthetic one); before any model is built or compiled.
        n = num_examples(self.info, ds.train_split, self.data_dir)
        self.num_train_examples = len(train_subset(ds, n))
        num_examples(self.info, self.eval_split, self.data_dir)

    def train(self, *, batch_size: int, seed: int, start_step: int = 0,
              with_instances: bool = False):
        """`train_batches` of this process (`batch_size` per process) from `start_step` on."""
        ds = self._ds
        return train_batches(
            self.info, split=ds.train_split, batch_size=batch_size, crop_size=ds.crop_size,
            seed=seed, data_dir=self.data_dir, start_step=start_step, min_scale=ds.min_scale,
            max_scale=ds.max_scale, hflip=ds.hflip, photometric=ds.photometric,
            class_balanced=ds.class_balanced, max_examples=ds.num_train_examples,
            with_instances=with_instances, **self._process, **self._train_fold)

    def eval(self, *, batch_size: int, pad_to, with_instances: bool = False):
        """`eval_batches` of this process over the eval split (or held-out fold)."""
        return eval_batches(self.info, split=self.eval_split, batch_size=batch_size,
                            pad_to=pad_to, data_dir=self.data_dir, with_instances=with_instances,
                            **self._process, **self._eval_fold)


def from_config(ds, *, process_index: int = 0, process_count: int = 1) -> DataStreams:
    """The one data entry point of the trainer: `DataStreams` of `config.dataset`."""
    return DataStreams(ds, process_index=process_index, process_count=process_count)
