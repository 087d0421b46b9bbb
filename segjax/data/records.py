"""Record access and validation for TFDS segmentation datasets.

`prepare` builds a dataset once (generating the synthetic one, building VOC from its manual
directory, failing at once with instructions when raw data is missing); `open_split` gives random
access to a split's serialized examples (`records[i] -> bytes`, ArrayRecord, or TFRecord held in
memory); `decode_fn` decodes one example into (image, label, id) and checks it (RGB, mask size,
labels inside the classes after the dataset's label map); `chunked` runs Python-read records
through a deterministic tf.data map in chunks; `checked` turns the checks' TensorFlow errors into
a ValueError naming the example. The two streams over these are in `segjax.data.pipeline`.

Inside `tfds.testing.mock_data` (TFDS's way to test a pipeline without data) nothing is
prepared, written or cached: `open_split` serves the mock's random examples for any split name
when the mock knows no splits (no metadata files), and checks the name when it does.
"""
from __future__ import annotations

import fcntl
import importlib
import itertools
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from segjax.data._tf import tf
from segjax.data.datasets import DatasetInfo, get_dataset_info

# ImageNet statistics on the 0..255 scale (what torchvision-pretrained backbones expect).
IMAGE_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
IMAGE_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0

ERROR_TAG = "segjax-data:"


def preprocess_image(image: np.ndarray) -> np.ndarray:
    """Normalises a uint8 `[H, W, 3]` (or `[N, H, W, 3]`) RGB image to float32 (ImageNet
    mean/std on 0..255): exactly what the pipelines feed the model."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3] or [N, H, W, 3], got {image.dtype} "
                         f"{image.shape}")
    return ((image.astype(np.float32) - IMAGE_MEAN) / IMAGE_STD).astype(np.float32)


# What the first use of a dataset does, for the console (preparing can take a while).
_PREPARE_NOTE = {"synthetic_shapes": "generating the images, about 30 s on 2 cores",
                 "synthetic_lesions": "generating the images, about 40 s on 2 cores",
                 "ph2": "decoding and checking every image and mask, about a minute",
                 "synthetic_volumes": "generating the volumes, about 10 s on 2 cores",
                 "msd": "reading and checking every NIfTI volume, minutes",
                 "voc2012_segmentation": "decoding and checking every image and mask, minutes",
                 "pascal_context": "decoding and checking every image and label map, minutes",
                 "coco_instances": "decoding and checking every image and annotation, "
                                   "about 30-45 min for COCO train2017"}


def denormalize(image: np.ndarray) -> np.ndarray:
    """uint8 RGB from a pipeline image (the inverse of `preprocess_image`, rounded)."""
    return np.clip(np.rint(np.asarray(image) * IMAGE_STD + IMAGE_MEAN), 0, 255).astype(np.uint8)


def resolve(dataset: str | DatasetInfo) -> DatasetInfo:
    """A registry name or a `DatasetInfo` -> `DatasetInfo`."""
    return dataset if isinstance(dataset, DatasetInfo) else get_dataset_info(dataset)


def _builder(info: DatasetInfo, data_dir):
    if info.builder_module:
        importlib.import_module(info.builder_module)  # registers the builder with TFDS
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
    fails at once with instructions (no 200 s of download retries). Under
    `tfds.testing.mock_data` the builder is returned as it is (nothing to build).
    """
    info = resolve(dataset)
    builder = _builder(info, data_dir)
    if builder.is_prepared() or _tfds_mocked():
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
                print(f"preparing {info.name} under {root} (first use only: "
                      f"{_PREPARE_NOTE.get(info.tfds_name.split('/')[0], 'building the TFDS files')}"
                      ")...", flush=True)
                config = tfds.download.DownloadConfig(manual_dir=manual_dir)
                builder.download_and_prepare(download_config=config, file_format="array_record")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return builder


def _tfds_mocked() -> bool:
    """True inside `tfds.testing.mock_data`, which makes `download_and_prepare` a no-op and
    serves random examples from `as_data_source`: nothing is built, written or read."""
    return (getattr(tfds.core.DatasetBuilder.download_and_prepare, "__module__", None)
            == "tensorflow_datasets.testing.mocking")


class _Records:
    """Random access to the serialized examples of one split, `records[i] -> bytes`."""

    def __init__(self, builder, split: str):
        splits = builder.info.splits
        # Under `tfds.testing.mock_data` without metadata files no split is known, and any
        # split name is served.
        if split not in splits and (splits or not _tfds_mocked()):
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


