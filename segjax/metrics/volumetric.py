"""Volumetric segmentation metrics per class: Dice and the (95th-percentile) Hausdorff distance.

Host-side NumPy/SciPy on label volumes `[D, H, W]` (any number of axes), run at evaluation and
never inside a compiled step. Both follow MONAI's definitions (`monai.metrics.compute_dice`,
`monai.metrics.compute_hausdorff_distance`), against which they are tested:

* Dice of class c: 2 |P ∩ T| / (|P| + |T|) with P, T the voxels labelled c in the prediction and
  the truth. A class absent from the truth gives NaN with `ignore_empty=True` (MONAI's default:
  the case says nothing about that class and is left out of the means); with
  `ignore_empty=False` it gives 1.0 when the prediction is empty too, else 0.0. (nnU-Net's
  evaluation gives NaN only when both are empty, and 0.0 for a false positive on an empty truth.)
* Hausdorff distance (Huttenlocher et al. 1993) in physical units, over *surface voxels*: the
  voxels of a mask that scipy's `binary_erosion` (face connectivity, outside = background)
  removes. For every surface voxel of P the Euclidean distance (axes scaled by the voxel
  `spacing`) to the nearest surface voxel of T, and the other way round; the q-th percentile
  (linear interpolation) of each directed set, and the larger of the two: HD_q = max(P_q(d(∂P,
  ∂T)), P_q(d(∂T, ∂P))). q = 95 is the usual HD95, q = 100 the Hausdorff distance. This is
  MONAI's definition (the maximum of the two directed percentiles). DeepMind's `surface-distance`
  also takes the larger directed percentile but weights each surface element by its area, and
  MedPy's `hd95` takes one percentile of the two directions' distances pooled, so on coarse or
  anisotropic grids their numbers differ slightly from these.
  Empty masks: NaN when both P and T are empty (nothing to measure; left out of means), +inf when
  exactly one is (no surface to reach: the error is unbounded). MONAI returns NaN in both cases;
  inf keeps a missed or hallucinated structure from vanishing silently from a mean.

`VolumetricAccumulator` averages these per class over the cases of a validation set.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage


def _check_labels(pred: Any, truth: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} != truth shape {truth.shape}; resample the "
                         "prediction to the label volume first")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    for name, x in (("pred", pred), ("truth", truth)):
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class ids, got dtype {x.dtype} (take the "
                             "argmax of the probabilities first)")
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} holds class ids outside [0, {num_classes}): min {x.min()}, "
                             f"max {x.max()}")
    return pred, truth


def dice_per_class(pred: Any, truth: Any, num_classes: int, *,
                   ignore_empty: bool = True) -> np.ndarray:
    """Dice of every class between two label volumes (see the module docstring).

    Args:
      pred, truth: integer class ids of one case, the same shape (e.g. `[D, H, W]`).
      num_classes: K; ids must lie in [0, K).
      ignore_empty: NaN for classes absent from `truth` (MONAI's default); else 1.0 if the
        prediction is empty too, 0.0 if not.
    Returns:
      float64 `[K]`.
    """
    pred, truth = _check_labels(pred, truth, num_classes)
    k = num_classes
    pairs = np.bincount(truth.ravel().astype(np.int64) * k + pred.ravel(),
                        minlength=k * k).reshape(k, k)
    tp, in_truth, in_pred = np.diag(pairs), pairs.sum(1), pairs.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2.0 * tp / (in_truth + in_pred)
    empty_value = np.nan if ignore_empty else np.where(in_pred == 0, 1.0, 0.0)
    return np.where(in_truth == 0, empty_value, dice).astype(np.float64)


def surface_voxels(mask: Any) -> np.ndarray:
    """bool: the voxels of `mask` that a face-connected erosion removes (outside = background)."""
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask)


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = (spacing,) * ndim if np.ndim(spacing) == 0 else tuple(spacing)
    if len(values) != ndim or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be a positive finite number or one per axis ({ndim}), "
                         f"got {spacing!r}")
    return tuple(float(v) for v in values)


def directed_surface_distances(source: Any, target: Any, spacing=None) -> np.ndarray:
    """Distances from every surface voxel of `source` to the nearest surface voxel of `target`.

    Args:
      source, target: bool masks of the same shape.
      spacing: voxel size per axis (or one number), in the unit of the result; None = 1.
    Returns:
      float64 `[number of surface voxels of source]`, row-major order; +inf each when `target`
      is empty; empty when `source` is.
    """
    source, target = np.asarray(source, bool), np.asarray(target, bool)
    if source.shape != target.shape:
        raise ValueError(f"source shape {source.shape} != target shape {target.shape}")
    spacing = _spacing(spacing, source.ndim)
    source_edges, target_edges = surface_voxels(source), surface_voxels(target)
    if not target_edges.any():
        return np.full(int(source_edges.sum()), np.inf)
    if not source_edges.any():
        return np.zeros(0)
    # The exact Euclidean distance transform of the union's bounding box is enough: every
    # surface voxel and its nearest target surface voxel lie inside it.
    union = np.argwhere(source_edges | target_edges)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(union.min(0), union.max(0)))
    distance = ndimage.distance_transform_edt(~target_edges[box], sampling=spacing)
    return distance[source_edges[box]].astype(np.float64)


def hausdorff_distance(pred: Any, truth: Any, *, spacing=None, percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance between two bool masks (module docstring).

    Args:
      pred, truth: bool masks of the same shape.
      spacing: voxel size per axis (e.g. mm), or one number; None = 1.
      percentile: q in [0, 100]; 95 is HD95, 100 the Hausdorff distance.
    Returns:
      max over the two directions of the q-th percentile of the surface distances; NaN if both
      masks are empty, inf if exactly one is.

    Example: two 4³ cubes offset by 2 voxels along an axis of spacing 1.5 mm: HD = 3.0 mm.
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    has_pred, has_truth = pred.any(), truth.any()
    if not has_pred and not has_truth:
        return math.nan
    if not has_pred or not has_truth:
        return math.inf
    return float(max(np.percentile(directed_surface_distances(a, b, spacing), percentile)
                     for a, b in ((pred, truth), (truth, pred))))


def hausdorff_distance_per_class(pred: Any, truth: Any, num_classes: int, *, spacing=None,
                                 percentile: float = 95.0) -> np.ndarray:
    """`hausdorff_distance` of every class between two label volumes: float64 `[K]`."""
    pred, truth = _check_labels(pred, truth, num_classes)
    spacing = _spacing(spacing, pred.ndim)
    return np.array([hausdorff_distance(pred == c, truth == c, spacing=spacing,
                                        percentile=percentile) for c in range(num_classes)])


class VolumetricAccumulator:
    """Per-class Dice and HD over the cases of a validation set, averaged per class.

    Each `update` adds one case (one label volume, its own voxel spacing). `result` averages
    every class over the cases where its value is defined (NaN-aware, like `metrics_from_confusion`
    leaves out classes absent from both), then over classes.

    Args:
      num_classes: K.
      include_background: whether class 0 enters `mean_dice` / `mean_hd95` (the per-class lists
        always hold all K classes).
      ignore_empty: `dice_per_class`'s.
      percentile: `hausdorff_distance`'s (the result keys say `hd95` whatever it is).
      empty_distance: the HD given to a case where exactly one of prediction and truth is empty
        (None keeps inf, which then makes that class's mean inf; BraTS, for example, uses the
        volume's diagonal in mm).

    Example:
      acc = VolumetricAccumulator(num_classes=3)
      for pred, truth, spacing in cases: acc.update(pred, truth, spacing=spacing)
      acc.result()["mean_dice"]
    """

    def __init__(self, num_classes: int, *, include_background: bool = False,
                 ignore_empty: bool = True, percentile: float = 95.0,
                 empty_distance: float | None = None):
        if empty_distance is not None and not (math.isfinite(empty_distance)
                                               and empty_distance >= 0):
            raise ValueError(f"empty_distance must be a finite distance >= 0 or None, got "
                             f"{empty_distance!r}")
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        if num_classes < (1 if include_background else 2):
            raise ValueError(f"num_classes={num_classes} leaves no class to average; "
                             "include_background=False needs at least 2")
        self.num_classes = num_classes
        self.include_background = include_background
        self.ignore_empty = ignore_empty
        self.percentile = percentile
        self.empty_distance = empty_distance
        self.reset()

    def reset(self) -> None:
        """Forgets every case."""
        self.dice: list[np.ndarray] = []
        self.hd: list[np.ndarray] = []

    def update(self, pred: Any, truth: Any, *, spacing: Sequence[float] | float | None = None
               ) -> dict[str, list[float]]:
        """Adds one case; returns its `{"dice": [K], "hd95": [K]}` (NaN/inf as computed)."""
        dice = dice_per_class(pred, truth, self.num_classes, ignore_empty=self.ignore_empty)
        hd = hausdorff_distance_per_class(pred, truth, self.num_classes, spacing=spacing,
                                          percentile=self.percentile)
        if self.empty_distance is not None:
            hd = np.where(np.isinf(hd), self.empty_distance, hd)
        self.dice.append(dice)
        self.hd.append(hd)
        return {"dice": dice.tolist(), "hd95": hd.tolist()}

    def result(self) -> dict[str, Any]:
        """`dice_per_class`, `hd95_per_class` (`[K]`: each class's mean over the cases where it is
        defined, NaN if it never is), `mean_dice`, `mean_hd95` (the mean of those over the
        classes counted, NaN-aware, as nnU-Net's foreground mean) and `num_cases`; Python floats.
        """
        first = 0 if self.include_background else 1
        out: dict[str, Any] = {"num_cases": len(self.dice)}
        for key, values in (("dice", self.dice), ("hd95", self.hd)):
            per_class = (_nanmean(np.stack(values)) if values
                         else np.full(self.num_classes, np.nan))
            out[f"{key}_per_class"] = per_class.tolist()
            out[f"mean_{key}"] = float(_nanmean(per_class[first:]))
        return out


def _nanmean(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the non-NaN entries: NaN where there are none; inf propagates."""
    counted = ~np.isnan(x)
    total, count = np.where(counted, x, 0.0).sum(0), counted.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
