"""voc2012_segmentation built from fake VOC + SBD trees: splits, train_aug, exact masks, errors."""
import os
import time

import numpy as np
import pytest

from segjax.data import eval_batches, get_dataset_info, num_examples, prepare
from segjax.data.records import _builder
from tests.data import fake_voc


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """(data_dir, written masks) of a VOC dataset built from a fake tree."""
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    root = tmp_path_factory.mktemp("voc")
    written = fake_voc.write_tree(str(root / "manual"), np.random.default_rng(7))
    prepare("voc2012", str(root / "tfds"), manual_dir=str(root / "manual"))
    return str(root / "tfds"), written


def _read_split(data_dir, split):
    source = _builder(get_dataset_info("voc2012"), data_dir).as_data_source(split)
    return {source[i]["image_id"].decode(): source[i] for i in range(len(source))}


def test_split_counts_and_train_aug_membership(voc):
    data_dir, _ = voc
    info = get_dataset_info("voc2012")
    assert (info.train_split, info.eval_split) == ("train_aug", "val")
    counts = {s: num_examples("voc2012", s, data_dir) for s in ("train", "val", "train_aug")}
    assert counts == {"train": 6, "val": 5, "train_aug": 10}
    assert sorted(_read_split(data_dir, "train_aug")) == fake_voc.TRAIN_AUG
    assert sorted(_read_split(data_dir, "val")) == fake_voc.VOC_VAL


def test_masks_read_back_exactly(voc):
    """Palette indices (incl. 255) survive; VOC train ids keep the VOC mask, others use SBD."""
    data_dir, written = voc
    for split in ("train", "val", "train_aug"):
        for image_id, ex in _read_split(data_dir, split).items():
            source = "voc" if image_id in written["voc"] else "sbd"
            want = written[source][image_id]
            np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], want, err_msg=image_id)
            assert ex["image"].shape == want.shape + (3,)
    assert any((m == 255).any() for m in written["voc"].values())


def test_eval_batches_on_voc(voc):
    data_dir, written = voc
    ids = list(_read_split(data_dir, "val"))  # index order of the data source
    batches = list(eval_batches("voc2012", split="val", batch_size=2, pad_to=31,
                                data_dir=data_dir))
    assert len(batches) == 3 and batches[-1]["valid"].tolist() == [True, False]
    for b in batches:
        for k in np.flatnonzero(b["valid"]):
            want = written["voc"][ids[b["index"][k]]]
            h, w = want.shape
            assert (b["height"][k], b["width"][k]) == (h, w)
            np.testing.assert_array_equal(b["label"][k, :h, :w], want)
            assert (b["label"][k, h:] == 255).all() and (b["label"][k, :, w:] == 255).all()


def test_missing_dataset_fails_at_once_with_instructions(tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="VOCtrainval_11-May-2012.tar") as e:
        prepare("voc2012", str(tmp_path / "tfds"))
    assert time.monotonic() - start < 20
    assert "benchmark.tgz" in str(e.value) and "manual" in str(e.value)


def _build_broken(tmp_path, np_rng, damage):
    manual = str(tmp_path / "manual")
    written = fake_voc.write_tree(manual, np_rng)
    voc_dir = os.path.join(manual, "VOCdevkit", "VOC2012")
    sbd_dir = os.path.join(manual, "benchmark_RELEASE", "dataset")
    culprit = damage(voc_dir, sbd_dir, written)
    return culprit, lambda: prepare("voc2012", str(tmp_path / "tfds"), manual_dir=manual)


