"""The registry's TFDS datasets end to end, the way TFDS tests its own builders.

For `oxford_iiit_pet`, `cityscapes` and `scene_parse150` the real TFDS 4.9.10 builder runs on
tiny fake source files laid out as it expects (`fake_tfds_sources.py`; no network: the download
manager serves local archives and refuses anything else, cityscapes reads its manual dir), then
segjax's `prepare -> train_batches / eval_batches -> Parallel("mesh")` train and eval steps run on
what it prepared. Checked against the fake sources, not against segjax: feature names, split
names and contents, raw mask value -> class id / ignore label on every pixel, image/mask alignment
through augmentation, the loss against a host cross-entropy of the same logits, and the
evaluation's ground-truth pixel counts.

The last tests run the pipelines under `tfds.testing.mock_data`, TFDS's way to test a pipeline
without data.
"""
import collections
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from segjax.data import get_dataset_info, prepare
from segjax.data import records
from segjax.data._tf import tf
from segjax.data.pipeline import denormalize, eval_batches, train_batches
from segjax.tasks.semantic import SemanticTask
from segjax.train import optim
from segjax.train.parallel import Parallel
from segjax.train.state import create_train_state, init_variables
from tests.data.fake_tfds_sources import (CITYSCAPES_HW, offline_downloads, write_cityscapes,
                                          write_pet, write_scene_parse150)
from tests.train.tiny import TinySegNet

NAMES = ["oxford_iiit_pet", "cityscapes", "scene_parse150"]
# Per dataset: train crop, eval pad size (>= every image), extra train_batches arguments, and
# the largest mean |decoded - drawn| image error (JPEG sources are lossy, PNG ones exact).
SETTINGS = {
    "oxford_iiit_pet": dict(crop=(24, 24), pad_to=(32, 36), train={}, image_error=4.0),
    # Smaller scales keep the 1024x2048 resize cheap.
    "cityscapes": dict(crop=(32, 64), pad_to=CITYSCAPES_HW,
                       train=dict(min_scale=0.25, max_scale=0.5), image_error=0.0),
    "scene_parse150": dict(crop=(24, 24), pad_to=(32, 36), train={}, image_error=4.0),
}

Prepared = collections.namedtuple("Prepared", "info data_dir fake builder requested")


def _prepare(name, root, fake):
    tfds.disable_progress_bar()
    data_dir = str(root / "tfds")
    with offline_downloads(fake.archives) as requested:
        builder = prepare(name, data_dir, manual_dir=fake.manual_dir)
    return Prepared(get_dataset_info(name), data_dir, fake, builder, requested)


@pytest.fixture(scope="module")
def oxford_iiit_pet(tmp_path_factory):
    root = tmp_path_factory.mktemp("pet")
    return _prepare("oxford_iiit_pet", root, write_pet(str(root / "downloads")))


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    return _prepare("cityscapes", root, write_cityscapes(str(root / "manual")))


