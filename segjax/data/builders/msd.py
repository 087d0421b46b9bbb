"""`msd`: the Medical Segmentation Decathlon (Antonelli et al. 2022, Nat. Commun. 13:4128),
built from a manual directory as the tasks are distributed.

One builder config per task (`msd/Task01_BrainTumour` ... `msd/Task10_Colon`), each read from
`<manual_dir>/<task>/` or, if that is absent, from the archive as downloaded,
`<manual_dir>/<task>.tar` (extracted by TFDS into its download folder):

    dataset.json         "labels" {"0": "background", "1": ...}, "modality" {"0": "MRI", ...},
                         "training" [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/..."}]
    imagesTr/*.nii.gz    3-D (x, y, z) or, with several modalities, 4-D (x, y, z, c) volumes
    labelsTr/*.nii.gz    3-D (x, y, z) integer class ids
    imagesTs/*.nii.gz    unlabelled test volumes: not built (nothing to train or score on)

Only the cases that dataset.json lists are read (the archives also hold macOS `._*` files beside
the volumes). Class names come from `dataset.json["labels"]` and modalities from
`dataset.json["modality"]`, never from a table in the code: MONAI's BraTS tutorial assumed label
2 = enhancing tumour, while Task01's dataset.json says 2 = "non-enhancing tumor" and 3 =
"enhancing tumour" (Project-MONAI/tutorials issue 1355).

Each example: `image` float32 `[D, H, W, C]` (C = the modalities in dataset.json's order),
`label` uint8 `[D, H, W]`, `spacing` float32 `[3]` (mm along D, H, W), `id` (the file name
without `.nii.gz`). Axis order: NIfTI stores voxel (i, j, k) along (x, y, z); the builder
transposes to (k, j, i) = (D, H, W) = (z, y, x), the order SimpleITK's `GetArrayFromImage` and
nnU-Net use, without reorienting (the voxel order on disk is kept), and spacing is the header's
pixdim (`get_zooms()`) in the same reversed order. Splits: `train` and `validation`, a seeded
hold-out of `validation_fraction` of the training cases (`split_cases`).

Every case is read and checked while building; each failure names the file: a file missing or
not NIfTI, a volume larger than MAX_VOXELS, an image whose channel count differs from the
modalities, a label of another shape or spacing than its image, label values that are not
integers or not keys of dataset.json's "labels", a non-finite image voxel, a non-positive
spacing, a path in dataset.json leading outside the task folder. nibabel (MIT) reads NIfTI; it
is an optional dependency (`pip install nibabel`), imported only here.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tarfile
import zlib

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders._common import LocalCodePath, manual_dir_of

TASKS = ("Task01_BrainTumour", "Task02_Heart", "Task03_Liver", "Task04_Hippocampus",
         "Task05_Prostate", "Task06_Lung", "Task07_Pancreas", "Task08_HepaticVessel",
         "Task09_Spleen", "Task10_Colon")
# The most voxels (times channels) one volume may claim: 10^9, 4 GB as float32. The largest MSD
# volumes (Task03 liver CT) hold about 2.7e8; a header claiming more is refused before reading.
MAX_VOXELS = 10**9
MSD_URL = "http://medicaldecathlon.com/"

INSTRUCTIONS = f"""\
The Medical Segmentation Decathlon task is not prepared yet. Download the task's archive
<task>.tar from {MSD_URL} into the manual directory (as it is, or extracted so that
<manual_dir>/<task>/dataset.json, imagesTr/ and labelsTr/ exist), then build with
  python -m segjax.data prepare msd/<task> --data_dir=DATA_DIR --manual_dir=MANUAL_DIR
