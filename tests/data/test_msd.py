"""msd built from tiny fake Decathlon tasks in the real layout (dataset.json, imagesTr/ and
labelsTr/ of .nii.gz written by nibabel, a macOS `._` file and imagesTs/ beside them).

References: the voxel values the test wrote, indexed by formula (x, y, z) -> (D, H, W) = (z, y, x);
MONAI's `LoadImage` (NibabelReader) and `load_decathlon_datalist` / `load_decathlon_properties`
read the same files independently; malformed cases must stop naming the file."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segjax.data.builders import msd
from segjax.data.datasets import msd_info

HIPPO = "Task04_Hippocampus"
BRAIN = "Task01_BrainTumour"
# The real dataset.json entries (Task01: label 2 is NON-enhancing, 3 enhancing; tutorials#1355).
LABELS = {HIPPO: {"0": "background", "1": "Anterior", "2": "Posterior"},
          BRAIN: {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                  "3": "enhancing tumour"}}
MODALITY = {HIPPO: {"0": "MRI"}, BRAIN: {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}


def _save(path, data, zooms):
    nib.save(nib.Nifti1Image(data, np.diag(list(zooms) + [1.0])), path)


def write_task(root, task, shapes, rng, zooms=(0.8, 0.9, 2.5)):
    """A fake task under `root/task`; returns `{case: (image (x, y, z, c), label (x, y, z))}`."""
    task_dir = os.path.join(root, task)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(task_dir, sub))
    channels, labels = len(MODALITY[task]), len(LABELS[task])
    cases, training = {}, []
    for n, shape in enumerate(shapes):
        case = f"{task.split('_')[1].lower()}_{n:03d}"
        image = rng.normal(size=shape + (channels,)).astype(np.float32)
        label = rng.integers(0, labels, size=shape).astype(np.uint8)
        _save(os.path.join(task_dir, "imagesTr", case + ".nii.gz"),
              image if channels > 1 else image[..., 0], zooms)
        _save(os.path.join(task_dir, "labelsTr", case + ".nii.gz"), label, zooms)
        cases[case] = (image, label)
        training.append({"image": f"./imagesTr/{case}.nii.gz",
                         "label": f"./labelsTr/{case}.nii.gz"})
    with open(os.path.join(task_dir, "imagesTr", "._" + case + ".nii.gz"), "wb") as f:
        f.write(b"\x00\x05\x16\x07 AppleDouble")  # as in the real archives: must be ignored
    _save(os.path.join(task_dir, "imagesTs", "test_000.nii.gz"), np.zeros((3, 4, 5), np.float32),
          zooms)
    meta = {"name": task, "tensorImageSize": "4D" if channels > 1 else "3D",
            "modality": MODALITY[task], "labels": LABELS[task], "numTraining": len(shapes),
            "numTest": 1, "training": training, "test": ["./imagesTs/test_000.nii.gz"]}
    with open(os.path.join(task_dir, "dataset.json"), "w") as f:
        json.dump(meta, f)
    return cases


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """Both tasks written, then prepared with TFDS: (root, data_dir, {task: cases})."""
    import tensorflow_datasets as tfds

    from segjax.data import prepare

    root = str(tmp_path_factory.mktemp("msd"))
    rng = np.random.default_rng(0)
    cases = {HIPPO: write_task(root, HIPPO, [(7, 6, 5), (5, 8, 4), (6, 5, 7), (4, 4, 4),
                                             (8, 5, 3)], rng),
             BRAIN: write_task(root, BRAIN, [(6, 5, 4), (5, 7, 3)], rng)}
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.disable_progress_bar()
    for task in cases:
        prepare(msd_info(task, root), data_dir, manual_dir=root)
    return root, data_dir, cases


def test_axis_order_and_spacing_of_an_asymmetric_volume(tmp_path):
    """Voxel (x, y, z) = (i, j, k) holds 100 i + 10 j + k: the builder's [d, h, w] must hold
    100 w + 10 h + d, and spacing must be pixdim reversed."""
    i, j, k = np.meshgrid(np.arange(4), np.arange(3), np.arange(2), indexing="ij")
    image = (100 * i + 10 * j + k).astype(np.float32)
    _save(str(tmp_path / "im.nii.gz"), image, (0.5, 0.7, 3.0))
    _save(str(tmp_path / "lb.nii.gz"), (i == 3).astype(np.uint8), (0.5, 0.7, 3.0))
    case = msd.read_case(str(tmp_path / "im.nii.gz"), str(tmp_path / "lb.nii.gz"), 2, 1)
    d, h, w = np.meshgrid(np.arange(2), np.arange(3), np.arange(4), indexing="ij")
    np.testing.assert_array_equal(case["image"][..., 0], 100 * w + 10 * h + d)
    np.testing.assert_array_equal(case["label"], (w == 3).astype(np.uint8))
    assert case["image"].shape == (2, 3, 4, 1) and case["label"].dtype == np.uint8
    np.testing.assert_array_equal(case["spacing"], np.float32([3.0, 0.7, 0.5]))


def test_registry_takes_names_and_channels_from_dataset_json(fake, monkeypatch):
    root, _, _ = fake
    from monai.data import load_decathlon_properties

    for task in (HIPPO, BRAIN):
        info = msd_info(task, root)
        props = load_decathlon_properties(os.path.join(root, task, "dataset.json"),
                                          ["labels", "modality"])
        assert info.class_names == tuple(props["labels"][str(k)] for k in range(len(
            props["labels"])))
        assert info.num_classes == len(LABELS[task]) and info.label_key == "label"
    assert msd_info(BRAIN, root).class_names[2:] == ("non-enhancing tumor", "enhancing tumour")
    monkeypatch.setenv("SEGJAX_MSD_ROOT", root)
    from segjax.data import get_dataset_info
    assert get_dataset_info(f"msd/{HIPPO}").class_names == ("background", "Anterior", "Posterior")
    monkeypatch.delenv("SEGJAX_MSD_ROOT")
    with pytest.raises(ValueError, match="SEGJAX_MSD_ROOT"):
        get_dataset_info(f"msd/{HIPPO}")
    with pytest.raises(ValueError, match="task"):
        msd_info("Task11_Kidney", root)


def test_built_splits_hold_every_case_as_monai_reads_it(fake):
    """Each training case of dataset.json (as MONAI lists it) once across train + validation;
    image, label and spacing equal MONAI's LoadImage of the same files, transposed to (z, y, x)."""
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImage

    from segjax.data.records import _builder

    root, data_dir, cases = fake
    load = LoadImage(reader="NibabelReader", image_only=False, dtype=None)
    for task, written in cases.items():
        builder = _builder(msd_info(task, root), data_dir)
        got = {}
        for split in ("train", "validation"):
            source = builder.as_data_source(split)
            got.update({source[i]["id"].decode(): source[i] for i in range(len(source))})
            assert len(source) == {5: {"train": 4, "validation": 1},
                                   2: {"train": 1, "validation": 1}}[len(written)][split]
        listed = load_decathlon_datalist(os.path.join(root, task, "dataset.json"), True,
                                         "training", os.path.join(root, task))
        assert sorted(got) == sorted(written) and len(listed) == len(written)
        for entry in listed:
            case = os.path.basename(entry["image"]).removesuffix(".nii.gz")
            image, meta = load(entry["image"])
            label, _ = load(entry["label"])
            image = np.asarray(image).reshape(tuple(meta["spatial_shape"]) + (-1,))
            ex = got[case]
            np.testing.assert_array_equal(ex["image"], image.transpose(2, 1, 0, 3))
            np.testing.assert_array_equal(ex["label"], np.asarray(label).transpose(2, 1, 0))
            np.testing.assert_allclose(ex["spacing"], np.asarray(meta["pixdim"][1:4])[::-1],
                                       rtol=1e-6)
            np.testing.assert_array_equal(ex["image"][..., -1],  # the last modality's own values
                                          written[case][0][..., -1].transpose(2, 1, 0))


