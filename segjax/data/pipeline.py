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

import fcntl
import itertools
import math
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import augment
from segjax.data._tf import tf
from segjax.data.datasets import DatasetInfo, get_dataset_info

# ImageNet statistics on the 0..255 scale (what torchvision-pretrained backbones expect).
IMAGE_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
IMAGE_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0

_ERROR_TAG = "segjax-data:"


def preprocess_image(image: np.ndarray) -> np.ndarray:
    """Normalises a uint8 `[H, W, 3]` (or `[N, H, W, 3]`) RGB image to float32 (ImageNet
    mean/std on 0..255): exactly what the pipelines feed the model."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3] or [N, H, W, 3], got {image.dtype} "
                         f"{image.shape}")
    return ((image.astype(np.float32) - IMAGE_MEAN) / IMAGE_STD).astype(np.float32)


def resolve(dataset: str | DatasetInfo) -> DatasetInfo:
    """A registry name or a `DatasetInfo` -> `DatasetInfo`."""
    return dataset if isinstance(dataset, DatasetInfo) else get_dataset_info(dataset)


def _builder(info: DatasetInfo, data_dir):
    name = info.tfds_name
    if "config" in info.builder_kwargs:  # a config object replaces the `/config` in the name
        name = name.split("/")[0]
    try:  # ArrayRecord files give random access by index
        return tfds.builder(name, data_dir=data_dir, file_format="array_record",
                            **info.builder_kwargs)
    except ValueError as e:
        if "File format is already set" not in str(e):
            raise
        # Prepared earlier as TFRecord (e.g. by `tfds.load`): read it as it is.
        return tfds.builder(name, data_dir=data_dir, **info.builder_kwargs)


def prepare(dataset: str | DatasetInfo, data_dir: str | None = None, *,
            manual_dir: str | None = None, download: bool = False):
    """Builds the TFDS dataset under `data_dir` if it is not there yet; returns the builder.

    Synthetic datasets are generated; VOC is built from `manual_dir` (default
    `<data_dir>/downloads/manual`) or, with `download=True`, downloaded. Missing manual data
    fails at once with instructions (no 200 s of download retries).
    """
    info = resolve(dataset)
    builder = _builder(info, data_dir)
    if builder.is_prepared():
        return builder
    check = getattr(builder, "check_source_data", None)
    if check is not None:  # our VOC builder: fail fast when the raw files are missing
        check(manual_dir or os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual"),
              download=download)
    # Processes sharing a data dir (multi-process training) build one at a time; the later ones
    # find the data prepared and just open it.
    root = os.fspath(builder.data_dir_root)
    os.makedirs(root, exist_ok=True)
    lock_name = ".segjax-prepare-" + info.tfds_name.replace("/", "-") + ".lock"
    with open(os.path.join(root, lock_name), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            builder = _builder(info, data_dir)
            if not builder.is_prepared():
                config = tfds.download.DownloadConfig(manual_dir=manual_dir)
                builder.download_and_prepare(download_config=config, file_format="array_record")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return builder


class _Records:
    """Random access to the serialized examples of one split, `records[i] -> bytes`."""

    def __init__(self, builder, split: str):
        if split not in builder.info.splits:
            raise ValueError(f"split {split!r} not in {builder.info.full_name}; available: "
                             f"{sorted(builder.info.splits)}")
        try:
            self._source = builder.as_data_source(
                split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
            self._records = None
        except NotImplementedError:  # prepared earlier as TFRecord: hold the bytes in memory
            instructions = builder.info.splits[split].file_instructions
            self._records = [bytes(r) for fi in instructions for r in tf.data.TFRecordDataset(
                fi.filename).skip(fi.skip).take(fi.take).as_numpy_iterator()]
            self._source = None

    def __len__(self) -> int:
        return len(self._records if self._source is None else self._source)

    def __getitem__(self, index: int) -> bytes:
        if self._source is None:
            return self._records[index]
        return self._source[int(index)]


_OPENED: dict = {}


def _open(info: DatasetInfo, data_dir, split: str) -> tuple:
    """(builder, records) of a split, prepared on first use and cached per process."""
    key = (info.tfds_name, repr(sorted(info.builder_kwargs.items())), str(data_dir), split)
    if key not in _OPENED:
        builder = prepare(info, data_dir)
        _OPENED[key] = builder, _Records(builder, split)
    return _OPENED[key]


def num_examples(dataset: str | DatasetInfo, split: str, data_dir: str | None = None) -> int:
    """Number of examples in `split` (prepares the dataset if needed)."""
    return len(_open(resolve(dataset), data_dir, split)[1])


def fold_indices(n: int, *, fold: int, num_folds: int, seed: int,
                 leave_out: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic cross-validation split of `range(n)`: sorted `(train, val)` indices.

    k-fold (`leave_out=None`): a permutation of `range(n)` drawn from `seed` is dealt into
    `num_folds` parts; fold `fold` holds out part `fold`. The parts are disjoint and cover
    `range(n)`.

    Leave-p-out (`leave_out=p`, `num_folds` unused): fold `fold` in `[0, C(n, p))` holds out one
    p-subset. Folds `0 .. C(n, p) - 1` enumerate every p-subset exactly once, in an order
    scrambled by `seed` (a seeded affine bijection of the lexicographic ranks), so the first few
    folds are spread over the data rather than all sharing example 0. `leave_out=1` is
    leave-one-out.

    Example: `fold_indices(5, fold=0, num_folds=0, seed=0, leave_out=2)[1]` is one pair of
    `0..4`; the 10 folds of `leave_out=2` are the 10 pairs.
    """
    if leave_out is not None:
        return _leave_p_out(n, fold=fold, p=leave_out, seed=seed)
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, num_folds={num_folds}), got {fold}")
    perm = np.random.default_rng([seed, 0x6F6C64]).permutation(n)
    val = np.sort(perm[fold::num_folds])
    return np.setdiff1d(np.arange(n), val), val


