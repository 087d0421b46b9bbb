"""Non-maximum suppression with static shapes, equal to `torchvision.ops.nms` / `batched_nms`.

torchvision's greedy rule: visit boxes in order of decreasing score (a stable sort, so equal
scores are visited lower index first); keep a box unless an already kept box overlaps it with
IoU *strictly greater* than the threshold. Its result has a data-dependent length, so here it is
returned padded: `indices` [max_output] int32 (kept boxes in decreasing score order, then -1)
and `count` (how many are real). A `valid` mask marks padding boxes, which are never kept and
never suppress anything.

Implementation: one argsort, then a `lax.while_loop` over the sorted boxes that stops after the
last valid one; step i computes box i's IoU with every box (the same float32 expression as
torchvision's kernel, `inter / (area_i + area_j - inter)`, so an IoU exactly at the threshold is
decided identically) and, if box i survived, suppresses the later boxes it overlaps. Memory is
O(K) (no K x K matrix), time O(K^2) vector work; works under `jit` and `vmap` (the loop then
runs until the longest batch element is done).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from segjax.ops.boxes import box_area


def _sorted_order(scores: jax.Array, valid: jax.Array) -> jax.Array:
    """Indices sorting valid boxes first, by decreasing score, ties by increasing index."""
    k = scores.shape[0]
    iota = jnp.arange(k, dtype=jnp.int32)
    _, _, order = lax.sort((~valid, -scores, iota), num_keys=3)
    return order


def _greedy_keep(boxes: jax.Array, num_valid: jax.Array, iou_threshold, classes=None) -> jax.Array:
    """Keep mask [K] over boxes already sorted (valid first, by decreasing score)."""
    k = boxes.shape[0]
    if k == 0:
        return jnp.zeros((0,), bool)
    areas = box_area(boxes)
    iota = jnp.arange(k, dtype=jnp.int32)
    threshold = jnp.asarray(iou_threshold, boxes.dtype)

    def body(state):
        i, suppressed = state
        box = boxes[i]
        w = jnp.maximum(jnp.minimum(box[2], boxes[:, 2]) - jnp.maximum(box[0], boxes[:, 0]), 0.0)
        h = jnp.maximum(jnp.minimum(box[3], boxes[:, 3]) - jnp.maximum(box[1], boxes[:, 1]), 0.0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter)
        hit = (iou > threshold) & (iota > i) & ~suppressed[i]
        if classes is not None:
            hit &= classes == classes[i]
        return i + 1, suppressed | hit

    suppressed0 = iota >= num_valid
    _, suppressed = lax.while_loop(lambda s: s[0] < num_valid, body, (jnp.int32(0), suppressed0))
    return ~suppressed


def _compact(keep_sorted: jax.Array, order: jax.Array, max_output: int):
    """First `max_output` original indices where `keep_sorted`, padded with -1, and their count."""
    pos = jnp.cumsum(keep_sorted.astype(jnp.int32)) - 1
    slot = jnp.where(keep_sorted & (pos < max_output), pos, max_output)
    indices = jnp.full((max_output,), -1, jnp.int32).at[slot].set(order, mode="drop")
    count = jnp.minimum(jnp.sum(keep_sorted, dtype=jnp.int32), max_output)
    return indices, count


def _check(boxes, scores, max_output, valid):
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [K, 4] (x1, y1, x2, y2), got {boxes.shape}; "
                         f"use jax.vmap for a batch")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must have shape [K] = {boxes.shape[:1]}, got {scores.shape}")
    if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 0:
        raise ValueError(f"max_output must be a non-negative int (a static size), got {max_output!r}")
    if valid is not None and jnp.shape(valid) != boxes.shape[:1]:
        raise ValueError(f"valid must have shape [K] = {boxes.shape[:1]}, got {jnp.shape(valid)}")


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold, max_output: int, *,
        valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS like `torchvision.ops.nms`, padded to a static size.

    Args:
      boxes: [K, 4] (x1, y1, x2, y2).
      scores: [K].
      iou_threshold: a later box is suppressed by a kept one when their IoU > this (strictly).
      max_output: static length of the result (e.g. K to keep everything NMS keeps).
      valid: optional bool [K]; False boxes are padding: never kept, never suppressing.
    Returns:
      (indices int32 [max_output], count int32 []): indices into `boxes` of the kept boxes in
      decreasing score order (equal scores: lower index first), the first `count` real, the rest
      -1. `torchvision.ops.nms(boxes[valid], ...)[:max_output]` mapped back to original indices.

    Example:
      >>> idx, n = nms(boxes, scores, 0.5, 100)
      >>> kept = boxes[idx[:n]]  # outside jit; inside, mask with jnp.arange(100) < n
    """
    boxes = jnp.asarray(boxes)
    scores = jnp.asarray(scores)
    _check(boxes, scores, max_output, valid)
    valid = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return _nms(boxes, scores, None, jnp.asarray(iou_threshold, boxes.dtype), valid, max_output)


def batched_nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array, iou_threshold,
                max_output: int, *, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """NMS within each class (boxes of different classes never suppress each other).

    Equal to torchvision's `batched_nms(boxes, scores, classes, iou_threshold)` (its per-class
    "vanilla" path; the coordinate-offset path it uses for small inputs gives the same result
    except where offsetting the coordinates changes an IoU's rounding). Arguments and result as
    `nms`; `classes` [K] integer ids. Kept boxes of all classes come in decreasing score order.
    """
    boxes = jnp.asarray(boxes)
    scores = jnp.asarray(scores)
    _check(boxes, scores, max_output, valid)
    if jnp.shape(classes) != boxes.shape[:1]:
        raise ValueError(f"classes must have shape [K] = {boxes.shape[:1]}, got {jnp.shape(classes)}")
    valid = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return _nms(boxes, scores, jnp.asarray(classes), jnp.asarray(iou_threshold, boxes.dtype), valid,
                max_output)


# Jitted so eager calls compile once per shape instead of dispatching op by op.
@functools.partial(jax.jit, static_argnums=(5,))
def _nms(boxes, scores, classes, iou_threshold, valid, max_output):
    order = _sorted_order(scores, valid)
    num_valid = jnp.sum(valid, dtype=jnp.int32)
    keep = _greedy_keep(boxes[order], num_valid, iou_threshold,
                        None if classes is None else classes[order])
    return _compact(keep, order, max_output)


__all__ = ["batched_nms", "nms"]
