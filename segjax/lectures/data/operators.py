"""Figures 1-4: the general convolution, interpolation, unpooling, transposed convolution as
fractionally strided convolution."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from segjax import ops
from segjax.lectures.data._common import DECK_INPUT, DECK_KERNEL, DECK_OUTPUT_GRADIENT, _kernel, _plane, _unplane


# --------------------------------------------------------------------------------------------
# 1. The general convolution


def convolution() -> dict:
    """Figure 1: the decks' 4x4 input, 3x3 kernel, 2x2 output, 4x16 matrix and its transpose.

    Returns `input` [4, 4], `kernel` [3, 3], `conv` [2, 2] (`ops.conv2d`, no padding, stride 1),
    `conv_matrix` [4, 16] (`ops.conv_as_matrix`), `conv_via_matrix` [2, 2] (C @ x),
    `gradient` [4] (the vector the transposed convolution is applied to), `transposed` [4, 4]
    (`ops.conv_transpose2d`) and `transposed_via_matrix` [4, 4] (C^T @ g).
    """
    x, w = _plane(DECK_INPUT), _kernel(DECK_KERNEL)
    conv = _unplane(ops.conv2d(x, w))
    matrix = np.asarray(ops.conv_as_matrix(w, (4, 4)))
    g = np.asarray(DECK_OUTPUT_GRADIENT, np.float32)
    transposed = _unplane(ops.conv_transpose2d(_plane(g.reshape(2, 2)), w))
    return {
        "input": np.asarray(DECK_INPUT), "kernel": np.asarray(DECK_KERNEL), "conv": conv,
        "conv_matrix": matrix,
        "conv_via_matrix": (matrix @ np.asarray(DECK_INPUT, np.float32).ravel()).reshape(2, 2),
        "gradient": g, "transposed": transposed,
        "transposed_via_matrix": (matrix.T @ g).reshape(4, 4),
    }


# --------------------------------------------------------------------------------------------
# 2. Interpolation

INTERPOLATION_SAMPLES = (1.0, 3.0, 2.0, 4.5, 2.5, 0.5)
INTERPOLATION_IMAGE = ((0.0, 1.0, 0.2, 0.6), (0.8, 0.3, 1.0, 0.0),
                       (0.1, 0.9, 0.4, 0.7), (0.5, 0.0, 0.6, 1.0))
_METHODS_1D = {"nearest": "nearest", "linear": "bilinear", "cubic": "bicubic"}


def sample_positions(n_in: int, n_out: int) -> np.ndarray:
    """Where output sample d lies in input-sample units with `align_corners=False`
    (input sample i at position i): (d + 0.5) * n_in / n_out - 0.5."""
    return (np.arange(n_out) + 0.5) * n_in / n_out - 0.5


def interpolation(factor_1d: int = 16, factor_2d: int = 4) -> dict:
    """Figure 2: `ops.resize` through the same samples (1-D) and of a small image (2-D).

    1-D: `samples` [6] upsampled by `factor_1d` with nearest / linear / cubic (resize of a
    [1, 1, 6, 1] image to width 6 * factor_1d, align_corners=False); `positions` are the output
    samples' coordinates in input units. 2-D: the 4x4 `image` upsampled by `factor_2d` with
    nearest / bilinear / bicubic; `bicubic_range` shows the cubic kernel's overshoot.
    """
    s = np.asarray(INTERPOLATION_SAMPLES, np.float32)
    n_out = len(s) * factor_1d
    signal = jnp.asarray(s)[None, None, :, None]
    curves = {name: np.asarray(ops.resize(signal, (1, n_out), method))[0, 0, :, 0]
              for name, method in _METHODS_1D.items()}
    img = np.asarray(INTERPOLATION_IMAGE, np.float32)
    size = img.shape[0] * factor_2d
    images = {m: _unplane(ops.resize(_plane(img), (size, size), m))
              for m in ("nearest", "bilinear", "bicubic")}
    return {
        "samples": s, "factor_1d": factor_1d, "positions": sample_positions(len(s), n_out),
        "upsampled_1d": curves, "image": img, "factor_2d": factor_2d, "upsampled_2d": images,
        "bicubic_range": [float(images["bicubic"].min()), float(images["bicubic"].max())],
    }


# --------------------------------------------------------------------------------------------
# 3. Unpooling

UNPOOL_INPUT = ((3, 1, 2, 6), (5, 4, 7, 1), (2, 9, 1, 3), (1, 0, 4, 8))


def unpooling() -> dict:
    """Figure 3: the three unpoolings of the 2x2 max-pooled 4x4 `input`.

    `pooled`/`indices` come from `ops.max_pool_with_argmax(window 2, stride 2)` (indices are flat
    `h * 4 + w` positions, the "switches"); `nearest`, `bed_of_nails` and `max_unpool` [4, 4]
    from `ops.nearest_unpool`, `ops.bed_of_nails_unpool` and `ops.max_unpool(pooled, indices)`.
    """
    x = _plane(UNPOOL_INPUT)
    pooled, indices = ops.max_pool_with_argmax(x, 2, 2)
    return {
        "input": np.asarray(UNPOOL_INPUT), "pooled": _unplane(pooled),
        "indices": _unplane(indices),
        "nearest": _unplane(ops.nearest_unpool(pooled, 2)),
        "bed_of_nails": _unplane(ops.bed_of_nails_unpool(pooled, 2)),
        "max_unpool": _unplane(ops.max_unpool(pooled, indices, (4, 4))),
    }


# --------------------------------------------------------------------------------------------
# 4. Transposed convolution as fractionally strided convolution

STRIDED_INPUT = ((1, 2, 1), (0, 3, 2), (2, 1, 0))


def fractionally_strided(stride: int = 2, padding: int = 1, output_padding: int = 1) -> dict:
    """Figure 4: `ops.conv_transpose2d` at `stride` as zero insertion + an ordinary convolution.

    The 3x3 `input` gets `stride - 1` zeros between its samples (`ops.bed_of_nails_unpool`,
    cropped to (n - 1) * stride + 1 + output_padding), then `k - 1 - padding` zeros around it
    (`padded`); the stride-1 `ops.conv2d` of that with the flipped deck kernel (`flipped_kernel`)
    is `via_zeros`, equal to `transposed`, segjax's conv_transpose2d (which computes the same sum
    phase by phase without multiplying any inserted zero).
    """
    y = _plane(STRIDED_INPUT)
    w = _kernel(DECK_KERNEL)
    k = w.shape[0]
    transposed = _unplane(ops.conv_transpose2d(y, w, stride=stride, padding=padding,
                                               output_padding=output_padding))
    n = y.shape[1]
    keep = (n - 1) * stride + 1 + output_padding
    zeros_inserted = ops.bed_of_nails_unpool(y, stride)[:, :keep, :keep]
    edge = k - 1 - padding
    padded = jnp.pad(zeros_inserted, ((0, 0), (edge, edge), (edge, edge), (0, 0)))
    flipped = w[::-1, ::-1]
    via_zeros = _unplane(ops.conv2d(padded, flipped))
    return {
        "input": np.asarray(STRIDED_INPUT), "kernel": np.asarray(DECK_KERNEL),
        "stride": stride, "padding": padding, "output_padding": output_padding,
        "zeros_inserted": _unplane(zeros_inserted), "padded": _unplane(padded),
        "flipped_kernel": np.asarray(flipped)[:, :, 0, 0], "via_zeros": via_zeros,
        "transposed": transposed,
    }
