"""gta5 built from a fake release in its on-disk layout (`images/NNNNN.png` RGB, `labels/NNNNN.png`
palette PNGs whose indices are Cityscapes labelIds, `split.mat` as scipy writes MATLAB files):
raw labelIds stored, train ids read back through the registry equal to a NumPy mapping written
out here (AdaptSegNet's `id_to_trainid`), a size-mismatched pair's label resized as torch's
`interpolate(mode="nearest-exact")` resizes it, and malformed releases stopping with the file's
name."""
import hashlib
import os
import time

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from segjax.data import get_dataset_info, prepare
from segjax.data.builders import gta5
from segjax.data.pipeline import eval_batches
from segjax.data.records import _builder

# Cityscapes labelId -> train id, as the UDA loaders write it; every other id is ignored.
ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
IDS = ["00001", "00002", "00003", "00005", "00008", "00013"]
MISMATCHED = "00005"  # its label is smaller than its image (the release's known fault)


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    out = np.full(label_ids.shape, 255, np.int64)
    for raw, train in ID_TO_TRAINID.items():
        out[label_ids == raw] = train
    return out


def nearest(label: np.ndarray, hw) -> np.ndarray:
    """torch's nearest-neighbour resize by pixel centres ("nearest-exact")."""
    t = torch.from_numpy(label.astype(np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=tuple(hw), mode="nearest-exact")
    return out[0, 0].numpy().astype(np.uint8)


def write_label(path, label_ids, mode="P"):
    im = Image.fromarray(np.asarray(label_ids, np.uint8))
    if mode == "P":  # indices kept; the colours are arbitrary, as only the indices count
        im.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tobytes())
    else:
        im = im.convert(mode)
    im.save(path)


def write_release(root, rng):
    """The fake release; returns {id: (image, labelIds at the image's size)}."""
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(root, sub))
    written = {}
    for frame in IDS:
        h, w = int(rng.integers(9, 14)), int(rng.integers(14, 20))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(root, "images", f"{frame}.png"))
        lh, lw = (h // 2 + 1, w // 3 + 2) if frame == MISMATCHED else (h, w)
        label = rng.integers(0, 34, (lh, lw)).astype(np.uint8)
        write_label(os.path.join(root, "labels", f"{frame}.png"), label)
        written[frame] = (image, nearest(label, (h, w)) if frame == MISMATCHED else label)
    scipy.io.savemat(os.path.join(root, "split.mat"), {
        "trainIds": np.array([[1], [2], [8]], np.float64), "valIds": np.array([[5]], np.uint16),
        "testIds": np.array([[3], [13]], np.float64)})
    return written


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    root = tmp_path_factory.mktemp("gta5")
    written = write_release(str(root / "manual" / "gta5"), np.random.default_rng(3))
    prepare("gta5", str(root / "tfds"), manual_dir=str(root / "manual"))
    return str(root), written


def test_raw_label_ids_and_official_splits(release):
    root, written = release
    info = get_dataset_info("gta5")
    order = sorted(IDS, key=lambda i: hashlib.sha256(("gta5:" + i).encode()).hexdigest())
    want = {"train": IDS, "validation": order[:1], "official_train": ["00001", "00002", "00008"],
            "official_val": ["00005"], "official_test": ["00003", "00013"]}
    for split, ids in want.items():
        source = _builder(info, os.path.join(root, "tfds")).as_data_source(split)
        examples = {source[i]["image_id"].decode(): source[i] for i in range(len(source))}
        assert sorted(examples) == ids
        for frame, ex in examples.items():
            image, label = written[frame]
            np.testing.assert_array_equal(ex["image"], image)
            np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], label)


def test_train_ids_through_the_registry_equal_the_numpy_mapping(release):
    """The pipelines' labels (registry table, eval padding) against `to_train_ids` of the
    labelIds written; the mismatched frame's label is the nearest resize of the one written."""
    root, written = release
    batches = eval_batches("gta5", split="train", batch_size=len(IDS), pad_to=(16, 20),
                           data_dir=os.path.join(root, "tfds"))
    batch = next(iter(batches))
    source = _builder(get_dataset_info("gta5"), os.path.join(root, "tfds")).as_data_source("train")
    frames = [source[int(i)]["image_id"].decode() for i in batch["index"]]
    assert sorted(frames) == IDS
    for k, frame in enumerate(frames):
        image, label = written[frame]
        h, w = label.shape
        assert (batch["height"][k], batch["width"][k]) == (h, w)
        np.testing.assert_array_equal(batch["label"][k, :h, :w], to_train_ids(label))
        assert np.all(batch["label"][k, h:] == 255) and np.all(batch["label"][k, :, w:] == 255)
    cityscapes = get_dataset_info("cityscapes")
    info = get_dataset_info("gta5")
    assert info.class_names == cityscapes.class_names and info.num_classes == 19
    np.testing.assert_array_equal(info.palette, cityscapes.palette)


