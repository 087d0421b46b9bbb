"""Metrics, every one from exact counts summed over batches (and devices) before dividing.

- `segmentation`: confusion matrices, mIoU and its relatives, Boundary IoU (on device, summed
  as int64 on the host); its public names are re-exported here (`metrics.confusion_matrix`).
- `coco`: COCO box and mask AP through pycocotools' `COCOeval` (`segjax.metrics.coco`).
- `stats`: mean ± std, Student-t intervals and paired differences over seeds
  (`segjax.metrics.stats`).
- `volumetric`: per-class Dice and (95th-percentile) Hausdorff distance of label volumes with
  voxel spacing, host-side, and their per-class mean over cases (`segjax.metrics.volumetric`).
- `parts`: ShapeNet-part's per-shape part mIoU (restricted to the shape's category, on device) and
  its instance / class means (`segjax.metrics.parts`).

`coco`, `stats` and `volumetric` are imported on use (they pull in pycocotools and scipy).
"""

from segjax.metrics.segmentation import (ConfusionAccumulator, boundary_iou, boundary_iou_counts,
                                         confusion_matrix, dilation_pixels, mask_boundary,
                                         metrics_from_confusion)

__all__ = ["ConfusionAccumulator", "boundary_iou", "boundary_iou_counts", "confusion_matrix",
           "dilation_pixels", "mask_boundary", "metrics_from_confusion"]
