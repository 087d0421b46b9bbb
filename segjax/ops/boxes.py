"""Box geometry for detection, with `torchvision.ops` / torchvision's `BoxCoder` semantics.

Boxes are `[..., 4]` rows `(x1, y1, x2, y2)` in pixels. Everything is elementwise or pairwise
on fixed shapes (no data-dependent filtering): where torchvision *drops* boxes
(`remove_small_boxes`) segjax returns a validity mask instead, so the shapes stay static under
`jit`. The float32 arithmetic follows torchvision's operation order, so results agree to the
last bit in the common cases (an IoU exactly at an NMS threshold is decided the same way).

Box coding (Faster R-CNN, Girshick 2015): a box is encoded relative to a reference box as
`(wx * dx / w_ref, wy * dy / h_ref, ww * log(w / w_ref), wh * log(h / h_ref))` with `dx, dy` the
centre offsets; decoding clamps the log-size deltas at `log(1000 / 16)` before `exp` (torchvision's
`bbox_xform_clip`), so a wild regression cannot overflow.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

# torchvision's BoxCoder default: exp() of larger size deltas is clamped.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_area(boxes: jax.Array) -> jax.Array:
    """Areas `(x2 - x1) * (y2 - y1)` of `boxes` [..., 4] -> [...] (negative for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """Pairwise IoU of `boxes1` [..., N, 4] and `boxes2` [..., M, 4] -> [..., N, M].

    Equal to `torchvision.ops.box_iou`: intersection clamped at 0, union = area1 + area2 - inter,
    IoU = inter / union (0 / 0 = NaN for two empty boxes, as torchvision).
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union


def clip_boxes(boxes: jax.Array, size: Sequence[int]) -> jax.Array:
    """Clamps x to [0, W] and y to [0, H] (`size = (H, W)`), like `clip_boxes_to_image`."""
    height, width = size
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1).astype(boxes.dtype)


def proper_boxes(boxes: jax.Array) -> jax.Array:
    """Validity mask [...] of boxes with finite coordinates and positive width and height
    (`x2 > x1` and `y2 > y1`).

    The converse is what torchvision's detection models reject as a degenerate training target
    ("All bounding boxes should have positive height and width"). segjax's detection losses treat
    a ground-truth box failing this like a padding slot (never matched), so one bad box under
    `jit` cannot make every anchor positive or a loss infinite.
    """
    finite = jnp.all(jnp.isfinite(boxes), axis=-1)
    return finite & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def remove_small_boxes(boxes: jax.Array, min_size: float) -> jax.Array:
    """Validity mask [...] of boxes whose width and height are both >= `min_size`.

    torchvision's `remove_small_boxes` returns the indices where this mask is true.
    """
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)


def _weights(weights: Sequence[float]) -> tuple[float, float, float, float]:
    if len(weights) != 4:
        raise ValueError(f"box coder weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}")
    return tuple(float(w) for w in weights)  # type: ignore[return-value]


def encode_boxes(reference: jax.Array, proposals: jax.Array,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
    """Regression targets [..., 4] taking `proposals` [..., 4] to `reference` [..., 4].

    torchvision's `BoxCoder(weights).encode_single(reference, proposals)`: `(dx, dy, dw, dh)` =
    `(wx (cx_ref - cx) / w, wy (cy_ref - cy) / h, ww log(w_ref / w), wh log(h_ref / h))` with
    `w, h, cx, cy` the proposal's width, height and centre. Shapes broadcast.
    """
    wx, wy, ww, wh = _weights(weights)
    ex_w = proposals[..., 2] - proposals[..., 0]
    ex_h = proposals[..., 3] - proposals[..., 1]
    ex_cx = proposals[..., 0] + 0.5 * ex_w
    ex_cy = proposals[..., 1] + 0.5 * ex_h
    gt_w = reference[..., 2] - reference[..., 0]
    gt_h = reference[..., 3] - reference[..., 1]
    gt_cx = reference[..., 0] + 0.5 * gt_w
    gt_cy = reference[..., 1] + 0.5 * gt_h
    return jnp.stack([
        wx * (gt_cx - ex_cx) / ex_w,
        wy * (gt_cy - ex_cy) / ex_h,
        ww * jnp.log(gt_w / ex_w),
        wh * jnp.log(gt_h / ex_h),
    ], axis=-1)


def decode_boxes(deltas: jax.Array, boxes: jax.Array,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clip: float = BBOX_XFORM_CLIP) -> jax.Array:
    """Applies regression `deltas` [..., 4] to reference `boxes` [..., 4] -> boxes [..., 4].

    torchvision's `BoxCoder(weights, clip).decode_single`: deltas are divided by the weights,
    `dw, dh` clamped at `clip` (above only), then centre `dx * w + cx`, size `exp(dw) * w`.
    Shapes broadcast (e.g. per-class deltas [K, C, 4] on boxes [K, 1, 4]).
    """
    wx, wy, ww, wh = _weights(weights)
    boxes = boxes.astype(deltas.dtype)
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    ctr_x = boxes[..., 0] + 0.5 * widths
    ctr_y = boxes[..., 1] + 0.5 * heights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, clip)
    dh = jnp.minimum(deltas[..., 3] / wh, clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = 0.5 * (jnp.exp(dw) * widths)
    half_h = 0.5 * (jnp.exp(dh) * heights)
    return jnp.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w,
                      pred_ctr_y + half_h], axis=-1)


__all__ = ["BBOX_XFORM_CLIP", "box_area", "box_iou", "clip_boxes", "decode_boxes", "encode_boxes",
           "proper_boxes", "remove_small_boxes"]
