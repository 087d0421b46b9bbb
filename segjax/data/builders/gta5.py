"""`gta5`: GTA5, "Playing for Data" (Richter et al., ECCV 2016), the UDA papers' source domain.

24,966 frames of the game Grand Theft Auto V (1914x1052 in the main) with Cityscapes-style
labels. The release is ten pairs of zip parts, `01_images.zip ... 10_images.zip` and
`01_labels.zip ... 10_labels.zip` (https://download.visinf.tu-darmstadt.de/data/from_games/),
unpacked into one folder:

    <root>/images/00001.png ... 24966.png   RGB frames
    <root>/labels/00001.png ... 24966.png   palette PNGs: the pixel's index is its Cityscapes
                                            labelId 0..33 (the palette only colours it)
    <root>/split.mat                        optional, from the site's code package: trainIds,
                                            valIds, testIds (column vectors of frame numbers)

`<root>` is the manual directory itself or its `gta5/` or `GTA5/` folder. The builder stores the
raw labelIds (`segmentation_mask`, uint8 `[H, W, 1]`); the registry's `gta5` entry maps them to
the 19 Cityscapes train ids with the `cityscapes` entry's own table (AdaptSegNet's, FDA's and
DACS's `id_to_trainid`: 7 -> 0 road, ..., 33 -> 18 bicycle, every other id -> ignore 255).

Splits: `train` is every frame found (24,966 in the full release), as the UDA papers train on
all of them. `validation` is 2 % of them (500 of 24,966; `validation_ids`: the ids sorted by
`sha256("gta5:" + id)`, the first ceil(n / 50)), a subset of `train`: the trainer opens the
source's eval split, which shares its name with Cityscapes' (`validation`), though the uda task
scores only the target. With `split.mat` present, `official_train`, `official_val` and
`official_test` hold Richter et al.'s split (frames that the folder lacks fail the build by
name).

Known fault of the release: a few frames' label PNGs differ in size from their image. The UDA
loaders resize each image (bicubic) and each label (nearest) to 1280x720 independently, and
mmsegmentation's converter resizes both to 1914x1052 the same way, so a mismatched label is
stretched over its image. The builder does the same once, at the image's own size: the label is
resized with nearest-neighbour sampling (`resize_nearest`, pixel centres; no new labelIds) to
its image's height and width, the image is kept as captured, and each such frame is logged with
both sizes.

Every image is decoded once while building. A missing `images/` or `labels/` folder (with
instructions), a frame without its label or a label without its frame, a label that is not a
palette PNG or holds an index above 33, a corrupt or non-RGB image, or a `split.mat` naming a
frame twice or one that is not there stops the build naming the file. Nothing is skipped.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders._common import (LocalCodePath, manual_dir_of, open_image,
                                          semantic_features)
from segjax.data.builders.voc2012_segmentation import mat_inflated_size, read_image_size

HOMEPAGE = "https://download.visinf.tu-darmstadt.de/data/from_games/"
NUM_LABEL_IDS = 34  # Cityscapes labelIds 0..33
FRAME = re.compile(r"(\d{5})\.png")
SPLIT_KEYS = {"official_train": "trainIds", "official_val": "valIds",
              "official_test": "testIds"}

INSTRUCTIONS = f"""\
GTA5 is not prepared yet. Download the ten image parts (01_images.zip ... 10_images.zip) and
the ten label parts (01_labels.zip ... 10_labels.zip) from
  {HOMEPAGE}