def test_validation_rule_by_hash_of_the_id():
    """The documented rule written out: 2 % of the frames (rounded up), by sha256('gta5:' + id)."""
    ids = [f"{k:05d}" for k in range(1, 24967)]
    order = sorted(ids, key=lambda i: hashlib.sha256(("gta5:" + i).encode()).hexdigest())
    assert gta5.validation_ids(reversed(ids)) == order[:500]


def test_missing_release_fails_at_once_with_instructions(tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="Missing the GTA5 release") as e:
        prepare("gta5", str(tmp_path / "tfds"), manual_dir=str(tmp_path))
    assert time.monotonic() - start < 20 and "01_labels.zip" in str(e.value)


def _missing_label(root):
    path = os.path.join(root, "labels", "00003.png")
    os.remove(path)
    return path, FileNotFoundError, "Missing GTA5 label"


def _orphan_label(root):
    path = os.path.join(root, "images", "00008.png")
    os.remove(path)
    return path, FileNotFoundError, "Missing GTA5 image"


def _colour_label(root):
    path = os.path.join(root, "labels", "00002.png")
    write_label(path, np.zeros((4, 4), np.uint8), mode="RGB")
    return path, ValueError, "expected a palette PNG"


def _index_34(root):
    path = os.path.join(root, "labels", "00013.png")
    label = np.asarray(Image.open(path)).copy()
    label[0, 0] = 34
    write_label(path, label)
    return path, ValueError, "indices \\[34\\]"


def _split_names_absent_frame(root):
    path = os.path.join(root, "split.mat")
    scipy.io.savemat(path, {"trainIds": [[1], [7]], "valIds": [[2]], "testIds": [[3]]})
    return path, ValueError, "frame 00007"


@pytest.mark.parametrize("damage", [_missing_label, _orphan_label, _colour_label, _index_34,
                                    _split_names_absent_frame])
def test_malformed_release_names_the_file(tmp_path, damage):
    """Read as `_split_generators` and `_generate_examples` read."""
    root = str(tmp_path / "gta5")
    write_release(root, np.random.default_rng(5))
    path, error, text = damage(root)
    with pytest.raises(error, match=text) as e:
        frames = gta5.frame_files(root)
        gta5.read_split_ids(os.path.join(root, "split.mat"), frames)
        for image_path, label_path in frames.values():
            gta5.read_label(label_path, np.asarray(Image.open(image_path)).shape[:2])
    assert path in str(e.value)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from([0, 7, 33, 26, 1, 34, 255]), min_size=12, max_size=12),
       st.sampled_from([(3, 4), (4, 3), (6, 8)]), st.sampled_from(["P", "L"]))
def test_any_label_is_read_exactly_or_refused_by_name(tmp_path_factory, values, image_hw, mode):
    """A generated label (3x4; an index above 33 sometimes; sometimes not a palette PNG; its
    image 3x4 or of another size): the labelIds (nearest-resized to the image) or ValueError
    naming the file."""
    path = str(tmp_path_factory.mktemp("hyp") / "00001.png")
    label = np.array(values, np.uint8).reshape(3, 4)
    write_label(path, label, mode=mode)
    if mode == "P" and label.max() <= 33:
        got = gta5.read_label(path, image_hw)
        np.testing.assert_array_equal(got[..., 0], nearest(label, image_hw))
    else:
        with pytest.raises(ValueError, match="GTA5 label") as e:
            gta5.read_label(path, image_hw)
        assert path in str(e.value)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from([1.0, 2.0, 3.0, 8.0, 2.0, 7.0, 2.5, -1.0, float("nan"),
                                 float("inf"), 1e12]), min_size=1, max_size=4))
def test_any_split_file_is_read_exactly_or_refused_by_name(tmp_path_factory, val_numbers):
    """A generated `valIds` (sometimes a duplicate of a train frame, an absent frame, a
    fraction, NaN, inf or a huge number): the frame ids, or ValueError naming the file."""
    path = str(tmp_path_factory.mktemp("hyp") / "split.mat")
    frames = {"00001", "00002", "00003", "00008"}
    scipy.io.savemat(path, {"trainIds": [[1]], "valIds": np.array(val_numbers)[:, None],
                            "testIds": [[3]]})
    ids = [f"{int(n):05d}" if np.isfinite(n) and n == int(n) else None for n in val_numbers]
    ok = None not in ids and len(set(ids)) == len(ids) and set(ids) <= frames - {"00001",
                                                                                 "00003"}
    if ok:
        assert gta5.read_split_ids(path, frames) == {
            "official_train": ["00001"], "official_val": ids, "official_test": ["00003"]}
    else:
        with pytest.raises(ValueError, match="GTA5 split file") as e:
            gta5.read_split_ids(path, frames)
        assert path in str(e.value)