def _leave_p_out(n: int, *, fold: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 1 <= p < n:
        raise ValueError(f"leave-p-out needs 1 <= p < n (some examples left to train on); got "
                         f"p={p} with n={n} examples")
    total = math.comb(n, p)  # Python ints throughout: a * fold below can exceed int64
    if not 0 <= fold < total:
        raise ValueError(f"leave-{p}-out on {n} examples has C({n}, {p}) = {total} folds; fold "
                         f"must be in [0, {total}), got {fold}")
    rng = np.random.default_rng([seed, 0x6C706F])
    # rank = (a * fold + b) mod total with gcd(a, total) = 1 is a bijection of [0, total).
    a = 1 + int(rng.integers(0, 2**62)) % total
    while math.gcd(a, total) != 1:
        a = a % total + 1
    rank = (a * fold + int(rng.integers(0, 2**62))) % total
    val = np.asarray(_unrank_combination(rank, n, p), dtype=np.int64)
    return np.setdiff1d(np.arange(n), val), val


def _unrank_combination(rank: int, n: int, p: int) -> list[int]:
    """The `rank`-th p-subset of `range(n)` in lexicographic order (sorted)."""
    out, start = [], 0
    for left in range(p, 0, -1):
        for first in range(start, n):
            count = math.comb(n - first - 1, left - 1)  # subsets whose next element is `first`
            if rank < count:
                out.append(first)
                start = first + 1
                break
            rank -= count
    return out


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


def _decode_fn(info: DatasetInfo, builder):
    """serialized -> (image uint8 [H, W, 3], label int32 [H, W], example id string)."""
    features = builder.info.features
    keep = {info.image_key, info.label_key} | ({info.id_key} if info.id_key else set())
    decoders = {k: tfds.decode.SkipDecoding() for k in features.keys() if k not in keep}
    table = tf.constant(info.lookup_table())
    num_classes, ignore = info.num_classes, info.ignore_label

    def decode(serialized, index):
        ex = features.deserialize_example(serialized, decoders=decoders or None)
        image = ex[info.image_key]
        raw = ex[info.label_key]
        raw = raw[..., info.label_channel] if raw.shape.rank == 3 else raw
        label = tf.gather(table, tf.cast(raw, tf.int32))
        name = ex[info.id_key] if info.id_key else tf.strings.as_string(index)
        same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)))
        checks = [
            tf.debugging.Assert(tf.equal(tf.shape(image)[2], 3), [
                f"{_ERROR_TAG} image is not RGB: example", name, "shape", tf.shape(image)]),
            tf.debugging.Assert(same, [
                f"{_ERROR_TAG} mask size differs from image size: example", name, "image",
                tf.shape(image), "mask", tf.shape(label)]),
            tf.debugging.Assert(tf.reduce_all(label >= 0), [
                f"{_ERROR_TAG} mask values outside [0, {num_classes}) and ignore {ignore} "
                f"(after the dataset's label map): example", name, "raw values",
                tf.unique(tf.boolean_mask(raw, label < 0))[0][:8]]),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(image), tf.identity(label), name

    return decode


def _checked(dataset: tf.data.Dataset, context: str) -> Iterator:
    """Iterates `dataset` as numpy, turning TensorFlow errors into a ValueError with context."""
    iterator = iter(dataset.as_numpy_iterator())
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            message = e.message
            if _ERROR_TAG in message:  # one of our assertions: keep just its text and values
                message = message[message.index(_ERROR_TAG) + len(_ERROR_TAG):]
                message = message.split("\n")[0].replace("] [", " ").replace("\\'", "'")
                message = message.rstrip("]").strip()
            raise ValueError(f"{context}: {message.strip()}") from None
        yield item


# Batches per tf.data pipeline built by `_chunked`.
_CHUNK_BATCHES = 8


def _chunked(items: Iterator[tuple], process, signature: tuple, batch_size: int, *,
             drop_remainder: bool, num_threads: int | None, context: str) -> Iterator:
    """`items` (Python tuples, e.g. (record bytes, index, epoch)) mapped by `process` and batched.

    Records are read in Python (TFDS array_record sources are Python objects) a chunk of
    `_CHUNK_BATCHES` batches at a time, and each chunk runs through a tf.data pipeline with no
    Python in it (`from_tensor_slices -> map -> batch`). With `Dataset.from_generator` instead,
    dropping an iterator while a fetch was in flight (at interpreter exit, or when a consumer
    stops early) deadlocked: the iterator's destructor waits, holding the GIL, for map workers
    that are waiting for the GIL inside the generator.
    """
    chunk = batch_size * _CHUNK_BATCHES
    while True:
        rows = list(itertools.islice(items, chunk))
        if not rows:
            return
        columns = tuple(np.array([r[k] for r in rows], dtype=object if spec.dtype == tf.string
                                 else spec.dtype.as_numpy_dtype)
                        for k, spec in enumerate(signature))
        ds = tf.data.Dataset.from_tensor_slices(columns)
        ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(2)
        yield from _checked(ds.with_options(_options(num_threads)), context)
        if len(rows) < chunk:
            return


def _options(num_threads: int | None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if num_threads:  # e.g. benchmarks: every op of the pipeline on `num_threads` threads
        options.threading.private_threadpool_size = num_threads
        options.threading.max_intra_op_parallelism = 1
    return options


def _hw(size) -> tuple[int, int]:
    return (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))


def fold_subset(n: int, *, part: int, fold: int | None = None, num_folds: int = 5,
                fold_seed: int = 0, leave_out: int | None = None) -> np.ndarray:
    """Positions of `range(n)` in cross-validation part `part` (0: train, 1: held out) of fold
    `fold` (see `fold_indices`); every position when `fold` is None. Takes the pipelines' fold
    keywords, e.g. the kwargs that `segjax.train.loop.data_splits` builds from the config."""
    if fold is None:
        return np.arange(n)
    return fold_indices(n, fold=fold, num_folds=num_folds, seed=fold_seed,
                        leave_out=leave_out)[part]


def train_batches(dataset: str | DatasetInfo, *, split: str, batch_size: int, crop_size,
                  seed: int, data_dir: str | None = None, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1, min_scale: float = 0.5,
                  max_scale: float = 2.0, hflip: bool = True, photometric: bool = False,
                  class_balanced: bool = False, shuffle: bool = True, fold: int | None = None,
                  num_folds: int = 5, fold_seed: int = 0, leave_out: int | None = None,
                  num_threads: int | None = None, image_resize: str = "bilinear",
                  max_examples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
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
      `{"image": float32 [B, h, w, 3] normalised, "label": int32 [B, h, w]}`.
    """
    info = resolve(dataset)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if batch_size < 1 or start_step < 0:
        raise ValueError(f"need batch_size >= 1 and start_step >= 0, got {batch_size}, "
                         f"{start_step}")
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
    crop = _hw(crop_size)
    builder, records = _open(info, data_dir, split)
    subset = fold_subset(len(records), part=0, fold=fold, num_folds=num_folds,
                         fold_seed=fold_seed, leave_out=leave_out)
    if max_examples is not None:
        if max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {max_examples}")
        subset = subset[:max_examples]
    weights = None
    if class_balanced:
        from segjax.data.balance import class_balanced_weights
        weights = class_balanced_weights(info, data_dir, split)[subset]

    def generate():
        for position, epoch in train_positions(
                len(subset), seed=seed, batch_size=batch_size, start_step=start_step,
                process_index=process_index, process_count=process_count, shuffle=shuffle,
                weights=weights):
            index = int(subset[position])
            yield records[index], index, epoch

    decode = _decode_fn(info, builder)

    @tf.autograph.experimental.do_not_convert  # plain TF ops; no Python control flow to convert
    def process(serialized, index, epoch):
        image, label, _ = decode(serialized, index)
        image, label = augment.train_augment(
            image, label, augment.example_seed(seed, epoch, index), crop_size=crop,
            min_scale=min_scale, max_scale=max_scale, hflip=hflip, photometric=photometric,
            ignore_label=info.ignore_label, fill=IMAGE_MEAN.tolist(), image_resize=image_resize)
        return {"image": (image - IMAGE_MEAN) / IMAGE_STD, "label": label}

    signature = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64),
                 tf.TensorSpec([], tf.int64))
    return _chunked(generate(), process, signature, batch_size, drop_remainder=True,
                    num_threads=num_threads, context=f"{info.name} split {split!r}")


def eval_batches(dataset: str | DatasetInfo, *, split: str, batch_size: int, pad_to,
                 data_dir: str | None = None, process_index: int = 0, process_count: int = 1,
                 fold: int | None = None, num_folds: int = 5, fold_seed: int = 0,
                 leave_out: int | None = None,
                 num_threads: int | None = None) -> Iterator[dict[str, np.ndarray]]:
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
      original size (0 for fillers), "index": int32 [B] example index (-1 for fillers)}`.
    """
    info = resolve(dataset)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pad_h, pad_w = _hw(pad_to)
    builder, records = _open(info, data_dir, split)
    subset = fold_subset(len(records), part=1, fold=fold, num_folds=num_folds,
                         fold_seed=fold_seed, leave_out=leave_out)
    n, global_batch = len(subset), batch_size * process_count
    num_batches = -(-n // global_batch)
    mine = [subset[q] for k in range(num_batches)
            for q in range(k * global_batch + process_index * batch_size,
                           k * global_batch + (process_index + 1) * batch_size) if q < n]
    decode = _decode_fn(info, builder)

    @tf.autograph.experimental.do_not_convert
    def process(serialized, index):
        image, label, name = decode(serialized, index)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        fits = tf.debugging.Assert(tf.logical_and(height <= pad_h, width <= pad_w), [
            f"{_ERROR_TAG} image", name, "of size", tf.shape(image)[:2],
            f"is larger than pad_to=({pad_h}, {pad_w}); raise pad_to (VOC needs 500x500)"])
        with tf.control_dependencies([fits]):
            image, label = augment.pad_to_size(
                tf.cast(image, tf.float32), label, pad_h, pad_w, fill=IMAGE_MEAN.tolist(),
                ignore_label=info.ignore_label)
        return {"image": tf.ensure_shape((image - IMAGE_MEAN) / IMAGE_STD, [pad_h, pad_w, 3]),
                "label": tf.ensure_shape(label, [pad_h, pad_w]), "valid": True,
                "height": height, "width": width, "index": tf.cast(index, tf.int32)}

    batches = _chunked(((records[int(i)], int(i)) for i in mine), process,
                       (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)), batch_size,
                       drop_remainder=False, num_threads=num_threads,
                       context=f"{info.name} split {split!r}")
    return (_fill_batch(next(batches, None), batch_size, pad_h, pad_w, info.ignore_label)
            for _ in range(num_batches))


def _fill_batch(batch, batch_size: int, pad_h: int, pad_w: int, ignore: int) -> dict:
    """Pads a (possibly missing or short) eval batch to `batch_size` with filler examples."""
    filler = {"image": np.zeros((pad_h, pad_w, 3), np.float32),
              "label": np.full((pad_h, pad_w), ignore, np.int32), "valid": False,
              "height": 0, "width": 0, "index": -1}
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
