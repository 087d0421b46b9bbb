"""`coco_instances`: instance segmentation from a COCO-format JSON plus an image folder.

Configs:
  `coco2017`: COCO 2017 from the manual directory MANUAL, laid out as distributed:
      MANUAL/annotations/instances_train2017.json + MANUAL/train2017/*.jpg  -> split `train`
      MANUAL/annotations/instances_val2017.json   + MANUAL/val2017/*.jpg    -> split `validation`
    Class ids are the ORIGINAL COCO category ids 1..90 (0 = background), torchvision's
    convention: 91 classes, the 10 unused ids named "N/A" (`COCO2017_CLASS_NAMES`).
  `custom` (default) and any `CocoInstancesConfig` you make: a COCO-format export (CVAT,
    Roboflow, labelme2coco...) under `root` (None = the manual directory), by default
      ROOT/annotations/instances_train.json + ROOT/train/  -> split `train`
      ROOT/annotations/instances_val.json   + ROOT/val/    -> split `validation`
    or any `splits=((name, json path, image dir), ...)` relative to the root. Class ids are the
    JSON's category ids as given, each in 1..254 (0 is background, 255 the ignore label).
    `segjax.data.datasets.coco_instances_info(root)` makes the registry entry of such a tree.

Features per image (one example per entry of the JSON's `images`, images without annotations
included, all background):
  `image`: the original file bytes when it is an RGB or greyscale JPEG/PNG (decoded to RGB),
    else the image converted to RGB (lossless PNG);
  `segmentation_mask` uint8 [H, W, 1]: class ids, 0 background, 255 crowd (ignore);
  `instance_mask` uint16 [H, W, 1]: 1..n for the image's non-crowd annotations in JSON order,
    0 = none (background and crowd). A zlib Tensor, not a uint16 PNG: TFDS decodes uint16 PNGs
    only with OpenCV;
  `image_id` int64 (the JSON's id, what COCOeval keys on) and `file_name` (the JSON's).

Painting order and its limit: crowd regions (`iscrowd=1`) are painted first, as the ignore
label 255 with instance 0 -- kept as crowd: not trained on and not counted, as COCOeval ignores
them; then the non-crowd annotations in JSON order, each over the earlier ones. One id per pixel
cannot hold overlaps: where instances overlap, the later annotation owns the pixels and the
earlier one loses them (an instance covered entirely disappears from the map).

Segmentations are polygons or RLE (uncompressed `counts` lists or compressed strings), decoded
with pycocotools. The build reads every JSON and decodes every image and mask, and stops, naming
the file and the image or annotation id, on: a missing JSON or image folder; a missing,
non-integer or duplicate image, annotation or category id; an annotation whose image id is not
among the JSON's images or whose category id is unknown; `iscrowd` other than 0/1, a `bbox` or
`area` (when given) that is not finite or has a negative size; a missing or corrupt image file,
one whose header claims more than `MAX_IMAGE_PIXELS` (10^8) pixels or whose size differs from its
JSON entry; a polygon with fewer than 3 points, a non-finite coordinate or a point more than
`polygon_tolerance` (default 1) pixels outside the image; more than 10^5 polygon points or 10^7
pixels of polygon boundary in one annotation; an RLE whose `size` is not the image's or whose
counts are not integers >= 0 summing to exactly height x width; and more than 65535 instances in
one image. Nothing reaches pycocotools unchecked (its C code trusts its input: a NaN coordinate
made it allocate without bound), and nothing is skipped or clamped. The bounds and their
reasons: `_coco_checks` and docs/data.md.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders import _coco_checks as _checks
from segjax.data.builders._common import LocalCodePath, manual_dir_of, open_image

IGNORE = 255
# Original COCO 2017 category ids 1..90 -> names; the other ids of 0..90 are unused ("N/A").
_COCO2017 = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush"}


def class_names(categories: dict[int, str]) -> tuple:
    """`("background", ...)` indexed by class id 0..max id, "N/A" where no category has the id."""
    return ("background",) + tuple(categories.get(k, "N/A")
                                   for k in range(1, max(categories) + 1))


COCO2017_CLASS_NAMES = class_names(_COCO2017)  # 91 names, torchvision's COCO_V1 order

COCO2017_SPLITS = (("train", "annotations/instances_train2017.json", "train2017"),
                   ("validation", "annotations/instances_val2017.json", "val2017"))
CUSTOM_SPLITS = (("train", "annotations/instances_train.json", "train"),
                 ("validation", "annotations/instances_val.json", "val"))


@dataclasses.dataclass(eq=False)
class CocoInstancesConfig(tfds.core.BuilderConfig):
    """Where a COCO-format tree lives and how its category ids become class ids.

    Attributes:
      root: directory the `splits` paths are relative to; None = the manual directory.
      splits: `((split name, annotation JSON, image directory), ...)`, relative to `root`.
      coco2017_categories: True: category ids must be COCO 2017's (1..90, 91 classes); False:
        ids as given, each in 1..254.
      polygon_tolerance: how far (pixels) a polygon point may lie outside the image.
    """

    version: str = "1.0.0"
    root: str | None = None
    splits: tuple = CUSTOM_SPLITS
    coco2017_categories: bool = False
    polygon_tolerance: float = 1.0


BUILDER_CONFIGS = [
    CocoInstancesConfig(name="custom", description="A COCO-format export under the manual "
                        "directory (or `root`): annotations/instances_{train,val}.json + "
                        "{train,val}/ images; category ids as given.", splits=CUSTOM_SPLITS),
    CocoInstancesConfig(name="coco2017", description="COCO 2017 instances (118,287 train / "
                        "5,000 val images) from the manual directory; original category ids, "
                        "91 classes.", splits=COCO2017_SPLITS, coco2017_categories=True),
]


def instructions(config: CocoInstancesConfig, root: str) -> str:
    """What to put where, for the message of a missing file."""
    lines = "\n".join(f"  {os.path.join(root, js)}  +  {os.path.join(root, d)}/  (split {s!r})"
                      for s, js, d in config.splits)
    extra = ("\nCOCO 2017: annotations_trainval2017.zip, train2017.zip and val2017.zip from "
             "https://cocodataset.org/#download, extracted there." if config.coco2017_categories
             else "")
    command = ("coco2017 --data_dir=DATA_DIR --manual_dir=MANUAL_DIR" if config.name == "coco2017"
               else "coco_instances --data_dir=DATA_DIR  (with SEGJAX_COCO_ROOT=ROOT exported)")
    return (f"The COCO-format data of config {config.name!r} is not in place. Expected:\n{lines}"
            f"{extra}\nthen build with\n  python -m segjax.data prepare {command}")


def source_paths(config: CocoInstancesConfig, manual_dir: str) -> dict[str, tuple[str, str]]:
    """`{split: (json path, image dir)}`; raises FileNotFoundError naming the first missing one,
    with instructions."""
    root = config.root or manual_dir
    out = {}
    for split, rel_json, rel_dir in config.splits:
        js, images = os.path.join(root, rel_json), os.path.join(root, rel_dir)
        for path, isthere in ((js, os.path.isfile), (images, os.path.isdir)):
            if not isthere(path):
                raise FileNotFoundError(f"Missing {path}\n" + instructions(config, root))
        out[split] = (js, images)
    return out


def read_json(path: str) -> dict:
    """The parsed COCO JSON; raises naming the file when it is missing or unparsable or lacks
    `images`, `annotations` or `categories`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing annotation file {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"Unreadable annotation file {path}: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"Annotation file {path} has no {missing} (not a COCO instances file)")
    return data


def categories(data: dict, path: str, *, coco2017: bool) -> dict[int, str]:
    """`{category id: name}` of a COCO JSON, checked: integer ids, no duplicate, COCO 2017's ids
    (`coco2017`) or 1..254."""
    if not isinstance(data["categories"], list):
        raise ValueError(f"{path}: `categories` is not a list")
    cats = {}
    for c in data["categories"]:
        k = _checks.integer(c.get("id")) if isinstance(c, dict) else None
        if k is None:
            raise ValueError(f"{path}: category {c!r} has no integer id")
        if k in cats:
            raise ValueError(f"{path}: duplicate category id {k} ({cats[k]!r} and "
                             f"{c.get('name')!r})")
        cats[k] = str(c.get("name", k))
    for k in cats:
        if coco2017 and k not in _COCO2017:
            raise ValueError(f"{path}: category id {k} ({cats[k]!r}) is not a COCO 2017 category "
                             "id (1..90 less the 10 unused ones); use the `custom` config")
        if not 1 <= k < IGNORE:
            raise ValueError(f"{path}: category id {k} ({cats[k]!r}) outside 1..{IGNORE - 1} "
                             f"(0 is background, {IGNORE} the ignore label); renumber it")
    if not cats:
        raise ValueError(f"{path}: no categories")
    return cats


def _declared_hw(entry: dict) -> tuple[int, int] | None:
    if "height" in entry and "width" in entry:
        return _checks.integer(entry["height"]), _checks.integer(entry["width"])
    return None


def index_annotations(data: dict, path: str, image_dir: str, known: dict[int, str], *,
                      tolerance: float = 1.0) -> list:
    """`[(image entry, image path, [annotations in JSON order])]` in the JSON's image order.

    Raises naming `path` and the image or annotation id (see `_coco_checks`): a missing,
    malformed or duplicate image or annotation id, an annotation whose image id is not in
    `images`, an unknown category id, a malformed `bbox`/`area`/`iscrowd`, a malformed
    segmentation (`check_segmentation` without the image size: non-finite polygon points, too
    many, RLE counts that are not integers >= 0); and naming the image file when it is missing.
    """
    images = _checks.check_images(data, path)
    per_image = {image_id: [] for image_id in images}
    if not isinstance(data["annotations"], list):
        raise ValueError(f"{path}: `annotations` is not a list")
    seen = set()
    for k, ann in enumerate(data["annotations"]):
        _, image_id = _checks.check_annotation(ann, k, path, images, known, seen)
        # Size-free checks now, before any image is decoded; against the image's size later.
        check_segmentation(ann, None, tolerance=tolerance, where=path)
        per_image[image_id].append(ann)
    out = []
    for image_id, entry in images.items():
        file = os.path.join(image_dir, entry["file_name"])
        if not os.path.isfile(file):
            first = per_image[image_id][0].get("id") if per_image[image_id] else None
            raise FileNotFoundError(
                f"Missing image file {file} (image id {image_id} of {path}"
                + (f", annotation id {first} and others)" if first is not None else ")"))
        out.append((entry, file, per_image[image_id]))
    return out


def read_image(path: str, entry: dict) -> tuple[object, tuple[int, int]]:
    """(what to store as `image`, (height, width)): reads the header first, then fully decodes
    the file; raises naming it if it is missing or corrupt, claims more than
    `MAX_IMAGE_PIXELS`, or its size differs from the JSON entry's `height`/`width`."""
    with open_image(path) as im:
        width, height = im.size
        declared = _declared_hw(entry)
        if declared is not None and (height, width) != declared:
            raise ValueError(f"Image file {path} is {height}x{width} (HxW), its JSON entry "
                             f"(image id {entry['id']}) says {declared[0]}x{declared[1]}")
        try:
            im.load()
            mode, fmt = im.mode, im.format
            converted = None if (fmt in ("JPEG", "PNG") and mode in ("RGB", "L")) else \
                np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"Corrupt or unreadable image file {path}: {e}") from None
    return (path if converted is None else converted), (height, width)


