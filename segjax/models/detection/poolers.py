"""Multi-scale ROI Align over FPN levels, as torchvision's `MultiScaleRoIAlign` (poolers.py).

The pooler assigns every box to a pyramid level and calls the gathered ROI Align operator
(`segjax.ops.roi_align.roi_align_table`, torchvision's sampling rule with `aligned=False`, Mask
R-CNN's) on the batch's stacked pyramid (`pyramid_table`), so a box of any image at any level is
one gather with static shapes, costing O(boxes x samples x C) whatever the map sizes.

Level mapping (FPN paper, eq. 1; torchvision's `LevelMapper`): a box of area A goes to level
`floor(canonical_level + log2(sqrt(A) / canonical_scale) + eps)` clamped to [k_min, k_max]
(224, 4, 1e-6 and 2..5 for P2-P5), each level pooled at its scale `2 ** -k`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from segjax.ops.boxes import box_area
from segjax.ops.roi_align import pyramid_geometry, pyramid_table, roi_align_table


def map_levels(boxes: jax.Array, k_min: int = 2, k_max: int = 5, canonical_scale: int = 224,
               canonical_level: int = 4, eps: float = 1e-6) -> jax.Array:
    """FPN level index (0 for k_min) [...] int32 of each box [..., 4] (torchvision's LevelMapper)."""
    s = jnp.sqrt(box_area(boxes))
    target = jnp.floor(canonical_level + jnp.log2(s / canonical_scale) + jnp.float32(eps))
    return (jnp.clip(target, k_min, k_max) - k_min).astype(jnp.int32)


def multiscale_roi_align_table(table: jax.Array, geometry: Sequence[tuple[int, int]], boxes: jax.Array,
                               image_index: jax.Array, output_size: int, *, scales: Sequence[float],
                               sampling_ratio: int = 2, k_min: int = 2, k_max: int = 5,
                               canonical_scale: int = 224, canonical_level: int = 4) -> jax.Array:
    """Multi-scale ROI Align of `boxes` [K, 4] of any images of a batch, each at its FPN level.

    Args:
      table, geometry: `pyramid_table(levels)` and `pyramid_geometry(levels)` of the batch's
        pyramid (levels [N, H_l, W_l, C], finest first, `k_max - k_min + 1` of them).
      boxes: [K, 4] (x1, y1, x2, y2, image pixels); padding boxes are pooled too (mask them
        downstream). image_index: int [K], the image of each box (torchvision's batch index).
      output_size: bins per side (7 for the box head, 14 for the mask head).
      scales: feature cells per image pixel of each level (1/4, 1/8, ... for P2...).
      sampling_ratio: samples per bin and axis (> 0).
    Returns:
      [K, output_size, output_size, C] in float32, equal to torchvision's
      `MultiScaleRoIAlign(["0", "1", "2", "3"], output_size, sampling_ratio)` (aligned=False).
      Differentiable in `table` only (as torchvision's).
    """
    if len(geometry) != k_max - k_min + 1 or len(scales) != len(geometry):
        raise ValueError(f"need {k_max - k_min + 1} levels and scales, got {len(geometry)} and {len(scales)}")
    levels = map_levels(boxes, k_min, k_max, canonical_scale, canonical_level)
    return roi_align_table(table, geometry, boxes, image_index, levels, output_size, scales=scales,
                           sampling_ratio=sampling_ratio)


def multiscale_roi_align(features: Sequence[jax.Array], boxes: jax.Array, output_size: int, *,
                         scales: Sequence[float], **kwargs) -> jax.Array:
    """`multiscale_roi_align_table` on one image's pyramid (levels [H_l, W_l, C]): [K, s, s, C] of
    boxes [K, 4]. Keyword arguments as `multiscale_roi_align_table` (sampling_ratio, k_min, ...).
    Vmap over images for a batch, or use `multiscale_roi_align_table` with an image index per box.
    """
    batched = [f[None] for f in features]
    return multiscale_roi_align_table(pyramid_table(batched), pyramid_geometry(batched), boxes,
                                      jnp.zeros(boxes.shape[:1], jnp.int32), output_size, scales=scales, **kwargs)


def pyramid_of(features: dict[str, jax.Array], names: Sequence[str]):
    """(table, geometry) of the maps `names` of a feature dict (finest first) for the functions
    here (XLA merges the copies that several poolings of one forward pass build)."""
    levels = [features[name] for name in names]
    return pyramid_table(levels), pyramid_geometry(levels)


def multiscale_roi_align_batch(table: jax.Array, geometry: Sequence[tuple[int, int]], boxes: jax.Array,
                               output_size: int, *, scales: Sequence[float], **kwargs) -> jax.Array:
    """`multiscale_roi_align_table` of boxes [N, K, 4] (box k of image i) -> [N, K, s, s, C]."""
    n, k = boxes.shape[:2]
    image = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
    pooled = multiscale_roi_align_table(table, geometry, boxes.reshape(n * k, 4), image, output_size,
                                        scales=scales, **kwargs)
    return pooled.reshape(n, k, *pooled.shape[1:])


__all__ = ["map_levels", "multiscale_roi_align", "multiscale_roi_align_batch", "multiscale_roi_align_table",
           "pyramid_geometry", "pyramid_of", "pyramid_table"]
