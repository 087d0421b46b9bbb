"""Writes tiny fake PASCAL VOC 2012 and SBD trees in their real on-disk formats."""
import os

import numpy as np
import scipy.io
from PIL import Image

from segjax.data.datasets import voc_palette

VOC_TRAIN = ["2008_000001", "2008_000002", "2008_000003", "2008_000004", "2008_000005",
             "2008_000006"]
VOC_VAL = ["2009_000001", "2009_000002", "2009_000003", "2009_000004", "2009_000005"]
# SBD lists overlap VOC train and VOC val on purpose.
SBD_TRAIN = ["2008_000001", "2008_000002", "2010_000001", "2010_000002", "2010_000003",
             "2009_000001"]
SBD_VAL = ["2010_000004", "2008_000003", "2009_000002"]
TRAIN_AUG = sorted(set(VOC_TRAIN) | {"2010_000001", "2010_000002", "2010_000003", "2010_000004"})


def _size(rng):
    return int(rng.integers(9, 16)) * 2 + 1, int(rng.integers(9, 16)) * 2 + 1  # odd sizes


def write_jpeg(path, rng, hw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=hw + (3,), dtype=np.uint8)).save(path, quality=95)


def write_palette_png(path, mask):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette(256).ravel().tolist())
    im.save(path)


def write_sbd_mat(path, mask):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": mask.astype(np.uint8),
                                      "Boundaries": np.zeros((1, 1)),
                                      "CategoriesPresent": np.unique(mask)}})


def write_tree(root, rng):
    """Writes `root/VOCdevkit/VOC2012` and `root/benchmark_RELEASE/dataset`; returns
    `{"voc": {id: mask}, "sbd": {id: mask}}` (masks as written, `[H, W]` uint8)."""
    voc_dir = os.path.join(root, "VOCdevkit", "VOC2012")
    sbd_dir = os.path.join(root, "benchmark_RELEASE", "dataset")
    written = {"voc": {}, "sbd": {}}
    for image_id in VOC_TRAIN + VOC_VAL:
        hw = _size(rng)
        write_jpeg(os.path.join(voc_dir, "JPEGImages", f"{image_id}.jpg"), rng, hw)
        mask = rng.integers(0, 21, size=hw).astype(np.uint8)
        mask[rng.uniform(size=hw) < 0.15] = 255  # the boundary band
        write_palette_png(os.path.join(voc_dir, "SegmentationClass", f"{image_id}.png"), mask)
        written["voc"][image_id] = mask
    for image_id in SBD_TRAIN + SBD_VAL:
        hw = _size(rng)
        write_jpeg(os.path.join(sbd_dir, "img", f"{image_id}.jpg"), rng, hw)
        mask = rng.integers(0, 21, size=hw).astype(np.uint8)
        write_sbd_mat(os.path.join(sbd_dir, "cls", f"{image_id}.mat"), mask)
        written["sbd"][image_id] = mask
    sets = os.path.join(voc_dir, "ImageSets", "Segmentation")
    os.makedirs(sets, exist_ok=True)
    for name, ids in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        with open(os.path.join(sets, f"{name}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    for name, ids in (("train", SBD_TRAIN), ("val", SBD_VAL)):
        with open(os.path.join(sbd_dir, f"{name}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    return written
