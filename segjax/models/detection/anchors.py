"""Anchors exactly as torchvision's `AnchorGenerator` (anchor_utils.py), computed once in numpy.

Cell anchors of one level: for aspect ratios r (height / width) and sizes s, in float32,
`h_ratio = sqrt(r)`, `w_ratio = 1 / h_ratio`, `w = w_ratio * s`, `h = h_ratio * s` (ratio-major:
index `ratio_index * len(sizes) + size_index`), the box `(-w, -h, w, h) / 2` rounded half to
even (`torch.round`). Grid anchors: the cell anchors shifted by `(x * stride_w, y * stride_h)`
for every feature-map cell, ordered `(y, x, anchor)` — the order in which the RPN head's
`[N, H, W, A]` outputs flatten. `stride = image size // feature-map size` (integer division of
the padded image size, as torchvision). Anchors depend only on static shapes, so they are numpy
constants under `jit`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Mask R-CNN (R50-FPN) defaults: one size per FPN level P2..P6, three aspect ratios.
DEFAULT_SIZES = ((32,), (64,), (128,), (256,), (512,))
DEFAULT_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Zero-centred anchors [len(aspect_ratios) * len(sizes), 4] float32 (torchvision's rounding)."""
    scales = np.asarray(sizes, np.float32)
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
    return np.round(base).astype(np.float32)


def grid_anchors(feature_size: Sequence[int], stride: Sequence[int], cells: np.ndarray) -> np.ndarray:
    """Anchors [H * W * A, 4] of one level: `cells` [A, 4] shifted to every cell, order (y, x, a)."""
    h, w = feature_size
    sh, sw = stride
    ys, xs = np.meshgrid(np.arange(h, dtype=np.int64) * sh, np.arange(w, dtype=np.int64) * sw,
                         indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4).astype(np.float32)
    return (shifts + cells[None]).reshape(-1, 4).astype(np.float32)


def anchors_for(image_size: Sequence[int], feature_sizes: Sequence[Sequence[int]],
                sizes: Sequence[Sequence[float]] = DEFAULT_SIZES,
                aspect_ratios: Sequence[Sequence[float]] = DEFAULT_ASPECT_RATIOS) -> list[np.ndarray]:
    """Per-level anchors `[H_l * W_l * A_l, 4]` for a (padded) image of `image_size` (H, W).

    Equal to torchvision's `AnchorGenerator(sizes, aspect_ratios)` on an image batch of that
    padded size with feature maps of `feature_sizes`, split per level.
    """
    if not (len(sizes) == len(aspect_ratios) == len(feature_sizes)):
        raise ValueError(f"need one sizes/aspect_ratios entry per feature map: {len(sizes)}, "
                         f"{len(aspect_ratios)}, {len(feature_sizes)}")
    out = []
    for size, ratios, (fh, fw) in zip(sizes, aspect_ratios, feature_sizes):
        stride = (image_size[0] // fh, image_size[1] // fw)
        out.append(grid_anchors((fh, fw), stride, cell_anchors(size, ratios)))
    return out


def num_anchors_per_location(sizes=DEFAULT_SIZES, aspect_ratios=DEFAULT_ASPECT_RATIOS) -> list[int]:
    """A of every level (len(sizes[l]) * len(aspect_ratios[l]))."""
    return [len(s) * len(a) for s, a in zip(sizes, aspect_ratios)]


__all__ = ["DEFAULT_ASPECT_RATIOS", "DEFAULT_SIZES", "anchors_for", "cell_anchors", "grid_anchors",
           "num_anchors_per_location"]