def check_segmentation(ann: dict, hw: tuple[int, int] | None, *, tolerance: float, where: str):
    """One annotation's segmentation checked against the image size `hw` (`_coco_checks`; None:
    the checks that need no size):
    `("polygons", [[x, y, ...], ...])` or `("rle", {"size", "counts"})`; raises ValueError
    naming `where` (the JSON file) and the annotation id."""
    segm = ann.get("segmentation")
    here = f"{where}: annotation id {ann.get('id')}"
    if isinstance(segm, list):
        return "polygons", _checks.polygons(segm, hw, tolerance, here)
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        return "rle", _checks.rle(segm, hw, here)
    raise ValueError(f"{here} has a segmentation that is neither polygons nor RLE")


def decode_segmentation(ann: dict, hw: tuple[int, int], *, tolerance: float,
                        where: str) -> np.ndarray:
    """bool [H, W] mask of one annotation's polygons or RLE (pycocotools), checked against
    the image size `hw` first (`check_segmentation`); `where` names the JSON file in errors."""
    from pycocotools import mask as mask_utils

    h, w = hw
    kind, segm = check_segmentation(ann, hw, tolerance=tolerance, where=where)
    if kind == "polygons":
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    elif isinstance(segm["counts"], list):  # uncompressed
        rle = mask_utils.frPyObjects(segm, h, w)
    else:
        rle = segm
    mask = mask_utils.decode(rle)
    if mask.shape != (h, w):
        raise ValueError(f"{where}: annotation id {ann.get('id')} decodes to a mask of size "
                         f"{mask.shape}, its image is {h}x{w}")
    return mask.astype(bool)


