"""Segmentation metrics from confusion matrices (exact integer counts).

A batch's confusion matrix is int32 (a batch has far fewer than 2^31 pixels); the host adds the
batches up in int64 (`ConfusionAccumulator`), because a split such as VOC val (~2.7e8 pixels) has
more pixels than float32 counts exactly. Rows are ground truth, columns predictions.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from segjax.losses.pixel import valid_pixels
from segjax.ops.morphology import erosion, square


def confusion_matrix(
    pred: jax.Array,
    labels: jax.Array,
    num_classes: int,
    *,
    ignore_label: int,
    valid_mask: jax.Array | None = None,
) -> jax.Array:
    """int32 [K, K] counts: entry [g, p] = number of counted pixels with label g predicted p.

    Args:
      pred: integer class ids [N, H, W] (e.g. argmax of the logits), in [0, K).
      labels: integer class ids, same shape, with `ignore_label` for pixels that do not count.
      num_classes: K.
      ignore_label: label value excluded from the counts.
      valid_mask: optional bool [N] or [N, H, W]; False entries are excluded (eval padding).

    Labels outside [0, K) other than `ignore_label` are an error: with concrete inputs this raises
    ValueError; under jit they cannot be checked and are not counted (the data pipeline validates
    labels when it decodes them).
    """
    if pred.shape != labels.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != labels shape {tuple(labels.shape)}")
    valid = valid_pixels(labels, ignore_label, valid_mask)
    if not isinstance(labels, jax.core.Tracer) and not isinstance(valid, jax.core.Tracer):
        bad = np.asarray(valid) & ((np.asarray(labels) < 0) | (np.asarray(labels) >= num_classes))
        if bad.any():
            raise ValueError(
                f"labels contain values {sorted(set(np.asarray(labels)[bad].tolist()))[:10]} outside "
                f"[0, {num_classes}) and not ignore_label={ignore_label}"
            )
    k = num_classes
    in_range = valid & (labels >= 0) & (labels < k) & (pred >= 0) & (pred < k)
    flat = jnp.where(in_range, labels.astype(jnp.int32) * k + pred.astype(jnp.int32), k * k)
    counts = jnp.bincount(flat.reshape(-1), length=k * k + 1)[: k * k]
    return counts.reshape(k, k).astype(jnp.int32)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def metrics_from_confusion(conf: Any) -> dict[str, Any]:
    """Standard segmentation metrics from an int64 confusion matrix [K, K] (rows = ground truth).

    Returns a dict of Python floats/lists:
      iou_per_class: tp / (gt + pred - tp) per class; NaN for classes absent from both.
      miou: mean of iou_per_class over the non-NaN entries.
      pixel_accuracy: trace / total.
      accuracy_per_class: tp / gt per class (NaN for classes absent from the ground truth).
      mean_accuracy: mean of accuracy_per_class over the non-NaN entries.
      fw_iou: sum over classes of (gt_c / total) * iou_c (frequency-weighted IoU).
      num_pixels: total counted pixels (int).
    Metrics over an empty matrix are NaN.
    """
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square [K, K], got shape {conf.shape}")
    conf = conf.astype(np.int64)
    tp = np.diag(conf).astype(np.float64)
    gt = conf.sum(axis=1).astype(np.float64)
    pr = conf.sum(axis=0).astype(np.float64)
    total = float(conf.sum())
    iou = _safe_divide(tp, gt + pr - tp)
    acc = _safe_divide(tp, gt)

    def nanmean(x):
        return float(np.nanmean(x)) if np.any(~np.isnan(x)) else math.nan

    freq = gt / total if total > 0 else np.zeros_like(gt)
    present = gt > 0
    return {
        "miou": nanmean(iou),
        "iou_per_class": [float(v) for v in iou],
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
        "accuracy_per_class": [float(v) for v in acc],
        "mean_accuracy": nanmean(acc),
        "fw_iou": float(np.sum(freq[present] * iou[present])) if total > 0 else math.nan,
        "num_pixels": int(total),
    }


class ConfusionAccumulator:
    """Host-side int64 sum of per-batch confusion matrices (and optional boundary-IoU counts).

    Example:
      acc = ConfusionAccumulator(num_classes)
      for batch in eval_batches: acc.update(eval_step(state, batch))
      metrics = acc.result()  # metrics_from_confusion(...) (+ "boundary_iou" when updated)
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Sets all counts to zero."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.boundary_intersection = np.zeros((self.num_classes,), np.int64)
        self.boundary_union = np.zeros((self.num_classes,), np.int64)
        self._has_boundary = False

    def update(self, conf: Any) -> None:
        """Adds a [K, K] integer confusion matrix (device or host array) in int64."""
        conf = np.asarray(conf)
        if conf.shape != self.confusion.shape:
            raise ValueError(f"confusion shape {conf.shape} != expected {self.confusion.shape}")
        if not np.issubdtype(conf.dtype, np.integer):
            raise ValueError(f"confusion matrix must hold integer counts, got {conf.dtype}")
        self.confusion += conf.astype(np.int64)

    def update_boundary(self, intersection: Any, union: Any) -> None:
        """Adds per-class boundary intersection/union counts [K] from `boundary_iou_counts`."""
        if np.shape(intersection) != (self.num_classes,) or np.shape(union) != (self.num_classes,):
            raise ValueError(
                f"boundary counts must be [{self.num_classes}], got {np.shape(intersection)} and {np.shape(union)}"
            )
        self.boundary_intersection += np.asarray(intersection).astype(np.int64)
        self.boundary_union += np.asarray(union).astype(np.int64)
        self._has_boundary = True

    def result(self) -> dict[str, Any]:
        """metrics_from_confusion of the sum, plus boundary_iou(_per_class) if counts were added."""
        out = metrics_from_confusion(self.confusion)
        if self._has_boundary:
            biou = _safe_divide(self.boundary_intersection.astype(np.float64), self.boundary_union)
            out["boundary_iou_per_class"] = [float(v) for v in biou]
            out["boundary_iou"] = float(np.nanmean(biou)) if np.any(~np.isnan(biou)) else math.nan
        return out