def test_split_is_seeded_and_keeps_every_case():
    cases = [(f"c{n:02d}", "", "") for n in range(10)]
    a = msd.split_cases(cases, 0.2, 0, HIPPO)
    assert len(a["validation"]) == 2 and sorted(a["train"] + a["validation"]) == cases
    assert a == msd.split_cases(list(reversed(cases))[::-1], 0.2, 0, HIPPO)
    assert any(msd.split_cases(cases, 0.2, s, HIPPO) != a for s in range(1, 4))


# ------------------------------------------------------------------------ malformed input

FAULTS = ["missing_label", "shape", "label_value", "label_fraction", "nan", "inf", "channels",
          "spacing", "not_nifti", "zero_pixdim"]


def _write_fault(tmp, fault, rng, shape):
    """One case with `fault` (or none): returns (image path, label path, bad path, want)."""
    image = rng.normal(size=shape).astype(np.float32)
    label = rng.integers(0, 3, size=shape).astype(np.uint8)
    zooms, label_zooms = (1.0, 1.5, 2.0), (1.0, 1.5, 2.0)
    im, lb = os.path.join(tmp, "case.nii.gz"), os.path.join(tmp, "case_label.nii.gz")
    bad = {"missing_label": lb, "shape": lb, "label_value": lb, "label_fraction": lb,
           "spacing": lb}.get(fault, im)
    if fault == "shape":
        label = label[:-1]
    elif fault == "label_value":
        label.flat[rng.integers(label.size)] = 3
    elif fault == "label_fraction":
        label = label.astype(np.float32)
        label.flat[rng.integers(label.size)] = 1.5
    elif fault in ("nan", "inf"):
        image.flat[rng.integers(image.size)] = np.nan if fault == "nan" else -np.inf
    elif fault == "channels":
        image = np.stack([image, image], -1)
    elif fault == "spacing":
        label_zooms = (1.0, 1.5, 2.5)
    _save(im, image, zooms)
    if fault == "zero_pixdim":
        nifti = nib.load(im)
        nifti.header["pixdim"][3] = 0.0
        nib.save(nib.Nifti1Image(image, None, nifti.header), im)
    if fault == "not_nifti":
        with open(im, "wb") as f:
            f.write(rng.bytes(64))
    if fault != "missing_label":
        _save(lb, label, label_zooms)
    return im, lb, bad, (image, label)