def open_split(info: DatasetInfo, data_dir, split: str) -> tuple:
    """(builder, records) of a split, prepared on first use and cached per process."""
    if _tfds_mocked():  # the mock's examples live only inside its context: never cached
        builder = prepare(info, data_dir)
        return builder, _Records(builder, split)
    key = (info.tfds_name, repr(sorted(info.builder_kwargs.items())), str(data_dir), split)
    if key not in _OPENED:
        builder = prepare(info, data_dir)
        _OPENED[key] = builder, _Records(builder, split)
    return _OPENED[key]


def num_examples(dataset: str | DatasetInfo, split: str, data_dir: str | None = None) -> int:
    """Number of examples in `split` (prepares the dataset if needed)."""
    return len(open_split(resolve(dataset), data_dir, split)[1])


# With instances, the label map carries `class + INSTANCE_STRIDE * instance id`, so that every
# label transform (nearest resizing, padding with the ignore label, crops, flips) moves both
# together; `split_instances` takes them apart. Padding (the ignore label) has instance 0.
INSTANCE_STRIDE = 256


def split_instances(combined):
    """(class ids, instance ids) of a label map decoded `with_instances` (numpy or tf)."""
    return combined % INSTANCE_STRIDE, combined // INSTANCE_STRIDE


def decode_fn(info: DatasetInfo, builder, *, with_instances: bool = False):
    """serialized -> (image uint8 [H, W, 3], label int32 [H, W], example id string).

    `with_instances`: the label is `class + INSTANCE_STRIDE * instance id` (0 = no instance),
    from the dataset's `instance_key` feature.
    """
    if with_instances and not info.instance_key:
        raise ValueError(f"dataset {info.name!r} has no instance ids (DatasetInfo.instance_key); "
                         "it cannot feed an instance-segmentation task")
    if info.ignore_label >= INSTANCE_STRIDE:
        raise ValueError(f"ignore_label {info.ignore_label} must be < {INSTANCE_STRIDE}")
    features = builder.info.features
    keep = {info.image_key, info.label_key} | ({info.id_key} if info.id_key else set())
    if with_instances:
        keep.add(info.instance_key)
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
                f"{ERROR_TAG} image is not RGB: example", name, "shape", tf.shape(image)]),
            tf.debugging.Assert(same, [
                f"{ERROR_TAG} mask size differs from image size: example", name, "image",
                tf.shape(image), "mask", tf.shape(label)]),
            tf.debugging.Assert(tf.reduce_all(label >= 0), [
                f"{ERROR_TAG} mask values outside [0, {num_classes}) and ignore {ignore} "
                f"(after the dataset's label map): example", name, "raw values",
                tf.unique(tf.boolean_mask(raw, label < 0))[0][:8]]),
        ]
        if with_instances:
            instances = tf.cast(ex[info.instance_key], tf.int32)
            instances = instances[..., 0] if instances.shape.rank == 3 else instances
            checks.append(tf.debugging.Assert(
                tf.reduce_all(tf.equal(tf.shape(instances), tf.shape(label))), [
                    f"{ERROR_TAG} instance map size differs from the mask: example", name]))
            label = label + INSTANCE_STRIDE * tf.where(label == ignore, 0, instances)
        with tf.control_dependencies(checks):
            return tf.identity(image), tf.identity(label), name

    return decode


def checked(dataset: tf.data.Dataset, context: str) -> Iterator:
    """Iterates `dataset` as numpy, turning TensorFlow errors into a ValueError with context."""
    iterator = iter(dataset.as_numpy_iterator())
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            message = e.message
            if ERROR_TAG in message:  # one of our assertions: keep just its text and values
                message = message[message.index(ERROR_TAG) + len(ERROR_TAG):]
                message = message.split("\n")[0].replace("] [", " ").replace("\\'", "'")
                message = message.rstrip("]").strip()
            raise ValueError(f"{context}: {message.strip()}") from None
        yield item


# Batches per tf.data pipeline built by `_chunked`.
_CHUNK_BATCHES = 8


def chunked(items: Iterator[tuple], process, signature: tuple, batch_size: int, *,
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
        yield from checked(ds.with_options(options(num_threads)), context)
        if len(rows) < chunk:
            return


def options(num_threads: int | None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if num_threads:  # e.g. benchmarks: every op of the pipeline on `num_threads` threads
        options.threading.private_threadpool_size = num_threads
        options.threading.max_intra_op_parallelism = 1
    return options


def hw(size) -> tuple[int, int]:
    return (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