@pytest.fixture(scope="module")
def scene_parse150(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    return _prepare("scene_parse150", root, write_scene_parse150(str(root / "downloads")))


def _example_keys(p, split):
    """Per record index of `split`: the id feature's value, or the image size when the dataset
    has no id feature (the fake scene_parse150 sizes are unique)."""
    decoders = {p.info.label_key: tfds.decode.SkipDecoding()}
    if p.info.id_key:
        decoders[p.info.image_key] = tfds.decode.SkipDecoding()
    source = p.builder.as_data_source(split, decoders=decoders)
    if p.info.id_key:
        return [source[i][p.info.id_key].decode() for i in range(len(source))]
    return [tuple(source[i][p.info.image_key].shape[:2]) for i in range(len(source))]


@pytest.mark.parametrize("name", NAMES)
def test_builder_features_and_splits_match_the_sources(request, name):
    p = request.getfixturevalue(name)
    assert sorted(p.requested) == sorted(p.fake.archives)  # every source, nothing else
    features = p.builder.info.features
    for key in (p.info.image_key, p.info.label_key, p.info.id_key):
        if key is not None:
            assert key in features, key
    assert features[p.info.image_key].shape[-1] == 3
    assert features[p.info.label_key].np_dtype == np.uint8
    assert features[p.info.label_key].shape[-1] > p.info.label_channel
    splits = p.builder.info.splits
    assert {s: splits[s].num_examples for s in splits} == {
        s: len(v) for s, v in p.fake.examples.items()}
    assert p.info.train_split in splits and p.info.eval_split in splits
    for split, examples in p.fake.examples.items():
        assert sorted(_example_keys(p, split)) == sorted(examples), split


@pytest.mark.parametrize("name", NAMES)
def test_eval_batches_are_the_source_files_mapped(request, name):
    """Every example of every split once, label = the registry's table of the raw mask on every
    pixel, ignore label in the padding, the image as drawn (exact for PNG sources)."""
    p = request.getfixturevalue(name)
    table, ignore = p.info.lookup_table(), p.info.ignore_label
    pad_h, pad_w = SETTINGS[name]["pad_to"]
    for split, examples in p.fake.examples.items():
        keys = _example_keys(p, split)
        seen = []
        for batch in eval_batches(p.info, split=split, batch_size=4, pad_to=(pad_h, pad_w),
                                  data_dir=p.data_dir):
            assert batch["image"].shape == (4, pad_h, pad_w, 3)
            assert batch["label"].shape == (4, pad_h, pad_w) and batch["label"].dtype == np.int32
            for b in range(4):
                if not batch["valid"][b]:
                    assert batch["index"][b] == -1 and (batch["label"][b] == ignore).all()
                    continue
                index = int(batch["index"][b])
                seen.append(index)
                image, raw = examples[keys[index]]
                h, w = raw.shape
                assert (batch["height"][b], batch["width"][b]) == (h, w)
                np.testing.assert_array_equal(batch["label"][b, :h, :w], table[raw])
                assert (batch["label"][b, h:] == ignore).all()
                assert (batch["label"][b, :, w:] == ignore).all()
                tolerance = SETTINGS[name]["image_error"]
                if keys[index] in p.fake.reencoded:  # exactly the builder's own JPEG
                    image, tolerance = tf.io.decode_jpeg(tf.io.encode_jpeg(image)).numpy(), 0
                error = np.abs(denormalize(batch["image"][b, :h, :w]).astype(int) - image)
                assert error.mean() <= tolerance, (split, keys[index], error.mean())
        assert sorted(seen) == list(range(len(examples))), split


def _train_batch(p, name, seed=0):
    s = SETTINGS[name]
    return next(train_batches(p.info, split=p.info.train_split, batch_size=4,
                              crop_size=s["crop"], seed=seed, data_dir=p.data_dir,
                              **s["train"]))


@pytest.mark.parametrize("name", NAMES)
def test_train_batches_keep_image_and_mask_aligned(request, name):
    """Augmented crops: shapes, labels only the mapped values of the source, and each labelled
    pixel's colour is nearest to the colour its class was drawn with (image and mask cropped,
    scaled and flipped together). A one-pixel-per-row misalignment control must score lower."""
    p = request.getfixturevalue(name)
    table, ignore = p.info.lookup_table(), p.info.ignore_label
    crop = SETTINGS[name]["crop"]
    batch = _train_batch(p, name)
    assert batch["image"].shape == (4,) + crop + (3,) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) + crop and batch["label"].dtype == np.int32
    raws = np.array(sorted(p.fake.colours))
    values = set(np.unique(batch["label"]).tolist())
    assert values <= set(table[raws].tolist()) | {ignore}
    assert len(values - {ignore}) >= 2
    colours = np.array([p.fake.colours[r] for r in raws], np.float64)
    image = denormalize(batch["image"]).astype(np.float64)
    nearest = table[raws[((image[..., None, :] - colours) ** 2).sum(-1).argmin(-1)]]

    def agreement(label):
        counted = label != ignore
        return (nearest[counted] == label[counted]).mean()

    shifted = np.roll(batch["label"], crop[1] // 4, axis=2)
    assert agreement(batch["label"]) > 0.9
    assert agreement(shifted) < agreement(batch["label"]) - 0.1


def _tiny_state(num_classes, crop):
    """A tiny BatchNorm model (tests/train/tiny.py), its step-0 state and LR schedule."""
    model = TinySegNet(num_classes=num_classes, features=4)
    variables = init_variables(model, jax.random.key(0), (1,) + crop + (3,))
    tx, schedule = optim.create_optimizer(variables["params"], base_lr=0.1, num_steps=10)
    return model, create_train_state(model, None, (1,) + crop + (3,), tx,
                                     variables=variables), schedule


@pytest.mark.parametrize("name", NAMES)
def test_one_training_step_and_an_evaluation(request, name):
    """One `Parallel("mesh")` training step of a tiny model on a train batch (loss = host
    cross-entropy of the same logits over the non-ignored pixels), then an evaluation of the eval
    split whose ground-truth pixel counts per class are the source masks' through the table."""
    p = request.getfixturevalue(name)
    info, s = p.info, SETTINGS[name]
    k, ignore, table = info.num_classes, info.ignore_label, info.lookup_table()
    model, state, schedule = _tiny_state(k, s["crop"])
    task = SemanticTask(num_classes=k, ignore_label=ignore, boundary_iou=False)
    par = Parallel("mesh")
    batch = _train_batch(p, name, seed=1)

    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         batch["image"], train=True, mutable=["batch_stats"])[0]["logits"]
    logits = np.asarray(logits, np.float64)
    counted = batch["label"] != ignore
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, np.where(counted, batch["label"], 0)[..., None], -1)
    want_loss = -picked[..., 0][counted].mean()

    dstate, metrics = par.train_step(task, learning_rate_fn=schedule, donate=False)(
        par.replicate(state), par.shard_batch(batch), jax.random.key(2))
    metrics = jax.device_get(metrics)
    assert int(metrics["valid_pixels"]) == counted.sum() > 0
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    assert np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
    moved = par.unreplicate(dstate)
    assert int(moved.step) == 1
    assert not np.allclose(moved.params["head"]["kernel"], state.params["head"]["kernel"])

    step = par.eval_step(task)
    accumulator = task.new_accumulator()
    confusion = np.zeros((k, k), np.int64)
    host = np.zeros((k, k), np.int64)
    for eval_batch in eval_batches(info, split=info.eval_split, batch_size=4,
                                   pad_to=s["pad_to"], data_dir=p.data_dir):
        sums, rows = step(dstate, par.shard_batch(eval_batch))
        sums, pred = par.host_value(sums), par.local_rows(rows["pred"])
        accumulator.update(sums, {"pred": pred}, eval_batch)
        confusion += sums["confusion"]
        label = eval_batch["label"]
        keep = (label != ignore) & eval_batch["valid"][:, None, None]
        host += np.bincount(label[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    want = np.zeros(k, np.int64)
    for _, raw in p.fake.examples[info.eval_split].values():
        mapped = table[raw]
        want += np.bincount(mapped[mapped != ignore], minlength=k)
    np.testing.assert_array_equal(confusion.sum(1), want)
    np.testing.assert_array_equal(confusion, host)
    result = accumulator.result()
    # mIoU from the host-side confusion matrix: IoU = TP / (row + column - TP), classes with an
    # empty union left out.
    tp = np.diag(host).astype(np.float64)
    union = host.sum(0) + host.sum(1) - tp
    np.testing.assert_allclose(result["miou"], np.mean(tp[union > 0] / union[union > 0]),
                               rtol=1e-12)
    np.testing.assert_allclose(result["pixel_accuracy"], np.trace(confusion) / want.sum())


def test_cityscapes_without_its_manual_files_fails_at_once(tmp_path):
    """No zips in the manual dir: TFDS's instructions, no download attempt."""
    (tmp_path / "manual").mkdir()
    with offline_downloads({}), pytest.raises(AssertionError, match="leftImg8bit_trainvaltest"):
        prepare("cityscapes", str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"))


# ------------------------------------------------------------------------ tfds.testing.mock_data


def test_pipelines_under_tfds_mock_data(cityscapes, monkeypatch):
    """Under `tfds.testing.mock_data` the streams serve the mock's random examples (any split
    name, nothing prepared or cached): eval labels are the registry's table of the mock's random
    raw labelIds, train batches have the crop's shape and valid labels. Afterwards the same
    data_dir serves the prepared files again.

    cityscapes is the registry dataset the mock can feed: its features have fixed sizes, while
    the mock draws every other image feature's size independently (see the pet test below).
    """
    from tensorflow_datasets.testing import mocking

    info, table = cityscapes.info, cityscapes.info.lookup_table()
    # Where the mock points builders without metadata files; preparing would write a lock there.
    mock_dir = os.path.join(os.path.dirname(mocking.__file__), "metadata")
    existed = os.path.exists(mock_dir)
    # The mock draws and PNG-encodes a 1024x2048 example on every read (~1 s): read one batch.
    monkeypatch.setattr(records, "_CHUNK_BATCHES", 1)
    with tfds.testing.mock_data(num_examples=2):
        features = tfds.builder(info.tfds_name).info.features
        (batch,) = eval_batches(info, split="validation", batch_size=2, pad_to=CITYSCAPES_HW,
                                data_dir=cityscapes.data_dir)
        train = next(train_batches(info, split="train", batch_size=1, crop_size=(32, 64), seed=0,
                                   min_scale=0.25, max_scale=0.25, data_dir=cityscapes.data_dir))
    assert batch["image"].shape == (2,) + CITYSCAPES_HW + (3,)
    assert batch["valid"].all() and batch["index"].tolist() == [0, 1]
    for i in range(2):
        raw = mocking.RandomFakeGenerator(features, 2)[i][info.label_key][..., 0]
        np.testing.assert_array_equal(batch["label"][i], table[raw])
    assert train["image"].shape == (1, 32, 64, 3) and train["label"].shape == (1, 32, 64)
    for labels in (batch["label"], train["label"]):
        assert set(np.unique(labels).tolist()) <= set(range(19)) | {255}
    assert len(np.unique(batch["label"])) > 10  # the mock's values reach many classes
    assert os.path.exists(mock_dir) == existed  # nothing prepared or written

    (after,) = eval_batches(info, split="validation", batch_size=2, pad_to=CITYSCAPES_HW,
                            data_dir=cityscapes.data_dir)
    keys = _example_keys(cityscapes, "validation")
    for i in range(2):
        _, raw = cityscapes.fake.examples["validation"][keys[after["index"][i]]]
        np.testing.assert_array_equal(after["label"][i], table[raw])


def test_mock_data_random_pet_examples_fail_the_mask_check():
    """TFDS's random examples give the pet image and its trimap independent sizes (and values
    0..254): segjax refuses them with its message rather than cropping or clamping."""
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match="oxford_iiit_pet split 'test'.*(mask size differs"
                                             "|mask values outside)"):
            next(eval_batches("oxford_iiit_pet", split="test", batch_size=2, pad_to=64))
