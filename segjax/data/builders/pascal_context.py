"""`pascal_context`: PASCAL-Context (Mottaghi et al., CVPR 2014), the 59 frequent classes.

PASCAL-Context labels every pixel of the 10,103 VOC 2010 `trainval` images with one of 459
classes. Segmentation papers (ParseNet, EncNet, PSPNet, DeepLab, ...) train and evaluate on the 59
most frequent ones: splits `train` (4,998) and `val` (5,105) are VOC 2010's
`ImageSets/Main/{train,val}.txt`.

Built from the original release, no conversion step: VOC 2010's JPEGs and split lists, and
`trainval/<image_id>.mat` (MATLAB v5, variable `LabelMap`, uint16 ids into the 459 classes of
`labels.txt`, 0 where nothing is labelled). The mask stored (`segmentation_mask`, uint8
`[H, W, 1]`) holds 0 for "background" (unlabelled pixels and the other 400 classes) and
1..59 for `CLASSES_59` in alphabetical order, the order of mmsegmentation's
`PascalContextDataset` and of PyTorch-Encoding's `ContextSegmentation` (their masks come from the
Detail API's 59-class export; the numbers they report use this order). Classes are found in
`labels.txt` by name; three of the 59 go by two names in the release (`LABEL_ALIASES`).

Two registry views read the same files (segjax.data.datasets): `pascal_context` (60 classes,
background is class 0, the "with background" protocol) and `pascal_context59` (59 classes,
background ignored, as mmsegmentation's `PascalContextDataset59` and EncNet's reported 51.7).

Every image is decoded once while building: a missing or corrupt JPEG or `.mat`, a label map
whose size differs from its image or holding an id outside `labels.txt`, a split list naming an
id twice, a `labels.txt` lacking one of the 59 classes, or a `.mat` inflating beyond the pixel
bound stops the build with the file's name. Nothing is skipped.
"""
from __future__ import annotations

import os
import re

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders._common import LocalCodePath, manual_dir_of, semantic_features
from segjax.data.builders.voc2012_segmentation import (_find_tree, mat_inflated_size, read_ids,
                                                       read_image_size)

VOC2010_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar"
VOC2010_TAR = "VOCtrainval_03-May-2010.tar"
CONTEXT_URL = "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz"
CONTEXT_TGZ = "trainval.tar.gz"
LABELS_URL = "https://cs.stanford.edu/~roozbeh/pascal-context/labels.txt"

# The 59 classes, in their training order (see the module docstring), as mmsegmentation names them.
CLASSES_59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")
# Names under which a class of CLASSES_59 may appear in labels.txt (the release's 59_labels.txt
# spells these three differently from its full list; either spelling is accepted).
LABEL_ALIASES = {"table": ("diningtable",), "bedclothes": ("bedcloth",), "cloth": ("clothes",)}
NUM_FULL_CLASSES = 459

INSTRUCTIONS = f"""\
PASCAL-Context is not prepared yet. Put these into the manual directory <manual_dir>:
  1. {VOC2010_TAR}  (1.3 GB)  from {VOC2010_URL}
     or the extracted tree <manual_dir>/VOCdevkit/VOC2010/{{JPEGImages,ImageSets/Main}}
  2. {CONTEXT_TGZ}  from {CONTEXT_URL}
     or the extracted folder <manual_dir>/trainval/ of <image_id>.mat files
  3. labels.txt (the 459 class names, "<id>: <name>" per line) from {LABELS_URL}
then build with
  python -m segjax.data prepare pascal_context --data_dir=DATA_DIR --manual_dir=MANUAL_DIR"""


