"""Unsupervised scores of an over-segmentation against the ground truth (host-side NumPy).

The supervised scores (mIoU, Boundary IoU) come from `segjax.metrics` on the labelled maps; these
two judge the regions themselves, before any labelling:

* boundary recall: the fraction of ground-truth boundary pixels within `tolerance` pixels
  (Chebyshev distance) of a region boundary; boundary pixels are those with a 4-neighbour in
  another segment/region (both sides of an edge). High is good; more regions make it easier.
* under-segmentation error (Neubert & Protzel 2012's corrected form): for every ground-truth
  segment S and every region P that meets it, the smaller of |P inside S| and |P outside S|,
  summed and divided by the number of pixels. A region straddling two segments is charged for
  its smaller part. Low is good.

Ground-truth segments are the 4-connected components of each class of the label map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import measure, segmentation


def _segments(label: np.ndarray) -> np.ndarray:
    return measure.label(np.asarray(label).astype(np.int64) + 1, background=0, connectivity=1)


def boundary_recall(regions: np.ndarray, label: np.ndarray, *, tolerance: int = 2) -> float:
    """Fraction of ground-truth boundary pixels within `tolerance` px of a region boundary
    (NaN when the ground truth has no boundary). Both maps `[H, W]`."""
    gt = segmentation.find_boundaries(_segments(label), mode="inner")
    if not gt.any():
        return float("nan")
    # Ids from 1: find_boundaries treats id 0 as background and would mark only one side.
    pred = segmentation.find_boundaries(np.unique(regions, return_inverse=True)[1] + 1, mode="inner")
    near = ndi.binary_dilation(pred, np.ones((2 * tolerance + 1,) * 2, bool))
    return float((gt & near).sum() / gt.sum())


def undersegmentation_error(regions: np.ndarray, label: np.ndarray) -> float:
    """Corrected under-segmentation error of `regions` against the label's segments, in [0, 1)."""
    gt = _segments(label).reshape(-1)
    _, reg = np.unique(np.asarray(regions).reshape(-1), return_inverse=True)
    num_regions = reg.max() + 1
    pairs = np.bincount(gt * num_regions + reg, minlength=(gt.max() + 1) * num_regions)
    pairs = pairs.reshape(-1, num_regions)  # [segments, regions] overlaps
    sizes = pairs.sum(0, keepdims=True)
    charged = np.minimum(pairs, sizes - pairs)[pairs > 0]
    return float(charged.sum() / gt.size)
