"""ROI Align (Mask R-CNN) with `torchvision.ops.roi_align` semantics: one sampling rule, three forms.

The rule (`roi_align_samples`), per box and axis: the box edges (in feature cells; half a cell
earlier when `aligned`, else the box at least one cell long) are split into `bins` bins, each
sampled at `g` evenly spaced points (`g = sampling_ratio`, or torchvision's adaptive
`ceil(extent / bins)` per box); a sample beyond -1 or the map size counts as 0, otherwise its
coordinate is clamped at 0 and the last cell and it is the bilinear mix of its two neighbours.
A bin is the mean of its `g x g` samples. Everything is separable: a bin's value is the sum
over (y-sample, y-neighbour) x (x-sample, x-neighbour) of `wy * wx * feature[iy, ix]`.

The forms, each built from the rule:
* `roi_align` — the public dense op: per box the sampling matrices `Wy` [ph, H], `Wx` [pw, W]
  (`roi_align_weights`) and the output `Wy @ features[b] @ Wx^T`, batch selection folded into
  `Wy`: two matmuls, cheap for small maps, differentiable in the boxes too.
* `roi_align_table` — the gathered form over a stacked pyramid (`pyramid_table`): each box at its
  own level, the four neighbours of every sample gathered; O(boxes x samples x C) whatever the map
  sizes, with an in-place scatter-add backward. The FPN poolers call it.
* `roi_align_weights` with `sampling_ratio <= 0` — torchvision's adaptive sampling (static shapes
  through a cap on the samples per bin): Mask R-CNN's mask targets.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.ops._args import check_rank, positive_pair


def roi_align_samples(lo: jax.Array, hi: jax.Array, bins: int, size, *, sampling_ratio: int = 2,
                      aligned: bool = False, max_grid: int | None = None):
    """torchvision's ROI Align samples along one axis of K boxes: (low, high, frac, weight).

    Args:
      lo, hi: [K] float32 box edges along the axis, in feature cells (already scaled).
      bins: output bins along the axis.
      size: the map's extent along the axis: an int, or int [K] (each box's map, e.g. its level).
      sampling_ratio: samples per bin (> 0); <= 0 is torchvision's adaptive `ceil(extent / bins)`
        per box, capped at `max_grid` (needed then: shapes are static).
      aligned: shift the box by -0.5 cell (pixel-centre model); else make it at least 1 cell long.
    Returns:
      Each [K, bins, G] (G = sampling_ratio, or max_grid): the sample points' `low` and `high`
      neighbour cells (int32), the fraction `frac` of the way to `high` (float32), and `weight`
      (float32: validity / the box's sample count). A bin is the sum over its samples of
      `weight * ((1 - frac) * map[low] + frac * map[high])`.
    """
    if aligned:
        lo, hi = lo - 0.5, hi - 0.5
        extent = hi - lo
    else:
        extent = jnp.maximum(hi - lo, 1.0)
    bin_size = extent / bins
    adaptive = sampling_ratio <= 0
    if adaptive:
        if max_grid is None:
            raise ValueError("adaptive sampling (sampling_ratio <= 0) needs a static max_grid")
        grid = max_grid
        count = jnp.clip(jnp.ceil(bin_size).astype(jnp.int32), 1, max_grid).astype(jnp.float32)[:, None, None]
    else:
        grid = count = sampling_ratio
    size = jnp.asarray(size)[..., None, None] if np.ndim(size) else size
    p = jnp.arange(bins, dtype=jnp.float32)[None, :, None]
    i = jnp.arange(grid, dtype=jnp.float32)[None, None, :]
    b = bin_size[:, None, None]
    pos = lo[:, None, None] + p * b + ((i + 0.5) * b) / count  # torchvision's operation order
    if adaptive:
        used = (i < count) & (pos >= -1.0) & (pos <= size)
        weight = jnp.where(used, 1.0, 0.0) / count
    else:
        weight = ((pos >= -1.0) & (pos <= size)) / count
    pos = jnp.maximum(pos, 0.0)
    low = jnp.floor(pos).astype(jnp.int32)
    last = size - 1
    at_end = low >= last
    low = jnp.where(at_end, last, low)
    high = jnp.where(at_end, last, low + 1)
    frac = jnp.where(at_end, 0.0, pos - low.astype(jnp.float32))
    return low, high, frac, weight


def roi_align_weights(lo: jax.Array, hi: jax.Array, bins: int, size: int, **kwargs) -> jax.Array:
    """The dense sampling matrices [K, bins, size] of `roi_align_samples` (same arguments).

    Row p of box k averages bin p's bilinear samples over the map's cells, so pooling along this
    axis is `weights[k] @ map` (built by scatter-adding every sample's two neighbour weights).
    """
    low, high, frac, w = roi_align_samples(lo, hi, bins, size, **kwargs)
    k = lo.shape[0]
    rows = jnp.broadcast_to(jnp.arange(k)[:, None, None], low.shape)
    cols = jnp.broadcast_to(jnp.arange(bins)[None, :, None], low.shape)
    dense = jnp.zeros((k, bins, size), jnp.float32)
    dense = dense.at[rows, cols, low].add(w * (1.0 - frac))
    return dense.at[rows, cols, high].add(w * frac)


def _gather_samples(lo, hi, bins, size, **kwargs):
    """Neighbour indices and weights [K, bins, G, 2] (low, high) of `roi_align_samples`."""
    low, high, frac, w = roi_align_samples(lo, hi, bins, size, **kwargs)
    return jnp.stack([low, high], axis=-1), jnp.stack([1.0 - frac, frac], axis=-1) * w[..., None]


def roi_align(features: jax.Array, boxes: jax.Array, output_size, *, spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = True) -> jax.Array:
    """Bilinear ROI pooling, equal to `torchvision.ops.roi_align` (features NHWC here).

    Args:
      features: [N, H, W, C] feature map.
      boxes: [K, 5] rows `(batch_index, x1, y1, x2, y2)` in input-image coordinates.
      output_size: (ph, pw) or an int.
      spatial_scale: feature-map pixels per image pixel (e.g. 1 / 16).
      sampling_ratio: sub-samples per bin along each axis, >= 1 (torchvision's adaptive mode,
        <= 0, depends on box sizes, i.e. on data, so it is not supported).
      aligned: subtract half a pixel from box coordinates (pixel-centre model, Detectron2); if
        False boxes are at least one pixel wide/high, as in the original Mask R-CNN.
    Returns:
      [K, ph, pw, C] in features' dtype (weights and accumulation in float32). Differentiable
      in the features (the gradient scatters into the map) and in the box coordinates.
    """
    check_rank(features, 4, "features", "N, H, W, C")
    if np.ndim(boxes) != 2 or np.shape(boxes)[1] != 5:
        raise ValueError(f"boxes must have shape [K, 5] (batch_index, x1, y1, x2, y2), "
                         f"got {np.shape(boxes)}")
    ph, pw = positive_pair(output_size, "output_size")
    if not isinstance(sampling_ratio, int) or sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be a positive int (adaptive <= 0 is data-dependent), "
                         f"got {sampling_ratio!r}")
    n, h, w, c = features.shape
    if not isinstance(boxes, jax.core.Tracer):
        # Only checkable for concrete boxes; under jit a bad index selects an all-zero map.
        idx = np.asarray(boxes)[:, 0]
        if idx.size and (idx.min() < 0 or idx.max() >= n or (idx != np.round(idx)).any()):
            raise ValueError(f"boxes[:, 0] must be integer batch indices in [0, {n}), got "
                             f"{np.unique(idx)[:8]}")
    return _roi_align(features, jnp.asarray(boxes, jnp.float32), (ph, pw), float(spatial_scale),
                      sampling_ratio, bool(aligned))


# Jitted so eager calls compile once per configuration instead of dispatching op by op.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    n, h, w, c = features.shape
    ph, pw = output_size
    x1, y1, x2, y2 = (boxes[:, i] * spatial_scale for i in range(1, 5))
    rule = dict(sampling_ratio=sampling_ratio, aligned=aligned)
    wy = roi_align_weights(y1, y2, ph, h, **rule)  # [K, ph, H]
    wx = roi_align_weights(x1, x2, pw, w, **rule)  # [K, pw, W]
    batch = jax.nn.one_hot(boxes[:, 0].astype(jnp.int32), n, dtype=jnp.float32)  # [K, N]
    wy_batch = (batch[:, None, :, None] * wy[:, :, None, :]).reshape(-1, ph, n * h)
    acc = jnp.promote_types(features.dtype, jnp.float32)
    rows = jnp.einsum("kpm,mwc->kpwc", wy_batch, features.reshape(n * h, w, c),
                      precision=lax.Precision.HIGHEST, preferred_element_type=acc)
    out = jnp.einsum("kqw,kpwc->kpqc", wx, rows, precision=lax.Precision.HIGHEST,
                     preferred_element_type=acc)
    return out.astype(features.dtype)


# -- the gathered form over a stacked feature pyramid ---------------------------------------------


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
                    image_index: jax.Array, levels: jax.Array, output_size: int, *, scales: Sequence[float],
                    sampling_ratio: int = 2, aligned: bool = False) -> jax.Array:
    """ROI Align of `boxes` [K, 4] of any images of a batch, each on its own pyramid level.

    Args:
      table, geometry: `pyramid_table(levels)` and `pyramid_geometry(levels)` of the batch's
        pyramid (levels [N, H_l, W_l, C], finest first).
      boxes: [K, 4] (x1, y1, x2, y2, image pixels); padding boxes are pooled too (mask them
        downstream). image_index: int [K], the image of each box (torchvision's batch index).
      levels: int [K], the pyramid level (index into `geometry`) each box is pooled from.
      output_size: bins per side (7 for Mask R-CNN's box head, 14 for its mask head).
      scales: feature cells per image pixel of each level (1/4, 1/8, ... for P2...).
      sampling_ratio: samples per bin and axis (> 0). aligned: as `roi_align`'s.
    Returns:
      [K, output_size, output_size, C] float32: box k equals `roi_align` of its image's level
      `levels[k]` at `spatial_scale=scales[levels[k]]`. Building the table once and pooling
      several sets of boxes from it (e.g. under `lax.cond`) keeps one copy of the pyramid.
      Differentiable in `table` only (as torchvision's), by an in-place scatter-add.
    """
    if len(scales) != len(geometry):
        raise ValueError(f"need one scale per level, got {len(scales)} scales for {len(geometry)} levels")
    if not isinstance(sampling_ratio, int) or sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be a positive int, got {sampling_ratio!r}")
    heights = np.array([g[0] for g in geometry], np.int32)
    widths = np.array([g[1] for g in geometry], np.int32)
    offsets = np.concatenate([[0], np.cumsum(heights * widths)[:-1]]).astype(np.int32)
    rows = int(np.sum(heights * widths))

    scale = jnp.asarray(np.asarray(scales, np.float32))[levels]
    h, w = jnp.asarray(heights)[levels], jnp.asarray(widths)[levels]
    x1, y1, x2, y2 = (boxes[:, i] * scale for i in range(4))
    n = output_size
    rule = dict(sampling_ratio=sampling_ratio, aligned=aligned)
    yi, wy = _gather_samples(y1, y2, n, h, **rule)  # [K, n, g, 2]
    xi, wx = _gather_samples(x1, x2, n, w, **rule)
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

__all__ = ["pyramid_geometry", "pyramid_table", "roi_align", "roi_align_samples", "roi_align_table",
           "roi_align_weights"]
