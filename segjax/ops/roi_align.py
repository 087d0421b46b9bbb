"""ROI Align (Mask R-CNN) with `torchvision.ops.roi_align` semantics, as per-box sampling matrices.

For box k the bin grid is separable: every sample's y depends only on (bin row, sub-sample row)
and its x only on (bin column, sub-sample column), and torchvision's bilinear rule (a sample with
y < -1 or y > H, or x < -1 or x > W, is 0; otherwise coordinates are clamped at 0 and the last
pixel) is a product of a y-factor and an x-factor. So each box's output is
`Wy[k] @ features[b_k] @ Wx[k]^T`, with `Wy[k]` [ph, H] holding the bilinear weights averaged
over the bin's `sampling_ratio` sub-samples. The batch selection is folded into `Wy`
(`[K, ph, N * H]`), so there is no per-box copy of the feature map and everything is two matmuls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.ops._args import check_rank, positive_pair


def _axis_weights(start, bin_size, bins: int, grid: int, size: int) -> jax.Array:
    """Averaged bilinear weights [K, bins, size] along one axis (torchvision's sampling rule)."""
    frac = (jnp.arange(grid, dtype=start.dtype) + 0.5) / grid
    pos = (start[:, None, None] + jnp.arange(bins, dtype=start.dtype)[None, :, None] * bin_size[:, None, None]
           + frac[None, None, :] * bin_size[:, None, None])  # [K, bins, grid]
    valid = (pos >= -1.0) & (pos <= size)
    pos = jnp.maximum(pos, 0.0)
    low = jnp.floor(pos).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    lam = jnp.where(at_end, 0.0, pos - low)
    grid_idx = jnp.arange(size)
    w = ((grid_idx == low[..., None]) * (1.0 - lam)[..., None]
         + (grid_idx == high[..., None]) * lam[..., None])
    w = jnp.where(valid[..., None], w, 0.0)
    return w.mean(axis=2)


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
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    wy = _axis_weights(y1, roi_h / ph, ph, sampling_ratio, h)  # [K, ph, H]
    wx = _axis_weights(x1, roi_w / pw, pw, sampling_ratio, w)  # [K, pw, W]
    batch = jax.nn.one_hot(boxes[:, 0].astype(jnp.int32), n, dtype=jnp.float32)  # [K, N]
    wy_batch = (batch[:, None, :, None] * wy[:, :, None, :]).reshape(-1, ph, n * h)
    acc = jnp.promote_types(features.dtype, jnp.float32)
    rows = jnp.einsum("kpm,mwc->kpwc", wy_batch, features.reshape(n * h, w, c),
                      precision=lax.Precision.HIGHEST, preferred_element_type=acc)
    out = jnp.einsum("kqw,kpwc->kpqc", wx, rows, precision=lax.Precision.HIGHEST,
                     preferred_element_type=acc)
    return out.astype(features.dtype)
