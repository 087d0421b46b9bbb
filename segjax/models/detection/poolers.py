"""Multi-scale ROI Align over FPN levels, as torchvision's `MultiScaleRoIAlign` (poolers.py).

Level mapping (FPN paper, eq. 1; torchvision's `LevelMapper`): a box of area A goes to level
`floor(canonical_level + log2(sqrt(A) / canonical_scale) + eps)` clamped to [k_min, k_max]
(224, 4, 1e-6 and 2..5 for P2-P5), each level pooled at its scale `2 ** -k`.

ROI Align itself follows torchvision's kernel with `aligned=False` (Mask R-CNN's): the box is
scaled to the level, at least 1 x 1 cell, split into `output_size` bins, each averaged over
`sampling_ratio`² bilinear samples (a sample beyond -1 or the map size counts as 0; coordinates
are clamped at 0 and the last pixel). Unlike `segjax.ops.roi_align` (dense sampling matrices,
cheap for small maps) this gathers the four neighbours of every sample from the box's level,
which costs O(boxes x samples x C) whatever the map sizes — the form that scales to 800-pixel
images with 1000 proposals. All levels of all images of a batch are stacked into one table
(`pyramid_table`), so a box of any image at any level is one gather with static shapes.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.ops.boxes import box_area


def map_levels(boxes: jax.Array, k_min: int = 2, k_max: int = 5, canonical_scale: int = 224,
               canonical_level: int = 4, eps: float = 1e-6) -> jax.Array:
    """FPN level index (0 for k_min) [...] int32 of each box [..., 4] (torchvision's LevelMapper)."""
    s = jnp.sqrt(box_area(boxes))
    target = jnp.floor(canonical_level + jnp.log2(s / canonical_scale) + jnp.float32(eps))
    return (jnp.clip(target, k_min, k_max) - k_min).astype(jnp.int32)


def _axis_samples(start, bin_size, bins: int, grid: int, size):
    """Neighbour indices and weights along one axis: ([K, bins, grid, 2] int32, same float32).

    Weights include validity and the 1/grid average; `size` [K] is each box's map extent.
    """
    size_f = size.astype(jnp.float32)[:, None, None]
    p = jnp.arange(bins, dtype=jnp.float32)[None, :, None]
    i = jnp.arange(grid, dtype=jnp.float32)[None, None, :]
    b = bin_size[:, None, None]
    pos = start[:, None, None] + p * b + ((i + 0.5) * b) / grid  # torchvision's operation order
    valid = (pos >= -1.0) & (pos <= size_f)
    pos = jnp.maximum(pos, 0.0)
    low = jnp.floor(pos).astype(jnp.int32)
    last = size[:, None, None] - 1
    at_end = low >= last
    low = jnp.where(at_end, last, low)
    high = jnp.where(at_end, last, low + 1)
    frac = jnp.where(at_end, 0.0, pos - low.astype(jnp.float32))
    weights = jnp.stack([1.0 - frac, frac], axis=-1) * (valid[..., None] / grid)
    return jnp.stack([low, high], axis=-1), weights


def pyramid_table(features: Sequence[jax.Array]) -> jax.Array:
    """One gather table [N * R, C] float32 of a batch's pyramid (levels [N, H_l, W_l, C], finest
    first): image i's rows are `i * R + offset_l + y * W_l + x`, R = sum of H_l * W_l."""
    n, channels = features[0].shape[0], features[0].shape[-1]
    per_image = jnp.concatenate([f.reshape(n, -1, channels).astype(jnp.float32) for f in features], axis=1)
    return per_image.reshape(-1, channels)


def pyramid_geometry(features: Sequence[jax.Array]) -> tuple[tuple[int, int], ...]:
    """The static (H_l, W_l) of each level [N, H_l, W_l, C]: `roi_align_table`'s `geometry`."""
    return tuple((int(f.shape[1]), int(f.shape[2])) for f in features)


def roi_align_table(table: jax.Array, geometry: Sequence[tuple[int, int]], boxes: jax.Array,
                    image_index: jax.Array, output_size: int, *, scales: Sequence[float],
                    sampling_ratio: int = 2, k_min: int = 2, k_max: int = 5, canonical_scale: int = 224,
                    canonical_level: int = 4) -> jax.Array:
    """Multi-scale ROI Align of `boxes` [K, 4] of any images of a batch, each at its level.

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
    Building the table once and pooling several sets of boxes from it (e.g. under `lax.cond`)
    keeps one copy of the pyramid. Differentiable in `table` only (as torchvision's).
    """
    if len(geometry) != k_max - k_min + 1 or len(scales) != len(geometry):
        raise ValueError(f"need {k_max - k_min + 1} levels and scales, got {len(geometry)} and {len(scales)}")
    if not isinstance(sampling_ratio, int) or sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be a positive int, got {sampling_ratio!r}")
    heights = np.array([g[0] for g in geometry], np.int32)
    widths = np.array([g[1] for g in geometry], np.int32)
    offsets = np.concatenate([[0], np.cumsum(heights * widths)[:-1]]).astype(np.int32)
    rows = int(np.sum(heights * widths))

    levels = map_levels(boxes, k_min, k_max, canonical_scale, canonical_level)
    scale = jnp.asarray(np.asarray(scales, np.float32))[levels]
    h, w = jnp.asarray(heights)[levels], jnp.asarray(widths)[levels]
    x1, y1, x2, y2 = (boxes[:, i] * scale for i in range(4))
    roi_w = jnp.maximum(x2 - x1, 1.0)
    roi_h = jnp.maximum(y2 - y1, 1.0)
    n = output_size
    yi, wy = _axis_samples(y1, roi_h / n, n, sampling_ratio, h)  # [K, n, g, 2]
    xi, wx = _axis_samples(x1, roi_w / n, n, sampling_ratio, w)
    k = boxes.shape[0]
    yi, wy = yi.reshape(k, n, 1, -1, 1), wy.reshape(k, n, 1, -1, 1)  # [K, n, 1, 2g, 1]
    xi, wx = xi.reshape(k, 1, n, 1, -1), wx.reshape(k, 1, n, 1, -1)  # [K, 1, n, 1, 2g]
    base = image_index.astype(jnp.int32) * rows + jnp.asarray(offsets)[levels]
    flat = base[:, None, None, None, None] + yi * w[:, None, None, None, None] + xi  # [K, n, n, 2g, 2g]
    weights = wy * wx
    return _weighted_gather(table, lax.stop_gradient(flat), lax.stop_gradient(weights))


@jax.custom_vjp
def _weighted_gather(table: jax.Array, flat: jax.Array, weights: jax.Array) -> jax.Array:
    """out[k, i, j] = sum over (a, b) of weights[k, i, j, a, b] * table[flat[k, i, j, a, b]].

    One weighted gather per (sample, neighbour) pair, summed: XLA fuses each gather into the
    accumulation, so the [K, n, n, (2g)^2, C] array of neighbours is never materialised.
    """
    k, n = flat.shape[:2]
    out = jnp.zeros((k, n, n, table.shape[1]), jnp.float32)
    for a in range(flat.shape[3]):
        for b in range(flat.shape[4]):
            out = out + weights[:, :, :, a, b, None] * table[flat[:, :, :, a, b]]
    return out


def _weighted_gather_fwd(table, flat, weights):
    return _weighted_gather(table, flat, weights), (table.shape, flat, weights)


def _weighted_gather_bwd(residuals, cotangent):
    """The table's gradient as one in-place scatter-add per (sample, neighbour) pair in a loop.

    Autodiff's transpose of the 16 gathers is 16 scatters into zeros, which XLA merges into
    one scatter of a materialised [16 K n n, C] update array; scattering each pair's weighted
    cotangent in turn (the multiply fused into the scatter) made the box head's ROI Align
    forward + backward 2.3x faster on CPU (510 -> 223 ms, 1024 boxes at 512 x 512, BENCHMARKS.md).
    No gradient flows to the boxes (torchvision's `roi_align` has none either).
    """
    shape, flat, weights = residuals
    pairs = flat.shape[3] * flat.shape[4]
    flat = jnp.moveaxis(flat.reshape(*flat.shape[:3], pairs), -1, 0)
    weights = jnp.moveaxis(weights.reshape(*weights.shape[:3], pairs), -1, 0)

    def body(i, grad):
        return grad.at[flat[i]].add(weights[i][..., None] * cotangent)

    grad = lax.fori_loop(0, pairs, body, jnp.zeros(shape, jnp.float32))
    return grad, None, None


_weighted_gather.defvjp(_weighted_gather_fwd, _weighted_gather_bwd)


def multiscale_roi_align(features: Sequence[jax.Array], boxes: jax.Array, output_size: int, *,
                         scales: Sequence[float], **kwargs) -> jax.Array:
    """`roi_align_table` on one image's pyramid (levels [H_l, W_l, C]): [K, s, s, C] of boxes [K, 4].

    Keyword arguments as `roi_align_table` (sampling_ratio, k_min, k_max, ...). Vmap over
    images for a batch, or use `roi_align_table` with an image index per box.
    """
    batched = [f[None] for f in features]
    return roi_align_table(pyramid_table(batched), pyramid_geometry(batched), boxes,
                           jnp.zeros(boxes.shape[:1], jnp.int32), output_size, scales=scales, **kwargs)


__all__ = ["map_levels", "multiscale_roi_align", "pyramid_geometry", "pyramid_table", "roi_align_table"]