def _corrupt_jpeg(voc_dir, sbd_dir, written):
    path = os.path.join(voc_dir, "JPEGImages", f"{fake_voc.VOC_VAL[2]}.jpg")
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.truncate()
        f.write(data[: len(data) // 2])  # truncated JPEG
    return path


def _garbage_jpeg(voc_dir, sbd_dir, written):
    path = os.path.join(sbd_dir, "img", "2010_000002.jpg")
    with open(path, "wb") as f:
        f.write(b"\xff\xd8 not a jpeg at all")
    return path


def _truncated_png(voc_dir, sbd_dir, written):
    path = os.path.join(voc_dir, "SegmentationClass", f"{fake_voc.VOC_TRAIN[1]}.png")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


def _wrong_size_mask(voc_dir, sbd_dir, written):
    image_id = fake_voc.VOC_TRAIN[3]
    path = os.path.join(voc_dir, "SegmentationClass", f"{image_id}.png")
    fake_voc.write_palette_png(path, written["voc"][image_id][:-2])
    return path


def _label_out_of_range(voc_dir, sbd_dir, written):
    image_id = fake_voc.VOC_VAL[0]
    mask = written["voc"][image_id].copy()
    mask[0, 0] = 21
    path = os.path.join(voc_dir, "SegmentationClass", f"{image_id}.png")
    fake_voc.write_palette_png(path, mask)
    return path


def _sbd_boundary_value(voc_dir, sbd_dir, written):
    image_id = "2010_000003"
    mask = written["sbd"][image_id].copy()
    mask[1, 1] = 255  # SBD class maps have no ignore value
    path = os.path.join(sbd_dir, "cls", f"{image_id}.mat")
    fake_voc.write_sbd_mat(path, mask)
    return path


def _missing_image_set(voc_dir, sbd_dir, written):
    path = os.path.join(voc_dir, "ImageSets", "Segmentation", "val.txt")
    os.remove(path)
    return path


def _duplicate_id(voc_dir, sbd_dir, written):
    path = os.path.join(voc_dir, "ImageSets", "Segmentation", "train.txt")
    with open(path, "a") as f:
        f.write(fake_voc.VOC_TRAIN[2] + "\n")  # listed twice: the split would hold it twice
    return path


def _mask_claims_huge_size(voc_dir, sbd_dir, written):
    from tests.data.test_builder_bounds import png_claiming
    path = os.path.join(voc_dir, "SegmentationClass", f"{fake_voc.VOC_VAL[1]}.png")
    png_claiming(path, 9_000, 9_000, palette=True)  # 81 MB if decoded; refused from its header
    return path


@pytest.mark.parametrize("damage, error, text", [
    (_corrupt_jpeg, ValueError, "Corrupt"),
    (_garbage_jpeg, ValueError, "Corrupt"),
    (_truncated_png, ValueError, "Corrupt"),
    (_wrong_size_mask, ValueError, "size"),
    (_label_out_of_range, ValueError, r"\[21\] outside"),
    (_sbd_boundary_value, ValueError, r"\[255\] outside"),
    (_missing_image_set, FileNotFoundError, "Missing split list"),
    (_duplicate_id, ValueError, f"id '{fake_voc.VOC_TRAIN[2]}' twice"),
    (_mask_claims_huge_size, ValueError, r"size \(9000, 9000\), its image"),
])
def test_bad_input_raises_naming_the_file(tmp_path, np_rng, damage, error, text):
    culprit, build = _build_broken(tmp_path, np_rng, damage)
    with pytest.raises(error, match=text) as e:
        build()
    assert culprit in str(e.value)


def test_builds_from_the_original_tar_files(tmp_path, np_rng):
    """manual_dir holding VOCtrainval_11-May-2012.tar and benchmark.tgz (as downloaded)."""
    import tarfile
    trees = tmp_path / "trees"
    written = fake_voc.write_tree(str(trees), np_rng)
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "VOCtrainval_11-May-2012.tar", "w") as tar:
        tar.add(trees / "VOCdevkit", arcname="VOCdevkit")
    with tarfile.open(manual / "benchmark.tgz", "w:gz") as tar:
        tar.add(trees / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    data_dir = str(tmp_path / "tfds")
    prepare("voc2012", data_dir, manual_dir=str(manual))
    assert num_examples("voc2012", "train_aug", data_dir) == 10
    for image_id, ex in _read_split(data_dir, "train_aug").items():
        want = written["voc" if image_id in written["voc"] else "sbd"][image_id]
        np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], want)