def paint(anns: list, hw: tuple[int, int], *, tolerance: float,
          where: str) -> tuple[np.ndarray, np.ndarray]:
    """(class ids uint8 [H, W], instance ids uint16 [H, W]) of one image's annotations `anns`.

    Crowd regions first (ignore label, instance 0), then the non-crowd annotations in order,
    numbered 1..n, each drawn over the earlier ones.
    """
    label = np.zeros(hw, np.uint8)
    instances = np.zeros(hw, np.uint16)
    crowd = [a for a in anns if a.get("iscrowd", 0)]
    things = [a for a in anns if not a.get("iscrowd", 0)]
    if len(things) > np.iinfo(np.uint16).max:
        raise ValueError(f"{where}: image id {anns[0]['image_id']} has {len(things)} "
                         "instances, more than a uint16 instance map holds")
    for ann in crowd:
        label[decode_segmentation(ann, hw, tolerance=tolerance, where=where)] = IGNORE
    for k, ann in enumerate(things, start=1):
        mask = decode_segmentation(ann, hw, tolerance=tolerance, where=where)
        label[mask] = int(ann["category_id"])
        instances[mask] = k
    return label, instances


def index_split(js: str, image_dir: str, config: CocoInstancesConfig) -> list:
    """The JSON-checked `[(image entry, image path, annotations)]` of one split (`read_json`,
    `categories`, `index_annotations`); no image is decoded."""
    data = read_json(js)
    known = categories(data, js, coco2017=config.coco2017_categories)
    return index_annotations(data, js, image_dir, known, tolerance=config.polygon_tolerance)


