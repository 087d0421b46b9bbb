"""pascal_context built from a fake release in its on-disk format: VOC 2010 JPEGs and split
lists, `trainval/<id>.mat` (`LabelMap`, uint16 ids into the 459 classes) and `labels.txt`."""
import os
import tarfile
import time

import numpy as np
import pytest
import scipy.io

from segjax.data import eval_batches, get_dataset_info, num_examples, prepare
from segjax.data.records import _builder
from tests.data.fake_voc import write_jpeg

# mmsegmentation's PascalContextDataset59 classes, in its order (the reference for the numbering).
MMSEG_59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")
TRAIN, VAL = ["2008_000002", "2008_000003", "2010_000005"], ["2008_000008", "2009_000010"]


def write_release(root, rng):
    """Writes the three sources under `root`; returns `{image_id: expected 60-class mask}`.

    The 59 classes sit at random ids among 400 fillers. Three are spelled as the release's other
    names ('bedcloth', 'tv monitor', 'clothes'); the expected mask is built from MMSEG_59 by
    name, not from the builder's table."""
    ids = rng.permutation(np.arange(1, 460))
    names = {int(k): f"other thing {k}" for k in ids[59:]}
    spelled = {"bedclothes": "bedcloth", "tvmonitor": "tv monitor", "cloth": "clothes"}
    for k, name in zip(ids[:59], MMSEG_59):
        names[int(k)] = spelled.get(name, name)
    with open(os.path.join(root, "labels.txt"), "w") as f:
        f.writelines(f"{k}: {names[k]}\n" for k in range(1, 460))
    expected_class = np.zeros(460, np.uint8)
    expected_class[ids[:59]] = np.arange(1, 60)
    voc = os.path.join(root, "VOCdevkit", "VOC2010")
    os.makedirs(os.path.join(voc, "ImageSets", "Main"))
    for split, split_ids in (("train", TRAIN), ("val", VAL)):
        with open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.writelines(i + "\n" for i in split_ids)
    os.makedirs(os.path.join(root, "trainval"))
    written = {}
    values = np.concatenate([[0], ids[:59], ids[59:70]])  # unlabelled, the 59, some others
    for image_id in TRAIN + VAL:
        hw = (int(rng.integers(9, 16)) * 2 + 1, int(rng.integers(9, 16)) * 2 + 1)
        write_jpeg(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), rng, hw)
        label_map = rng.choice(values, size=hw).astype(np.uint16)
        scipy.io.savemat(os.path.join(root, "trainval", f"{image_id}.mat"),
                         {"LabelMap": label_map}, do_compression=True)
        written[image_id] = expected_class[label_map]
    return written


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    root = tmp_path_factory.mktemp("pascal_context")
    os.makedirs(root / "manual")
    written = write_release(str(root / "manual"), np.random.default_rng(3))
    prepare("pascal_context", str(root / "tfds"), manual_dir=str(root / "manual"))
    return str(root / "tfds"), written


def _read_split(data_dir, split):
    source = _builder(get_dataset_info("pascal_context"), data_dir).as_data_source(split)
    return {source[i]["image_id"].decode(): source[i] for i in range(len(source))}


def test_splits_and_masks_equal_the_59_class_reading(context):
    data_dir, written = context
    assert {s: num_examples("pascal_context", s, data_dir) for s in ("train", "val")} == {
        "train": 3, "val": 2}
    for split, ids in (("train", TRAIN), ("val", VAL)):
        examples = _read_split(data_dir, split)
        assert sorted(examples) == sorted(ids)
        for image_id, ex in examples.items():
            np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], written[image_id])
            assert ex["image"].shape == written[image_id].shape + (3,)
    everything = np.concatenate([m.ravel() for m in written.values()])
    assert set(np.unique(everything)) == set(range(60))  # every class and background occur