(export SEGJAX_MSD_ROOT=MANUAL_DIR too: the dataset registry reads the class names from there)."""


@dataclasses.dataclass(eq=False)
class MsdConfig(tfds.core.BuilderConfig):
    """One task. `validation_fraction` of the training cases (at least one when there are two or
    more) form the `validation` split, chosen by `seed` (`split_cases`)."""

    validation_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got "
                             f"{self.validation_fraction}")


BUILDER_CONFIGS = [MsdConfig(name=task, description=f"Medical Segmentation Decathlon {task}")
                   for task in TASKS]


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise ImportError("reading the Medical Segmentation Decathlon (NIfTI files) needs "
                          "nibabel: pip install nibabel") from None
    return nibabel


def _id_map(entries, key: str, path: str) -> dict[int, str]:
    """`{int id: name}` of dataset.json's `key` ("labels" or "modality"): ids 0..n-1."""
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: '{key}' must be a non-empty object of id -> name")
    try:
        table = {int(k): str(v) for k, v in entries.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{path}: '{key}' keys must be integers, got {sorted(entries)}") from None
    if sorted(table) != list(range(len(table))):
        raise ValueError(f"{path}: '{key}' ids must be 0..{len(table) - 1}, got {sorted(table)}")
    if key == "labels" and len(table) > 255:
        raise ValueError(f"{path}: {len(table)} labels; segjax stores at most 255 (uint8)")
    return table


def read_dataset_json(task_dir: str, text: bytes | None = None) -> dict:
    """dataset.json of a task folder with `labels` and `modality` as `{int: name}` and
    `training` as `[(case id, image path, label path)]` (absolute). Raises naming the file.
    `text`: the file's bytes when it is read from elsewhere (a task archive)."""
    path = os.path.join(task_dir, "dataset.json")
    if text is None and not os.path.isfile(path):
        raise FileNotFoundError(f"Missing {path}.\n" + INSTRUCTIONS.replace(
            "<manual_dir>/<task>", task_dir).replace("<task>", os.path.basename(task_dir)))
    try:
        if text is None:
            with open(path, "rb") as f:
                text = f.read()
        meta = json.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object")
    labels = _id_map(meta.get("labels"), "labels", path)
    modality = _id_map(meta.get("modality"), "modality", path)
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise ValueError(f"{path}: 'training' must be a non-empty list of "
                         "{'image': ..., 'label': ...}")
    cases, seen = [], set()
    root = os.path.realpath(task_dir)
    for n, entry in enumerate(training):
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str)
                and isinstance(entry.get("label"), str)):
            raise ValueError(f"{path}: training[{n}] must be {{'image': str, 'label': str}}")
        files = [os.path.realpath(os.path.join(task_dir, entry[k])) for k in ("image", "label")]
        if any(os.path.commonpath([root, f]) != root for f in files):
            raise ValueError(f"{path}: training[{n}] points outside {task_dir}: {entry}")
        case = os.path.basename(files[0]).removesuffix(".gz").removesuffix(".nii")
        if case in seen:
            raise ValueError(f"{path}: case {case!r} is listed twice")
        seen.add(case)
        cases.append((case, files[0], files[1]))
    return {"labels": labels, "modality": modality, "training": cases, "path": path}


def split_cases(cases: list, fraction: float, seed: int, task: str) -> dict[str, list]:
    """`{"train": [...], "validation": [...]}`: the cases sorted by id, permuted by a generator
    seeded with `(seed, crc32(task))`; the last round(n * fraction) (>= 1 when n >= 2 and
    fraction > 0) are validation. Each keeps dataset.json's order."""
    order = sorted(range(len(cases)), key=lambda i: cases[i][0])
    order = [order[i] for i in np.random.default_rng(
        [seed, zlib.crc32(task.encode())]).permutation(len(order))]
    count = int(round(len(cases) * fraction))
    if fraction > 0 and len(cases) >= 2:
        count = min(max(count, 1), len(cases) - 1)
    held = set(order[len(order) - count:])
    return {"train": [c for i, c in enumerate(cases) if i not in held],
            "validation": [c for i, c in enumerate(cases) if i in held]}


def load_nifti(path: str, what: str):
    """(array in NIfTI voxel order (x, y, z[, c]), zooms (x, y, z) in mm) of a NIfTI file; its
    size is checked from the header before any voxel is read."""
    nib = _nibabel()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing {what} {path}")
    try:
        volume = nib.load(path)
        shape = tuple(int(s) for s in volume.shape)
    except Exception as e:  # nibabel raises several types for damaged or foreign files
        raise ValueError(f"Unreadable {what} {path} (not NIfTI?): {e!r}") from None
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise ValueError(f"{what} {path} claims {shape} voxels, more than the {MAX_VOXELS:,} "
                         "segjax reads (a damaged header?)")
    zooms = np.asarray(volume.header.get_zooms()[:3], np.float64)
    if len(shape) < 3 or len(zooms) < 3 or not (np.isfinite(zooms).all() and (zooms > 0).all()):
        raise ValueError(f"{what} {path} must be 3-D with positive voxel sizes (pixdim); got "
                         f"shape {shape}, pixdim {zooms.tolist()}")
    try:
        data = np.asanyarray(volume.dataobj)
    except Exception as e:
        raise ValueError(f"Unreadable {what} {path} (truncated?): {e!r}") from None
    return data, zooms