def dilation_pixels(height: int, width: int, dilation_ratio: float) -> int:
    """Boundary width d of Boundary IoU: round(ratio * image diagonal), at least 1 pixel."""
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def mask_boundary(masks: jax.Array, dilation: int) -> jax.Array:
    """Inner boundary of binary masks [..., H, W]: mask minus its erosion by a (2d+1)^2 square.

    Pixels outside the image count as background, so a mask touching the border has a boundary
    there (as in Cheng et al.'s reference, which pads with zeros before eroding).
    """
    m = jnp.asarray(masks).astype(jnp.int32)
    # skimage's erosion with zero padding (segjax.ops applies the square separably: O(d) per pixel).
    return m > erosion(m, square(2 * dilation + 1), mode="constant", cval=0)


def boundary_iou_counts(
    pred: jax.Array,
    labels: jax.Array,
    num_classes: int,
    *,
    ignore_label: int,
    dilation_ratio: float = 0.02,
    dilation: int | None = None,
    valid_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-class Boundary IoU counts (Cheng et al. 2021) for a batch: (intersection, union) int32 [K].

    For class c, G = boundary(labels == c), P = boundary(pred == c) (see `mask_boundary`, width d
    = `dilation` or `dilation_pixels(H, W, dilation_ratio)`); counts |G & P| and |G | P| over the
    counted pixels (not ignore, inside valid_mask). Sum the counts over a split and divide for the
    split's Boundary IoU (`ConfusionAccumulator.update_boundary`).
    Shapes: pred, labels [N, H, W] integer.
    """
    if pred.shape != labels.shape or labels.ndim != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and labels {tuple(labels.shape)} must both be [N, H, W]")
    d = dilation if dilation is not None else dilation_pixels(labels.shape[1], labels.shape[2], dilation_ratio)
    valid = valid_pixels(labels, ignore_label, valid_mask)
    classes = jnp.arange(num_classes).reshape(1, -1, 1, 1)
    gt_b = mask_boundary(labels[:, None] == classes, d) & valid[:, None]
    pr_b = mask_boundary(pred[:, None] == classes, d) & valid[:, None]
    inter = jnp.sum(gt_b & pr_b, axis=(0, 2, 3), dtype=jnp.int32)
    union = jnp.sum(gt_b | pr_b, axis=(0, 2, 3), dtype=jnp.int32)
    return inter, union


def boundary_iou(
    pred: jax.Array,
    labels: jax.Array,
    num_classes: int,
    *,
    ignore_label: int,
    dilation_ratio: float = 0.02,
    dilation: int | None = None,
    valid_mask: jax.Array | None = None,
) -> tuple[float, np.ndarray]:
    """Boundary IoU of one batch: (mean over classes with a non-empty union, per-class [K] with NaN).

    See `boundary_iou_counts` for the definition and arguments.
    """
    inter, union = boundary_iou_counts(
        pred, labels, num_classes, ignore_label=ignore_label, dilation_ratio=dilation_ratio,
        dilation=dilation, valid_mask=valid_mask,
    )
    per_class = _safe_divide(np.asarray(inter, np.float64), np.asarray(union, np.float64))
    mean = float(np.nanmean(per_class)) if np.any(~np.isnan(per_class)) else math.nan
    return mean, per_class