def test_the_two_protocols(context):
    """pascal_context: 60 classes, background is class 0; pascal_context59: background ignored,
    class k -> k - 1 (mmsegmentation's reduce_zero_label)."""
    data_dir, written = context
    info60, info59 = get_dataset_info("pascal_context"), get_dataset_info("pascal_context59")
    assert (info60.num_classes, info59.num_classes) == (60, 59)
    assert info60.class_names == ("background",) + MMSEG_59 and info59.class_names == MMSEG_59
    ids = list(_read_split(data_dir, "val"))
    for name, expect in (("pascal_context", lambda m: m),
                         ("pascal_context59", lambda m: np.where(m == 0, 255, m - 1))):
        batches = list(eval_batches(name, split="val", batch_size=2, pad_to=31, data_dir=data_dir))
        for b in batches:
            for k in np.flatnonzero(b["valid"]):
                want = written[ids[b["index"][k]]]
                h, w = want.shape
                np.testing.assert_array_equal(b["label"][k, :h, :w], expect(want))


def test_missing_release_fails_at_once_with_instructions(tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="VOC 2010 and PASCAL-Context trainval and "
                                                "labels.txt") as e:
        prepare("pascal_context", str(tmp_path / "tfds"), manual_dir=str(tmp_path))
    assert time.monotonic() - start < 20
    assert "VOCtrainval_03-May-2010.tar" in str(e.value) and "trainval.tar.gz" in str(e.value)


def _out_of_range(root):
    path = os.path.join(root, "trainval", f"{VAL[1]}.mat")
    label_map = scipy.io.loadmat(path)["LabelMap"]
    label_map[0, 0] = 460
    scipy.io.savemat(path, {"LabelMap": label_map})
    return path


def _wrong_size(root):
    path = os.path.join(root, "trainval", f"{TRAIN[0]}.mat")
    scipy.io.savemat(path, {"LabelMap": scipy.io.loadmat(path)["LabelMap"][:, :-1]})
    return path


def _missing_mat(root):
    path = os.path.join(root, "trainval", f"{TRAIN[2]}.mat")
    os.remove(path)
    return path


def _not_a_mat(root):
    path = os.path.join(root, "trainval", f"{VAL[0]}.mat")
    with open(path, "wb") as f:
        f.write(b"MATLAB? no")
    return path


def _labels_without_sky(root):
    path = os.path.join(root, "labels.txt")
    with open(path) as f:
        lines = [line for line in f if not line.endswith(": sky\n")]
    with open(path, "w") as f:
        f.writelines(lines)
    return path


@pytest.mark.parametrize("damage, error, text", [
    (_out_of_range, ValueError, "values outside 0..459"),
    (_wrong_size, ValueError, "size"),
    (_missing_mat, FileNotFoundError, "Missing PASCAL-Context label file"),
    (_not_a_mat, ValueError, "not a MATLAB v5"),
    (_labels_without_sky, ValueError, "class 'sky' once"),
])
def test_bad_input_raises_naming_the_file(tmp_path, damage, error, text):
    root = str(tmp_path / "manual")
    os.makedirs(root)
    write_release(root, np.random.default_rng(5))
    culprit = damage(root)
    with pytest.raises(error, match=text) as e:
        prepare("pascal_context", str(tmp_path / "tfds"), manual_dir=root)
    assert culprit in str(e.value)


def test_builds_from_the_original_archives(tmp_path):
    """VOCtrainval_03-May-2010.tar and trainval.tar.gz as downloaded, beside labels.txt."""
    trees, manual = tmp_path / "trees", tmp_path / "manual"
    os.makedirs(trees)
    os.makedirs(manual)
    written = write_release(str(trees), np.random.default_rng(9))
    with tarfile.open(manual / "VOCtrainval_03-May-2010.tar", "w") as tar:
        tar.add(trees / "VOCdevkit", arcname="VOCdevkit")
    with tarfile.open(manual / "trainval.tar.gz", "w:gz") as tar:
        tar.add(trees / "trainval", arcname="trainval")
    os.rename(trees / "labels.txt", manual / "labels.txt")
    prepare("pascal_context", str(tmp_path / "tfds"), manual_dir=str(manual))
    examples = _read_split(str(tmp_path / "tfds"), "train")
    assert sorted(examples) == sorted(TRAIN)
    for image_id, ex in examples.items():
        np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], written[image_id])