def read_case(image_path: str, label_path: str, num_labels: int, num_channels: int) -> dict:
    """One training case: `image` float32 `[D, H, W, C]`, `label` uint8 `[D, H, W]`, `spacing`
    float32 `[3]` (mm along D, H, W), transposed from NIfTI's (x, y, z[, c]); checked (see the
    module docstring), failures name the file."""
    image, zooms = load_nifti(image_path, "MSD image")
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4 or image.shape[3] != num_channels:
        raise ValueError(f"MSD image {image_path} has shape {image.shape}; dataset.json lists "
                         f"{num_channels} modalities, so it must be (x, y, z"
                         f"{', ' + str(num_channels) if num_channels > 1 else ''})")
    label, label_zooms = load_nifti(label_path, "MSD label")
    if label.shape != image.shape[:3]:
        raise ValueError(f"MSD label {label_path} has shape {label.shape}, its image "
                         f"{image_path} has {image.shape[:3]} (x, y, z)")
    if not np.allclose(label_zooms, zooms, rtol=1e-4):
        raise ValueError(f"MSD label {label_path} has voxel size {label_zooms.tolist()} mm, its "
                         f"image {image_path} {zooms.tolist()} mm")
    image = np.asarray(image, np.float32)
    if not np.isfinite(image).all():
        bad = np.argwhere(~np.isfinite(image))[0][:3].tolist()
        raise ValueError(f"MSD image {image_path} holds non-finite voxels (first at (x, y, z) = "
                         f"{bad})")
    values = np.unique(label)
    if not (np.isfinite(values).all() and (values == np.round(values)).all()):
        raise ValueError(f"MSD label {label_path} holds non-integer values")
    bad = values[(values < 0) | (values >= num_labels)]
    if bad.size:
        raise ValueError(f"MSD label {label_path} holds values {bad[:10].tolist()} that are not "
                         f"labels of dataset.json (0..{num_labels - 1})")
    return {"image": np.ascontiguousarray(image.transpose(2, 1, 0, 3)),
            "label": np.ascontiguousarray(label.astype(np.uint8).transpose(2, 1, 0)),
            "spacing": zooms[::-1].astype(np.float32)}


def find_task(manual_dir: str, task: str) -> tuple[str, str]:
    """`("dir", <manual_dir>/<task>)` when the extracted task is there (it has dataset.json),
    else `("tar", <manual_dir>/<task>.tar)` (the archive as downloaded); raises
    FileNotFoundError with instructions when neither is."""
    task_dir = os.path.join(manual_dir, task)
    if os.path.isfile(os.path.join(task_dir, "dataset.json")):
        return "dir", task_dir
    archive = os.path.join(manual_dir, task + ".tar")
    if os.path.isfile(archive):
        return "tar", archive
    raise FileNotFoundError(f"Missing {os.path.join(task_dir, 'dataset.json')} (and "
                            f"{archive}).\n" + INSTRUCTIONS.replace("<task>", task))


def read_task_meta(manual_dir: str, task: str) -> dict:
    """`read_dataset_json` of the task in `manual_dir`, extracted or still in its archive (only
    `<task>/dataset.json` is read from it)."""
    kind, path = find_task(manual_dir, task)
    if kind == "dir":
        return read_dataset_json(path)
    member = f"{task}/dataset.json"
    try:
        with tarfile.open(path) as archive:
            text = archive.extractfile(member).read()
    except (tarfile.TarError, KeyError, AttributeError, OSError) as e:
        raise ValueError(f"{path} is not a Decathlon task archive holding {member}: "
                         f"{e!r}") from None
    return read_dataset_json(os.path.join(path, task), text)


class Msd(LocalCodePath, tfds.core.GeneratorBasedBuilder):
    """Medical Segmentation Decathlon task from the manual directory; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train/validation hold-out of the labelled cases."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(None, None, None, None), dtype=np.float32,
                                              encoding="zlib"),
                "label": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8,
                                              encoding="zlib"),
                "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                "id": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            homepage=MSD_URL,
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        kind, task_dir = find_task(manual_dir_of(dl_manager), config.name)
        if kind == "tar":
            task_dir = os.path.join(os.fspath(dl_manager.extract(task_dir)), config.name)
        meta = read_dataset_json(task_dir)
        splits = split_cases(meta["training"], config.validation_fraction, config.seed,
                             config.name)
        return {name: self._generate_examples(cases, len(meta["labels"]), len(meta["modality"]))
                for name, cases in splits.items()}

    def _generate_examples(self, cases, num_labels, num_channels):
        for case, image_path, label_path in cases:
            yield case, {**read_case(image_path, label_path, num_labels, num_channels),
                         "id": case}

    def check_source_data(self, manual_dir: str, *, download: bool = False) -> None:
        """Raises at once, with instructions, when the task (extracted or as `<task>.tar`) is
        missing or its dataset.json is malformed (MSD has no automatic download here)."""
        del download
        read_task_meta(manual_dir, self.builder_config.name)