@pytest.mark.parametrize("fault", [None] + FAULTS)
@settings(max_examples=max(3, settings().max_examples // 8))
@given(seed=st.integers(0, 2**16), shape=st.tuples(*[st.integers(1, 5)] * 3))
def test_a_case_reads_exactly_or_fails_naming_the_file(tmp_path_factory, fault, seed, shape):
    """Property: a valid case reads exactly as written (transposed to (z, y, x)); a case with one
    fault stops with ValueError/FileNotFoundError naming the faulty file."""
    tmp = str(tmp_path_factory.mktemp("case"))
    rng = np.random.default_rng(seed)
    im, lb, bad, (image, label) = _write_fault(tmp, fault, rng, shape)
    if fault is None:
        case = msd.read_case(im, lb, 3, 1)
        np.testing.assert_array_equal(case["image"][..., 0], image.transpose(2, 1, 0))
        np.testing.assert_array_equal(case["label"], label.transpose(2, 1, 0))
        return
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        msd.read_case(im, lb, 3, 1)
    assert bad in str(e.value), (fault, str(e.value))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("labels"), "'labels'"),
    (lambda m: m.update(labels={"0": "background", "2": "x"}), "ids must be 0..1"),
    (lambda m: m.update(modality={"a": "MRI"}), "keys must be integers"),
    (lambda m: m["training"].append(dict(m["training"][0])), "listed twice"),
    (lambda m: m["training"].append({"image": "../../etc/x.nii.gz", "label": "x"}),
     "points outside"),
    (lambda m: m.update(training=[]), "'training'"),
])
def test_bad_dataset_json_fails_naming_it(tmp_path, edit, match):
    write_task(str(tmp_path), HIPPO, [(3, 3, 3)], np.random.default_rng(1))
    path = tmp_path / HIPPO / "dataset.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match) as e:
        msd.read_dataset_json(str(tmp_path / HIPPO))
    assert str(path) in str(e.value)


def test_build_stops_naming_the_bad_file_and_missing_task_fails_at_once(tmp_path):
    from segjax.data import prepare

    root = str(tmp_path / "manual")
    write_task(root, HIPPO, [(3, 4, 5), (4, 3, 2)], np.random.default_rng(2))
    bad = os.path.join(root, HIPPO, "labelsTr", "hippocampus_001.nii.gz")
    _save(bad, np.full((4, 3, 2), 7, np.uint8), (0.8, 0.9, 2.5))
    with pytest.raises(ValueError, match="hippocampus_001.nii.gz.*values \\[7\\]"):
        prepare(msd_info(HIPPO, root), str(tmp_path / "tfds"), manual_dir=root)
    with pytest.raises(FileNotFoundError,
                       match="(?s)Task09_Spleen/dataset.json.*Task09_Spleen.tar.*medicaldecathlon"):
        msd_info("Task09_Spleen", root)


def test_task_archive_as_downloaded_builds_the_same(tmp_path):
    """`<manual>/<task>.tar` (the download, not extracted): dataset.json read from the archive for
    the registry, the volumes as written; a file that is not a tar stops naming it."""
    import tarfile

    from segjax.data import prepare
    from segjax.data.records import _builder

    written = write_task(str(tmp_path / "stage"), HIPPO, [(4, 3, 2), (2, 5, 3)],
                         np.random.default_rng(4))
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / f"{HIPPO}.tar", "w") as archive:
        archive.add(tmp_path / "stage" / HIPPO, arcname=HIPPO)
    info = msd_info(HIPPO, str(manual))
    assert info.class_names == ("background", "Anterior", "Posterior")
    prepare(info, str(tmp_path / "tfds"), manual_dir=str(manual))
    builder = _builder(info, str(tmp_path / "tfds"))
    got = {}
    for split in ("train", "validation"):
        source = builder.as_data_source(split)
        got.update({source[i]["id"].decode(): source[i] for i in range(len(source))})
    assert sorted(got) == sorted(written)
    for case, (image, label) in written.items():
        np.testing.assert_array_equal(got[case]["image"], image.transpose(2, 1, 0, 3))
        np.testing.assert_array_equal(got[case]["label"], label.transpose(2, 1, 0))
    (manual / f"{BRAIN}.tar").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match=f"{BRAIN}.tar is not a Decathlon task archive"):
        msd_info(BRAIN, str(manual))
