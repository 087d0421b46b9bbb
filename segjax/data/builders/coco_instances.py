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
the file and the annotation id, on: a missing JSON or image folder, an annotation whose image id
is not among the JSON's images, a missing or corrupt image file or one whose size differs from
its JSON entry, an unknown category id, a polygon with fewer than 3 points or a point more than
`polygon_tolerance` (default 1) pixels outside the image, an RLE whose `size` is not the image's,
and more than 65535 instances in one image. Nothing is skipped or clamped.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from segjax.data.builders._common import LocalCodePath, manual_dir_of

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
    """`{category id: name}` of a COCO JSON, checked: COCO 2017's ids (`coco2017`) or 1..254."""
    cats = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
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


def index_annotations(data: dict, path: str, image_dir: str, known: dict[int, str]) -> list:
    """`[(image entry, image path, [annotations in JSON order])]` in the JSON's image order.

    Raises naming `path` and the annotation id: an annotation whose image id is not in
    `images`, an unknown category id; and naming the image file when it is missing.
    """
    images, per_image = {}, {}
    for entry in data["images"]:
        images[int(entry["id"])] = entry
        per_image[int(entry["id"])] = []
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        if image_id not in images:
            raise ValueError(f"{path}: annotation id {ann.get('id')} points at image id "
                             f"{image_id}, which is not in the file's images")
        if int(ann["category_id"]) not in known:
            raise ValueError(f"{path}: annotation id {ann.get('id')} (image id {image_id}) has "
                             f"unknown category id {ann['category_id']}; known: {sorted(known)}")
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
    """(what to store as `image`, (height, width)): fully decodes the file; raises naming it
    if it is corrupt or its size differs from the JSON entry's `height`/`width`."""
    try:
        with Image.open(path) as im:
            im.load()
            mode, fmt, (width, height) = im.mode, im.format, im.size
            converted = None if (fmt in ("JPEG", "PNG") and mode in ("RGB", "L")) else \
                np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError) as e:
        raise ValueError(f"Corrupt or unreadable image file {path}: {e}") from None
    want = (int(entry.get("height", height)), int(entry.get("width", width)))
    if (height, width) != want:
        raise ValueError(f"Image file {path} is {height}x{width} (HxW), its JSON entry (image "
                         f"id {entry['id']}) says {want[0]}x{want[1]}")
    return (path if converted is None else converted), (height, width)


def decode_segmentation(ann: dict, hw: tuple[int, int], *, tolerance: float,
                        where: str) -> np.ndarray:
    """bool [H, W] mask of one annotation's polygons or RLE (pycocotools), checked against
    the image size `hw`; `where` names the JSON file in errors."""
    from pycocotools import mask as mask_utils

    h, w = hw
    segm, aid = ann.get("segmentation"), ann.get("id")
    if isinstance(segm, list):
        if not segm:
            raise ValueError(f"{where}: annotation id {aid} has an empty polygon list")
        for poly in segm:
            pts = np.asarray(poly, np.float64)
            if pts.ndim != 1 or pts.size < 6 or pts.size % 2:
                raise ValueError(f"{where}: annotation id {aid} has a polygon with {pts.size} "
                                 "coordinates; a polygon needs x, y pairs of 3 or more points")
            xs, ys = pts[0::2], pts[1::2]
            if (xs.min() < -tolerance or ys.min() < -tolerance or xs.max() > w + tolerance
                    or ys.max() > h + tolerance):
                raise ValueError(
                    f"{where}: annotation id {aid} has a polygon outside its {h}x{w} (HxW) image "
                    f"(x in [{xs.min():g}, {xs.max():g}], y in [{ys.min():g}, {ys.max():g}], "
                    f"tolerance {tolerance:g} px)")
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if [int(s) for s in segm["size"]] != [h, w]:
            raise ValueError(f"{where}: annotation id {aid} has an RLE of size "
                             f"{list(segm['size'])} (HxW), its image is {h}x{w}")
        if isinstance(segm["counts"], list):  # uncompressed
            rle = mask_utils.frPyObjects(segm, h, w)
        else:
            counts = segm["counts"]
            rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str)
                   else counts}
    else:
        raise ValueError(f"{where}: annotation id {aid} has a segmentation that is neither "
                         "polygons nor RLE")
    mask = mask_utils.decode(rle)
    if mask.shape != (h, w):
        raise ValueError(f"{where}: annotation id {aid} decodes to a mask of size {mask.shape}, "
                         f"its image is {h}x{w}")
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
        out = {}
        for split, (js, image_dir) in source_paths(config, manual_dir).items():
            data = read_json(js)
            known = categories(data, js, coco2017=config.coco2017_categories)
            # All JSON-level checks run before any image is decoded.
            out[split] = self._generate_examples(index_annotations(data, js, image_dir, known), js)
        return out

    def _generate_examples(self, examples, where: str):
        tolerance = self.builder_config.polygon_tolerance
        for entry, path, anns in examples:
            image, hw = read_image(path, entry)
            label, instances = paint(anns, hw, tolerance=tolerance, where=where)
            yield int(entry["id"]), {
                "image": image, "segmentation_mask": label[..., None],
                "instance_mask": instances[..., None], "image_id": int(entry["id"]),
                "file_name": str(entry["file_name"])}

    def check_source_data(self, manual_dir: str, *, download: bool = False) -> None:
        """Raises FileNotFoundError with instructions at once if a JSON or image folder is
        missing (there is nothing to download: COCO is always a manual download here)."""
        del download
        source_paths(self.builder_config, manual_dir)
