"""Figure 7: ROI Align's bilinear sampling points, re-derived and checked."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from segjax import ops


# --------------------------------------------------------------------------------------------
# 7. ROI Align

ROI_BOX = (1.6, 1.2, 6.3, 5.9)  # x1, y1, x2, y2 in feature-map pixels (spatial_scale 1)


def roi_sampling_points(box, output_size, sampling_ratio: int, aligned: bool = True,
                        spatial_scale: float = 1.0):
    """Sample coordinates of `ops.roi_align` for one box: ys [ph, g], xs [pw, g].

    The same rule as roi_align (torchvision's): shift by half a pixel when `aligned`, split the
    box into output_size bins and put `sampling_ratio` evenly spaced samples in each bin along
    each axis, at (bin + (i + 0.5) / g) * bin_size from the box's corner. Pixel (r, c) of the
    map is at coordinates (r, c) (its centre).
    """
    ph, pw = output_size
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (v * spatial_scale - offset for v in box)
    w, h = x2 - x1, y2 - y1
    if not aligned:
        w, h = max(w, 1.0), max(h, 1.0)
    frac = (np.arange(sampling_ratio) + 0.5) / sampling_ratio
    ys = y1 + (np.arange(ph)[:, None] + frac[None]) * (h / ph)
    xs = x1 + (np.arange(pw)[:, None] + frac[None]) * (w / pw)
    return ys, xs


def bilinear_at(feature: np.ndarray, y: float, x: float) -> float:
    """torchvision's ROI Align bilinear read of a [H, W] map at (y, x): 0 outside [-1, H] x
    [-1, W], coordinates clamped at 0 and at the last pixel."""
    h, w = feature.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        ly = 0.0
    else:
        y1, ly = y0 + 1, y - y0
    if x0 >= w - 1:
        x0 = x1 = w - 1
        lx = 0.0
    else:
        x1, lx = x0 + 1, x - x0
    return float((1 - ly) * (1 - lx) * feature[y0, x0] + (1 - ly) * lx * feature[y0, x1]
                 + ly * (1 - lx) * feature[y1, x0] + ly * lx * feature[y1, x1])


def roi_align_sampling(output_size=(2, 2), sampling_ratio: int = 2, size: int = 8) -> dict:
    """Figure 7: one box on a `size` x `size` feature map, its bins and bilinear sampling points.

    `pooled` [ph, pw] is `ops.roi_align(aligned=True)`; `from_points` re-derives it as the mean
    of `bilinear_at` over each bin's `sample_ys` x `sample_xs` points (`roi_sampling_points`), so
    the drawn points are the ones the op reads.
    """
    feature = np.asarray(np.random.default_rng(7).integers(0, 10, (size, size)), np.float32)
    pooled = np.asarray(ops.roi_align(jnp.asarray(feature)[None, :, :, None],
                                      jnp.asarray([[0.0, *ROI_BOX]], jnp.float32), output_size,
                                      sampling_ratio=sampling_ratio, aligned=True))[0, :, :, 0]
    ys, xs = roi_sampling_points(ROI_BOX, output_size, sampling_ratio)
    from_points = np.array([[np.mean([bilinear_at(feature, y, x) for y in ys[i] for x in xs[j]])
                             for j in range(output_size[1])] for i in range(output_size[0])])
    return {"feature": feature, "box": list(ROI_BOX), "output_size": list(output_size),
            "sampling_ratio": sampling_ratio, "sample_ys": ys, "sample_xs": xs,
            "pooled": pooled, "from_points": from_points}
