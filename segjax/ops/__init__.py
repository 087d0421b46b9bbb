"""Explicit segmentation operators on NHWC arrays, each checked against torch/torchvision.

Every op is a pure function, differentiable, jit-able and vmap-able:

* `conv2d`, `atrous_conv2d` (segjax.ops.conv), `conv_transpose2d`, `conv_as_matrix`
  (segjax.ops.conv_transpose), and
  `conv_general_dilated`, a faster drop-in for `flax.linen.Conv`'s convolutions on CPU
* `winograd_conv3x3` — Winograd F(2x2 / 4x4, 3x3) for stride-1 (dilated) 3x3 convs (segjax.ops.winograd)
* `max_pool` (segjax.ops.pool; its gradient is written out tap by tap, faster on CPU)
* `max_pool_with_argmax`, `max_unpool`, `nearest_unpool`, `bed_of_nails_unpool` (segjax.ops.unpool)
* `resize` — nearest / bilinear / bicubic with `align_corners`; NDHWC volumes: nearest /
  trilinear (segjax.ops.resize)
* 3-D (NDHWC volumes, DHWIO kernels): `conv3d`, `atrous_conv3d`, `conv_transpose3d`
  (segjax.ops.conv3d), `max_pool3d_with_argmax`, `max_unpool3d` (segjax.ops.pool3d)
* `roi_align` (segjax.ops.roi_align; with `roi_align_table`, its gathered form over a stacked
  feature pyramid, and `roi_align_weights`, the sampling matrices, all from one sampling rule)
* detection: `box_area`, `box_iou`, `clip_boxes`, `remove_small_boxes`, `proper_boxes`, `encode_boxes`,
  `decode_boxes`
  (segjax.ops.boxes), `nms`, `batched_nms` (segjax.ops.nms, static-shaped), `paste_masks`
  (segjax.ops.paste_masks)
* `swap_align2nat` — TensorMask's aligned -> natural mask representation, upsampled
  (segjax.ops.swap_align2nat; detectron2's CUDA-only kernel, here differentiable to any order)
* `erosion`, `dilation`, `opening`, `closing` and the `disk`, `square` footprints — equal to
  skimage.morphology, borders included (segjax.ops.morphology)
"""

from segjax.ops.boxes import (box_area, box_iou, clip_boxes, decode_boxes, encode_boxes, proper_boxes,
                              remove_small_boxes)
from segjax.ops.conv import atrous_conv2d, conv2d, conv_general_dilated
from segjax.ops.conv3d import atrous_conv3d, conv3d, conv_transpose3d
from segjax.ops.conv_transpose import conv_as_matrix, conv_transpose2d
from segjax.ops.morphology import closing, dilation, disk, erosion, opening, square
from segjax.ops.nms import batched_nms, nms
from segjax.ops.paste_masks import paste_masks
from segjax.ops.pool import max_pool
from segjax.ops.pool3d import max_pool3d_with_argmax, max_unpool3d
from segjax.ops.resize import resize
from segjax.ops.roi_align import roi_align
from segjax.ops.swap_align2nat import swap_align2nat, swap_align2nat_windows
from segjax.ops.unpool import bed_of_nails_unpool, max_pool_with_argmax, max_unpool, nearest_unpool
from segjax.ops.winograd import winograd_conv3x3

__all__ = [
    "atrous_conv2d",
    "atrous_conv3d",
    "batched_nms",
    "bed_of_nails_unpool",
    "box_area",
    "box_iou",
    "clip_boxes",
    "closing",
    "conv2d",
    "conv3d",
    "conv_as_matrix",
    "conv_general_dilated",
    "conv_transpose2d",
    "conv_transpose3d",
    "decode_boxes",
    "encode_boxes",
    "dilation",
    "disk",
    "erosion",
    "max_pool",
    "max_pool3d_with_argmax",
    "max_pool_with_argmax",
    "max_unpool",
    "max_unpool3d",
    "nearest_unpool",
    "nms",
    "opening",
    "paste_masks",
    "proper_boxes",
    "remove_small_boxes",
    "resize",
    "roi_align",
    "square",
    "swap_align2nat",
    "swap_align2nat_windows",
    "winograd_conv3x3",
]
