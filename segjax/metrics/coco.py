"""COCO box and mask AP with pycocotools' `COCOeval` (host side, numpy in).

segjax does not write its own AP: `CocoAccumulator` collects ground-truth instances and
detections per image, converts them to COCO's in-memory format (masks as RLE with
`pycocotools.mask.encode`, boxes as [x, y, w, h]) and runs `COCOeval` for `bbox` and `segm`.
Metrics are on the 0-1 scale, like mIoU: `box_ap`, `box_ap50`, `box_ap75`, `mask_ap`,
`mask_ap50`, `mask_ap75`, and `*_ap_small/medium/large`. Each is None where COCOeval reports -1,
i.e. where the evaluation has no ground truth of that kind: the size metrics for a size with no
ground-truth instance, and every metric when there is no ground truth at all (or no image),
with or without detections. With ground truth and no detections the metrics are 0.0.

Example:
  >>> acc = CocoAccumulator(num_classes=6)
  >>> acc.add_image(gt_classes=[2], gt_masks=masks_bool[None], det_boxes=..., det_scores=...,
  ...               det_classes=..., det_masks=...)
  >>> acc.result()["mask_ap"]
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np

_STATS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def mask_box(mask: np.ndarray) -> np.ndarray:
    """[x1, y1, x2, y2] (pixel edges, float32) of a non-empty bool mask [H, W]."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def instances_from_maps(label: np.ndarray, instance: np.ndarray, *, ignore_label: int,
                        background: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(classes int32 [M], masks bool [M, H, W]) of an instance-id map and its class map.

    Each instance id > 0 becomes one instance whose class is the most frequent class id among
    its pixels (ignored pixels and `background` left out); ids whose pixels are all ignored or
    background are dropped. Instances are in increasing id order.
    """
    label, instance = np.asarray(label), np.asarray(instance)
    classes, masks = [], []
    for k in np.unique(instance):
        if k == 0:
            continue
        mask = instance == k
        ids = label[mask]
        ids = ids[(ids != ignore_label) & (ids != background)]
        if ids.size == 0:
            continue
        classes.append(int(np.bincount(ids).argmax()))
        masks.append(mask)
    h, w = instance.shape
    return (np.asarray(classes, np.int32),
            np.stack(masks) if masks else np.zeros((0, h, w), bool))


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


class CocoAccumulator:
    """Ground truth and detections of an evaluation, then COCOeval (see the module docstring).

    Args:
      num_classes: K including the background class 0 (categories are 1..K-1).
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self._images: list[dict] = []
        self._gt: list[dict] = []
        self._boxes: list[dict] = []
        self._masks: list[dict] = []

    def add_image(self, *, gt_classes: np.ndarray, gt_masks: np.ndarray,
                  det_boxes: np.ndarray, det_scores: np.ndarray, det_classes: np.ndarray,
                  det_masks: np.ndarray, gt_crowd: np.ndarray | None = None) -> None:
        """Adds one image: ground truth (classes [M], bool masks [M, H, W], optional crowd flags
        [M]) and its valid detections (boxes [D, 4] x1 y1 x2 y2, scores [D], classes [D], bool
        masks [D, H, W])."""
        image_id = len(self._images) + 1
        gt_masks = np.asarray(gt_masks, bool)
        h, w = gt_masks.shape[1:] if gt_masks.ndim == 3 else np.shape(det_masks)[1:]
        self._images.append({"id": image_id, "height": int(h), "width": int(w)})
        crowd = np.zeros(len(gt_classes), bool) if gt_crowd is None else np.asarray(gt_crowd)
        for c, m, iscrowd in zip(gt_classes, gt_masks, crowd):
            if not m.any():
                continue
            self._gt.append({"id": len(self._gt) + 1, "image_id": image_id,
                             "category_id": int(c), "segmentation": _rle(m),
                             "area": float(m.sum()), "bbox": _xywh(mask_box(m)),
                             "iscrowd": int(iscrowd)})
        for box, score, c, m in zip(det_boxes, det_scores, det_classes, det_masks):
            common = {"image_id": image_id, "category_id": int(c), "score": float(score)}
            self._boxes.append({**common, "bbox": _xywh(box)})
            self._masks.append({**common, "segmentation": _rle(np.asarray(m, bool))})

    def _evaluate(self, results: list[dict], iou_type: str) -> dict[str, Any]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if not self._images:
            return {k: None for k in _STATS}
        gt = COCO()
        categories = [{"id": k} for k in range(1, self.num_classes)]
        gt.dataset = {"images": self._images, "annotations": self._gt, "categories": categories}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            if results:
                dt = gt.loadRes(results)
            else:  # loadRes cannot take an empty list: an empty result set, built the same way
                dt = COCO()
                dt.dataset = {"images": self._images, "annotations": [], "categories": categories}
                dt.createIndex()
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {k: (float(v) if v >= 0 else None) for k, v in zip(_STATS, ev.stats[:6])}

    def result(self) -> dict[str, Any]:
        """`box_*` and `mask_*` AP metrics (see the module docstring), `num_images`,
        `num_instances`, `num_detections`."""
        out = {f"box_{k}": v for k, v in self._evaluate(self._boxes, "bbox").items()}
        out.update({f"mask_{k}": v for k, v in self._evaluate(self._masks, "segm").items()})
        out.update(num_images=len(self._images), num_instances=len(self._gt),
                   num_detections=len(self._masks))
        return out
