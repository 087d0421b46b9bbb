"""Pasting fixed-size instance masks into the image, equal to torchvision's `paste_masks_in_image`.

torchvision (roi_heads.py), per mask m [M, M] and box b:
  1. pad m by one zero pixel on every side ([M + 2, M + 2]) and scale the box about its centre by
     (M + 2) / M (float32), so the padded mask covers the enlarged box exactly as m covered b;
  2. truncate the enlarged box's corners to integers (toward zero, `.to(int64)`);
  3. resize the padded mask bilinearly (`align_corners=False`) to h x w = max(y2 - y1 + 1, 1) x
     max(x2 - x1 + 1, 1) pixels;
  4. write it at rows y1..y2 and columns x1..x2 of an all-zero H x W image (cropped to the image).

Here all of that is static-shaped: the resize-and-place of step 3-4 is separable, so pixel (y, x)
of the result is `Wy[y] @ padded_mask @ Wx[x]^T` where `Wy` [H, M + 2] holds the bilinear weights
of image row y (zero outside rows y1..y2) and `Wx` likewise; the whole paste is two batched
matmuls. jit-able and vmap-able, differentiable in the mask values.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _expand_boxes(boxes: jax.Array, scale: float) -> jax.Array:
    """torchvision's `expand_boxes` (float32, its operation order)."""
    w_half = (boxes[..., 2] - boxes[..., 0]) * 0.5
    h_half = (boxes[..., 3] - boxes[..., 1]) * 0.5
    x_c = (boxes[..., 2] + boxes[..., 0]) * 0.5
    y_c = (boxes[..., 3] + boxes[..., 1]) * 0.5
    w_half = w_half * jnp.float32(scale)
    h_half = h_half * jnp.float32(scale)
    return jnp.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=-1)


def _placement_weights(start: jax.Array, end: jax.Array, in_size: int, out_size: int) -> jax.Array:
    """Weights [..., out_size, in_size]: image pixel i <- bilinear sample of a length-`in_size`
    signal resized to `end - start + 1` (at least 1) pixels and placed at `start`..`end`.

    Matches torch's upsample_bilinear2d (align_corners=False): src = (dst + 0.5) * in / out - 0.5,
    clamped at 0; neighbours floor(src) and min(floor(src) + 1, in - 1).
    """
    length = jnp.maximum(end - start + 1, 1)
    pixel = jnp.arange(out_size, dtype=jnp.int32)
    dst = pixel - start[..., None]  # [..., out]
    inside = (pixel >= start[..., None]) & (pixel <= end[..., None])
    scale = jnp.float32(in_size) / length.astype(jnp.float32)
    src = jnp.maximum(scale[..., None] * (dst.astype(jnp.float32) + 0.5) - 0.5, 0.0)
    low = jnp.floor(src).astype(jnp.int32)
    low = jnp.minimum(low, in_size - 1)
    high = jnp.minimum(low + 1, in_size - 1)
    lam = src - low.astype(jnp.float32)
    grid = jnp.arange(in_size, dtype=jnp.int32)
    w = ((grid == low[..., None]) * (1.0 - lam)[..., None]
         + (grid == high[..., None]) * lam[..., None])
    return jnp.where(inside[..., None], w, 0.0)


def paste_masks(masks: jax.Array, boxes: jax.Array, image_size: Sequence[int], *,
                padding: int = 1) -> jax.Array:
    """Pastes masks [..., M, M] into images of `image_size` (H, W) at `boxes` [..., 4].

    Equal to torchvision's `paste_masks_in_image(masks[:, None], boxes, (H, W), padding)[:, 0]`
    for every leading shape (e.g. masks [N, D, 28, 28] and boxes [N, D, 4] -> [N, D, H, W]).
    Boxes are (x1, y1, x2, y2) in image pixels; the result is float32 (mask probabilities in,
    probabilities out). Rows/columns of a box outside the image are cropped; a box entirely
    outside gives an all-zero plane.
    """
    masks = jnp.asarray(masks, jnp.float32)
    boxes = jnp.asarray(boxes, jnp.float32)
    if masks.ndim < 2 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"masks must be [..., M, M], got {masks.shape}")
    if boxes.shape != masks.shape[:-2] + (4,):
        raise ValueError(f"boxes must be {masks.shape[:-2] + (4,)} (one box per mask), got {boxes.shape}")
    height, width = (int(s) for s in image_size)
    return _paste(masks, boxes, (height, width), int(padding))


# Jitted so eager calls compile once per shape instead of dispatching op by op.
@functools.partial(jax.jit, static_argnums=(2, 3))
def _paste(masks, boxes, image_size, padding):
    height, width = image_size
    m = masks.shape[-1]
    padded = jnp.pad(masks, [(0, 0)] * (masks.ndim - 2) + [(padding, padding)] * 2)
    size = m + 2 * padding
    expanded = _expand_boxes(boxes, float(size) / m).astype(jnp.int32)  # truncates toward zero
    wy = _placement_weights(expanded[..., 1], expanded[..., 3], size, height)  # [..., H, S]
    wx = _placement_weights(expanded[..., 0], expanded[..., 2], size, width)  # [..., W, S]
    rows = jnp.einsum("...ys,...st->...yt", wy, padded, precision=lax.Precision.HIGHEST)
    return jnp.einsum("...yt,...xt->...yx", rows, wx, precision=lax.Precision.HIGHEST)


__all__ = ["paste_masks"]
