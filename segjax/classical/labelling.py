"""From ground truth to a method's inputs (boxes, seeds), and from its output to class labels.

Label maps are integer class ids `[H, W]` with 0 = background; instance maps are `[H, W]` with
0 = no instance. Majorities break ties towards the lower class id.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import measure, morphology


def _majority_per_region(regions: np.ndarray, label: np.ndarray, num_classes: int):
    """(region ids [R], class counts [R, K]) of the pixels in each region."""
    ids, inverse = np.unique(regions, return_inverse=True)
    flat = inverse.reshape(-1) * num_classes + label.reshape(-1).astype(np.int64)
    counts = np.bincount(flat, minlength=len(ids) * num_classes).reshape(len(ids), num_classes)
    return ids, inverse.reshape(regions.shape), counts


def label_regions(regions: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Oracle labelling of an over-segmentation: every region gets the majority ground-truth
    class of its pixels, background included. The result is the best any per-region classifier
    could do with these regions (the oracle upper bound). int32 `[H, W]`."""
    _, inverse, counts = _majority_per_region(regions, label, num_classes)
    return np.argmax(counts, axis=1).astype(np.int32)[inverse]


def label_foreground(regions: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Oracle class naming of a foreground/background result. `regions`: bool foreground mask
    (each 4-connected component is one object) or an int region map with 0 = background.

    Background stays background: the method's object/background decision is kept as it is. Each
    foreground region gets the majority *object* class (ids >= 1) of the ground truth under it;
    a region over ground-truth background only (a false detection) gets the image's most common
    object class (class 1 if the image has none), so it still counts as a false positive.
    int32 `[H, W]`.
    """
    regions = np.asarray(regions)
    if regions.dtype == bool:
        regions = measure.label(regions, connectivity=1)
    ids, inverse, counts = _majority_per_region(regions, label, num_classes)
    objects = np.bincount(label.reshape(-1).astype(np.int64), minlength=num_classes)[1:]
    fallback = 1 + int(np.argmax(objects)) if objects.any() else 1
    obj_counts = counts[:, 1:]
    classes = np.where(obj_counts.sum(1) > 0, 1 + np.argmax(obj_counts, axis=1), fallback)
    classes = np.where(ids == 0, 0, classes)
    return classes.astype(np.int32)[inverse]


def instance_boxes(instances: np.ndarray, label: np.ndarray, num_classes: int):
    """Ground-truth boxes and classes, one per instance, as a detector would give them.

    Returns (boxes int [M, 4] as (x0, y0, x1, y1), x1/y1 exclusive; classes int [M]): the tight
    box of each instance's pixels and the majority class of its pixels, in instance-id order.
    """
    boxes, classes = [], []
    for k in np.unique(instances):
        if k == 0:
            continue
        ys, xs = np.nonzero(instances == k)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        classes.append(int(np.argmax(np.bincount(label[ys, xs].astype(np.int64),
                                                 minlength=num_classes))))
    return np.array(boxes, np.int64).reshape(-1, 4), np.array(classes, np.int64)


def ground_truth_seeds(label: np.ndarray, *, radius_fraction: float = 0.05) -> np.ndarray:
    """Seeds as a user's strokes would give them: the core of every connected ground-truth
    region (each class, background included), eroded by a disk of radius 5% of the image side;
    a region that erodes away keeps its innermost pixel. int32 `[H, W]`: 0 = unseeded,
    k + 1 = class k."""
    label = np.asarray(label)
    fp = morphology.disk(max(1, round(radius_fraction * min(label.shape))))
    components = measure.label(label.astype(np.int64) + 1, background=0, connectivity=1)
    seeds = np.zeros(label.shape, np.int32)
    for region in measure.regionprops(components):
        sl = region.slice
        comp = np.pad(components[sl] == region.label, fp.shape[0])  # room for the erosion
        core = ndi.binary_erosion(comp, fp)
        if not core.any():
            dist = ndi.distance_transform_edt(comp)
            core = np.zeros_like(comp)
            core[np.unravel_index(np.argmax(dist), dist.shape)] = True
        core = core[fp.shape[0]:-fp.shape[0], fp.shape[0]:-fp.shape[0]]
        cls = label[sl][core][0]
        seeds[sl][core] = cls + 1
    return seeds