def read_example(entry: dict, path: str, anns: list, *, tolerance: float,
                 where: str) -> tuple[int, dict]:
    """(key, features) of one image of `index_split`: the image read and its annotations
    painted (`read_image`, `paint`); `where` names the JSON file in errors."""
    image, hw = read_image(path, entry)
    label, instances = paint(anns, hw, tolerance=tolerance, where=where)
    image_id = int(entry["id"])
    return image_id, {"image": image, "segmentation_mask": label[..., None],
                      "instance_mask": instances[..., None], "image_id": image_id,
                      "file_name": str(entry["file_name"])}


class CocoInstances(LocalCodePath, tfds.core.GeneratorBasedBuilder):
    """COCO-format instance segmentation; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Class-id mask, instance-id map, crowd as ignore."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    MANUAL_DOWNLOAD_INSTRUCTIONS = instructions(BUILDER_CONFIGS[1], "<manual_dir>")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "segmentation_mask": tfds.features.Image(shape=(None, None, 1),
                                                         encoding_format="png"),
                "instance_mask": tfds.features.Tensor(shape=(None, None, 1), dtype=np.uint16,
                                                      encoding="zlib"),
                "image_id": np.int64,
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "segmentation_mask"),
            homepage="https://cocodataset.org/",
        )

    def _split_generators(self, dl_manager):
        manual_dir = manual_dir_of(dl_manager)
        config = self.builder_config
        # All JSON-level checks run before any image is decoded.
        return {split: self._generate_examples(index_split(js, image_dir, config), js)
                for split, (js, image_dir) in source_paths(config, manual_dir).items()}

    def _generate_examples(self, examples, where: str):
        for entry, path, anns in examples:
            yield read_example(entry, path, anns, tolerance=self.builder_config.polygon_tolerance,
                               where=where)

    def check_source_data(self, manual_dir: str, *, download: bool = False) -> None:
        """Raises FileNotFoundError with instructions at once if a JSON or image folder is
        missing (there is nothing to download: COCO is always a manual download here)."""
        del download
        source_paths(self.builder_config, manual_dir)