and unpack them all into one folder of the manual directory, so that
<manual_dir>/gta5/images/00001.png and <manual_dir>/gta5/labels/00001.png exist (optionally add
split.mat from the site's code package for the official train/val/test split), then build with
  python -m segjax.data prepare gta5 --data_dir=DATA_DIR --manual_dir=MANUAL_DIR"""


def find_root(manual_dir: str) -> str:
    """The folder holding `images/` and `labels/` under `manual_dir` (itself, `gta5/` or
    `GTA5/`); raises FileNotFoundError with instructions when there is none."""
    for sub in ("", "gta5", "GTA5"):
        root = os.path.join(manual_dir, sub)
        if all(os.path.isdir(os.path.join(root, d)) for d in ("images", "labels")):
            return root
    raise FileNotFoundError(f"Missing the GTA5 release in {manual_dir!r} (no images/ and "
                            "labels/ folders there or in gta5/).\n"
                            + INSTRUCTIONS.replace("<manual_dir>", manual_dir))


def _frames(folder: str) -> set[str]:
    return {m.group(1) for name in os.listdir(folder) if (m := FRAME.fullmatch(name))}


def frame_files(root: str) -> dict[str, tuple[str, str]]:
    """`{frame id: (image path, label path)}` of every `NNNNN.png` in `root/images`, in id
    order. Raises FileNotFoundError naming a frame's missing label (or a label's missing frame),
    ValueError when there is no frame."""
    images_dir, labels_dir = os.path.join(root, "images"), os.path.join(root, "labels")
    images, labels = _frames(images_dir), _frames(labels_dir)
    for missing, have, what in ((sorted(images - labels), labels_dir, "label"),
                                (sorted(labels - images), images_dir, "image")):
        if missing:
            raise FileNotFoundError(
                f"Missing GTA5 {what} {os.path.join(have, missing[0] + '.png')} ({len(missing)} "
                f"{what}s missing in all; re-extract the zip part that holds frame {missing[0]})")
    if not images:
        raise ValueError(f"{images_dir} holds no NNNNN.png frame; is it GTA5's images/ folder?")
    return {i: (os.path.join(images_dir, f"{i}.png"), os.path.join(labels_dir, f"{i}.png"))
            for i in sorted(images)}


def validation_ids(ids) -> list[str]:
    """The `validation` frames of `ids` (module docstring): sorted by `sha256("gta5:" + id)`,
    the first ceil(len / 50)."""
    order = sorted(ids, key=lambda i: hashlib.sha256(f"gta5:{i}".encode()).hexdigest())
    return order[:-(-len(order) // 50)]


def read_split_ids(path: str, frames) -> dict[str, list[str]]:
    """`{official_train|official_val|official_test: [frame id]}` from Richter et al.'s
    `split.mat`; raises ValueError naming the file when a key is missing, a frame is listed
    twice, or a listed frame is not among `frames`."""
    import scipy.io

    mat_inflated_size(path, what="GTA5 split file")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for damaged .mat files
        raise ValueError(f"Unreadable GTA5 split file {path}: {e!r}") from None
    frames, seen, splits = set(frames), set(), {}
    for split, key in SPLIT_KEYS.items():
        if key not in mat:
            raise ValueError(f"GTA5 split file {path} has no {key!r} (keys: "
                             f"{sorted(k for k in mat if not k.startswith('__'))})")
        numbers = np.asarray(mat[key]).ravel()
        if numbers.dtype.kind not in "uif" or not np.all(np.isfinite(numbers)) or np.any(
                numbers != np.round(numbers)):
            raise ValueError(f"GTA5 split file {path}: {key} does not hold frame numbers")
        ids = [f"{int(n):05d}" for n in numbers]
        for i in ids:
            if i in seen:
                raise ValueError(f"GTA5 split file {path} lists frame {i} twice")
            if i not in frames:
                raise ValueError(f"GTA5 split file {path} lists frame {i} ({key}), which the "
                                 "images/ folder lacks")
            seen.add(i)
        splits[split] = ids
    return splits


def resize_nearest(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """`label` `[h, w]` resampled to `hw` `(H, W)` by nearest neighbour: output row i is input
    row floor((i + 0.5) * h / H), columns alike (pixel centres; torch's "nearest-exact")."""
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * label.shape[0] / hw[0]).astype(np.int64),
                      label.shape[0] - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * label.shape[1] / hw[1]).astype(np.int64),
                      label.shape[1] - 1)
    return label[rows[:, None], cols[None, :]]


def read_label(path: str, image_hw: tuple[int, int]) -> np.ndarray:
    """The labelIds uint8 `[H, W, 1]` of a GTA5 label PNG (its palette indices), at the image's
    size `image_hw` (a label of another size is resized with nearest-neighbour sampling, see
    the module docstring). Raises ValueError naming the file when it is not a palette PNG, is
    corrupt, or holds an index above 33."""
    with open_image(path, "GTA5 label") as im:
        if im.mode != "P":
            raise ValueError(f"GTA5 label {path} has mode {im.mode}, expected a palette PNG whose "
                             "indices are Cityscapes labelIds (a colour-converted label cannot "
                             "be read back: re-extract the original)")
        try:
            im.load()
            label = np.asarray(im)
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"Corrupt or unreadable GTA5 label {path}: {e}") from None
    if label.shape != tuple(image_hw):
        logging.warning("GTA5 label %s is %dx%d (HxW), its image %dx%d: label resized "
                        "(nearest) to the image's size", path, *label.shape, *image_hw)
        label = resize_nearest(label, image_hw)
    if label.max(initial=0) >= NUM_LABEL_IDS:
        bad = np.unique(label[label >= NUM_LABEL_IDS])
        raise ValueError(f"GTA5 label {path} holds indices {bad[:8].tolist()} above "
                         f"{NUM_LABEL_IDS - 1}, the last Cityscapes labelId")
    return label.astype(np.uint8)[..., None]


class GTA5(LocalCodePath, tfds.core.GeneratorBasedBuilder):
    """GTA5 frames with their Cityscapes labelIds; see the module docstring."""

    name = "gta5"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train (all frames), validation (2 % of them); official_train, "
                                "official_val, official_test from split.mat when present."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=semantic_features("png"),
            supervised_keys=("image", "segmentation_mask"),
            homepage=HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        root = find_root(manual_dir_of(dl_manager))
        frames = frame_files(root)
        splits = {"train": list(frames), "validation": validation_ids(frames)}
        split_mat = os.path.join(root, "split.mat")
        if os.path.isfile(split_mat):
            splits.update(read_split_ids(split_mat, frames))
        return {split: self._generate_examples([(i, *frames[i]) for i in ids])
                for split, ids in splits.items()}

    def _generate_examples(self, frames):
        for frame_id, image_path, label_path in frames:
            hw = read_image_size(image_path)  # decoded whole: a truncated PNG fails here
            yield frame_id, {"image": image_path,
                             "segmentation_mask": read_label(label_path, hw),
                             "image_id": frame_id}

    def check_source_data(self, manual_dir: str, *, download: bool = False) -> None:
        """Raises FileNotFoundError with instructions at once when the release is missing
        (there is no download: twenty zip parts from the project's site)."""
        del download
        find_root(manual_dir)