def read_labels(path: str) -> dict[int, str]:
    """`{id: name}` of a PASCAL-Context `labels.txt` ("<id>: <name>" per line, ids 1..459);
    raises naming the file (and the line) when it is missing, malformed or repeats an id."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing PASCAL-Context class list {path}")
    labels = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            match = re.fullmatch(r"\s*(\d+)\s*:\s*(\S.*?)\s*", line)
            if match is None:
                raise ValueError(f"{path} line {number}: {line.strip()!r} is not '<id>: <name>'")
            k = int(match.group(1))
            if not 1 <= k <= NUM_FULL_CLASSES or k in labels:
                raise ValueError(f"{path} line {number}: id {k} is repeated or outside "
                                 f"1..{NUM_FULL_CLASSES}")
            labels[k] = match.group(2)
    if not labels:
        raise ValueError(f"{path} lists no classes")
    return labels


def _key(name: str) -> str:
    return re.sub(r"[\s_-]", "", name.lower())


def label_table(labels: dict[int, str], path: str = "labels.txt") -> np.ndarray:
    """uint8 `[NUM_FULL_CLASSES + 1]`: full-list id -> 1 + its index in CLASSES_59, 0 for every
    other id and for 0 (unlabelled). Names match ignoring case, spaces, '-' and '_', and through
    LABEL_ALIASES. Raises naming `path` when a class of CLASSES_59 is missing or named twice."""
    by_name: dict[str, list[int]] = {}
    for k, name in labels.items():
        by_name.setdefault(_key(name), []).append(k)
    table = np.zeros(NUM_FULL_CLASSES + 1, np.uint8)
    for index, name in enumerate(CLASSES_59, 1):
        found = [k for n in (name,) + LABEL_ALIASES.get(name, ()) for k in by_name.get(_key(n), [])]
        if len(found) != 1:
            raise ValueError(f"{path} must name class {name!r} once (found it {len(found)} "
                             "times); is it PASCAL-Context's labels.txt?")
        table[found[0]] = index
    return table


def read_label_map(path: str, image_hw: tuple, table: np.ndarray) -> np.ndarray:
    """The 59-class mask uint8 `[H, W, 1]` of a PASCAL-Context `.mat` (`LabelMap`, full-list
    ids); its inflated size is bounded before scipy reads it."""
    import scipy.io

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing PASCAL-Context label file {path}")
    mat_inflated_size(path, what="PASCAL-Context label file")
    try:
        label_map = np.asarray(scipy.io.loadmat(path)["LabelMap"])
    except Exception as e:  # scipy raises several types for damaged .mat files
        raise ValueError(f"Unreadable PASCAL-Context label file {path}: {e!r}") from None
    if label_map.shape != tuple(image_hw):
        raise ValueError(f"Label map {path} has size {label_map.shape}, its image has size "
                         f"{tuple(image_hw)}")
    if label_map.dtype.kind not in "ui" or label_map.min(initial=0) < 0 or (
            label_map.max(initial=0) >= len(table)):
        raise ValueError(f"Label map {path} holds values outside 0..{len(table) - 1} "
                         f"(dtype {label_map.dtype})")
    return table[label_map.astype(np.int64)][..., None]


def find_sources(manual_dir: str) -> dict:
    """`{"voc": (kind, path), "context": (kind, path), "labels": path}` under `manual_dir`
    (kind "dir" or "tar"); raises FileNotFoundError with instructions when anything is missing."""
    voc = _find_tree(manual_dir, (("VOCdevkit", "VOC2010"), ("VOC2010",)), "JPEGImages")
    context = _find_tree(manual_dir, ((),), "trainval")
    found = {"voc": ("dir", voc) if voc else None,
             "context": ("dir", os.path.join(context, "trainval")) if context else None}
    for key, archive in (("voc", VOC2010_TAR), ("context", CONTEXT_TGZ)):
        if found[key] is None and os.path.isfile(os.path.join(manual_dir, archive)):
            found[key] = ("tar", os.path.join(manual_dir, archive))
    labels = os.path.join(manual_dir, "labels.txt")
    found["labels"] = labels if os.path.isfile(labels) else None
    missing = [k for k, v in found.items() if v is None]
    if missing:
        what = {"voc": "VOC 2010", "context": "PASCAL-Context trainval", "labels": "labels.txt"}
        raise FileNotFoundError(f"Missing {' and '.join(what[m] for m in missing)} in "
                                f"{manual_dir!r}.\n"
                                + INSTRUCTIONS.replace("<manual_dir>", manual_dir, 1))
    return found


def split_examples(voc_dir: str, context_dir: str) -> dict:
    """`{split: [(image_id, image_path, mat_path)]}` from VOC 2010's `ImageSets/Main` lists."""
    sets = os.path.join(voc_dir, "ImageSets", "Main")
    return {split: [(i, os.path.join(voc_dir, "JPEGImages", f"{i}.jpg"),
                     os.path.join(context_dir, f"{i}.mat"))
                    for i in read_ids(os.path.join(sets, f"{split}.txt"))]
            for split in ("train", "val")}


class PascalContext(LocalCodePath, tfds.core.GeneratorBasedBuilder):
    """PASCAL-Context, 59 classes + background, from the original release."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train, val; 59 classes + background."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=semantic_features(),
            supervised_keys=("image", "segmentation_mask"),
            homepage="https://cs.stanford.edu/~roozbeh/pascal-context/",
        )

    def _split_generators(self, dl_manager):
        sources = find_sources(manual_dir_of(dl_manager))
        roots = {}
        for key, marker in (("voc", "JPEGImages"), ("context", "trainval")):
            kind, path = sources[key]
            if kind == "dir":
                roots[key] = path
                continue
            extracted = os.fspath(dl_manager.extract(path))
            found = _find_tree(extracted, (("VOCdevkit", "VOC2010"), ()), marker)
            if found is None:
                raise ValueError(f"{path} does not contain the expected {marker} folder")
            roots[key] = found if key == "voc" else os.path.join(found, "trainval")
        table = label_table(read_labels(sources["labels"]), sources["labels"])
        splits = split_examples(roots["voc"], roots["context"])
        return {name: self._generate_examples(examples, table)
                for name, examples in splits.items()}

    def _generate_examples(self, examples, table):
        for image_id, image_path, mat_path in examples:
            hw = read_image_size(image_path)
            yield image_id, {"image": image_path,
                             "segmentation_mask": read_label_map(mat_path, hw, table),
                             "image_id": image_id}

    def check_source_data(self, manual_dir: str, *, download: bool = False) -> None:
        """Raises FileNotFoundError with instructions at once when the raw data is missing
        (there is no download: VOC 2010's server and the PASCAL-Context site need a browser)."""
        del download
        find_sources(manual_dir)
