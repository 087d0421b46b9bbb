"""Sliding-window inference over N-D volumes with importance-weighted blending.

A network trained on crops predicts a volume larger than its crop window by window, and where
windows overlap their predictions are averaged. nnU-Net (Isensee et al. 2021, Nature Methods,
"Inference" in the Methods) lets windows overlap by half their size and weights each window's
prediction by a Gaussian importance map (σ = 1/8 of the window size per axis), because voxels near
a window's border were predicted with less context. This module computes what
`monai.inferers.sliding_window_inference(inputs, roi_size, sw_batch_size, predictor, overlap,
mode, sigma_scale)` computes with its default constant padding, on channels-last arrays
(`[N, D, H, W, C]` volumes, `[N, H, W, C]` images, any number of spatial axes):

* window positions per axis (`window_starts`): a step of `int(roi * (1 - overlap))` voxels (at
  least 1; the whole axis when `roi == size`), as many windows as it takes to reach the end, the
  last one moved back to lie flush with the border;
* an axis shorter than the window is padded with `cval` (half before, the rest after) and the
  output cropped back;
* output = Σ_w importance·prediction_w / Σ_w importance over the windows covering each voxel,
  added in MONAI's window order (image-major, then row-major over positions).

Compilation and memory. The windows are cut, predicted and added by a host loop over window
batches of one fixed shape `[sw_batch_size, *roi_size, C]` (the last batch is padded with copies
of a real window whose weight is zero). The model forward therefore meets a single shape and is
compiled once for every volume size, which matters because the cases of a validation set usually
differ in size: one `jit` around the whole inference with a `lax.fori_loop` over windows would be
specialised to the volume's shape and recompile the model for each new one. Only two small
model-free programs (cut a batch of windows; add it, weighted, into the output in place) are
compiled per volume shape. What is alive at any time is the input volume, the output accumulator
`[N, *spatial, K]` (donated to each update, so it is updated in place), the weight map `[*spatial]`
and one batch of windows with the model's activations on them: the per-window working set does
not grow with the volume (`experiments/benchmarks/sliding_window_memory.py` measures it). JAX's
asynchronous dispatch keeps the device busy while Python issues the next batch.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MODES = ("gaussian", "constant")


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start offsets of the windows along one axis, as MONAI's `dense_patch_slices`.

    Args:
      size: the axis length, at least `roi` (pad shorter axes first).
      roi: the window length.
      overlap: fraction of `roi` shared by neighbouring windows, in [0, 1).
    Returns:
      Offsets `min(i * step, size - roi)` for `step = max(int(roi * (1 - overlap)), 1)` (`roi` when
      `roi == size`) and `i = 0, 1, ...` until a window reaches the end of the axis.

    Example: `window_starts(10, 4, 0.5) == [0, 2, 4, 6]`; `window_starts(11, 4, 0.5)` ends with 7.
    """
    if not 0 < roi <= size:
        raise ValueError(f"window_starts needs 0 < roi <= size, got roi={roi}, size={size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    step = roi if roi == size else max(int(roi * (1 - overlap)), 1)
    count = next(i for i in range(math.ceil(size / step)) if i * step + roi >= size) + 1
    return [min(i * step, size - roi) for i in range(count)]


def gaussian_importance_map(roi_size: Sequence[int], sigma_scale=0.125) -> np.ndarray:
    """nnU-Net's Gaussian importance map over one window, as MONAI's `compute_importance_map`.

    Args:
      roi_size: the window's spatial size `(s_1, ..., s_d)`.
      sigma_scale: σ_i = sigma_scale_i · s_i (a float for every axis, or one per axis).
    Returns:
      float32 `[s_1, ..., s_d]`: Π_i exp(-x_i² / (2 σ_i²)) with x_i the offset from the window
      centre (`-(s_i - 1)/2 ... (s_i - 1)/2`); 1 at the centre of an odd window. Values below
      1e-3 are raised to 1e-3 so that the corners still count (and the weight sum is never 0).
    """
    roi = _per_axis(roi_size, np.size(roi_size), "roi_size", int)
    scales = _per_axis(sigma_scale, len(roi), "sigma_scale", float)
    if min(roi) < 1 or min(scales) <= 0:
        raise ValueError(f"roi_size and sigma_scale must be positive, got {roi_size}, "
                         f"{sigma_scale}")
    weights = np.ones((), np.float32)
    for axis, (s, scale) in enumerate(zip(roi, scales)):
        x = np.arange(s, dtype=np.float32) - np.float32((s - 1) / 2)
        g = np.exp(x ** 2 / np.float32(-2 * (s * scale) ** 2))
        weights = weights[..., None] * g.reshape((1,) * axis + (s,))
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def sliding_window_inference(apply_fn: Callable[[jax.Array], jax.Array], volume: jax.Array,
                             roi_size, *, overlap=0.5, mode: str = "gaussian", sigma_scale=0.125,
                             sw_batch_size: int = 4, cval: float = 0.0) -> jax.Array:
    """Predicts `volume` window by window and blends the overlaps (see the module docstring).

    Args:
      apply_fn: the window forward, `[sw_batch_size, *roi_size, C] -> [sw_batch_size, *roi_size,
        K]` (e.g. softmax probabilities or logits). It is always called with that one shape;
        pass a jitted function so that it compiles once, with the variables as an argument rather
        than a closed-over constant: `functools.partial(jax.jit(forward), variables)`.
      volume: `[N, *spatial, C]`, one or more spatial axes (`[N, D, H, W, C]` for 3-D).
      roi_size: the window's spatial size, an int for every axis or one per axis.
      overlap: fraction of the window shared by neighbours, in [0, 1) (float or one per axis).
      mode: `"gaussian"` (nnU-Net's importance weights, `gaussian_importance_map`) or
        `"constant"` (a plain average).
      sigma_scale: the Gaussian's σ as a fraction of the window size (float or one per axis).
      sw_batch_size: windows per `apply_fn` call (windows of several images share a batch).
      cval: value of the padding of axes shorter than the window.
    Returns:
      `[N, *spatial, K]` float32 (or wider, if `apply_fn` returns float64).

    Example:
      forward = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x)["logits"]))
      probs = sliding_window_inference(functools.partial(forward, variables), ct, (96, 96, 96))
    """
    volume = jnp.asarray(volume)
    if volume.ndim < 3:
        raise ValueError(f"volume must be [N, *spatial, C] with at least one spatial axis, got "
                         f"shape {volume.shape}")
    ndim = volume.ndim - 2
    roi = _per_axis(roi_size, ndim, "roi_size", int)
    overlaps = _per_axis(overlap, ndim, "overlap", float)
    if min(roi) < 1:
        raise ValueError(f"roi_size must be positive, got {roi_size}")
    if not all(0 <= o < 1 for o in overlaps):
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be a positive int, got {sw_batch_size!r}")
    if min(volume.shape) == 0:
        raise ValueError(f"volume has an empty axis: shape {volume.shape}")
    spatial = volume.shape[1:-1]
    pads = [((r - s) // 2, r - s - (r - s) // 2) if r > s else (0, 0)
            for r, s in zip(roi, spatial)]
    if any(sum(p) for p in pads):
        volume = jnp.pad(volume, ((0, 0), *pads, (0, 0)), constant_values=cval)
    padded = volume.shape[1:-1]
    positions = np.array(list(itertools.product(
        *(window_starts(s, r, o) for s, r, o in zip(padded, roi, overlaps)))), np.int32)
    importance = (gaussian_importance_map(roi, sigma_scale) if mode == "gaussian"
                  else np.ones(roi, np.float32))
    importance = jnp.asarray(importance)

    n = volume.shape[0]
    rows = np.concatenate([np.repeat(np.arange(n, dtype=np.int32), len(positions))[:, None],
                           np.tile(positions, (n, 1))], axis=1)  # [n * P, 1 + ndim], image-major
    num_batches = math.ceil(len(rows) / sw_batch_size)
    filler = num_batches * sw_batch_size - len(rows)
    valid = np.concatenate([np.ones(len(rows), np.float32), np.zeros(filler, np.float32)])
    rows = np.concatenate([rows, np.repeat(rows[-1:], filler, axis=0)])

    out_shape = (sw_batch_size, *roi)
    acc = None
    for b in range(num_batches):
        batch_rows = jnp.asarray(rows[b * sw_batch_size:(b + 1) * sw_batch_size])
        preds = apply_fn(_cut_windows(volume, batch_rows, roi))
        if acc is None:
            if (not hasattr(preds, "shape") or preds.ndim != ndim + 2
                    or tuple(preds.shape[:-1]) != out_shape):
                raise ValueError(
                    f"apply_fn must map windows {(*out_shape, volume.shape[-1])} to "
                    f"{out_shape + ('K',)}, got {getattr(preds, 'shape', type(preds))}")
            dtype = jnp.result_type(preds.dtype, jnp.float32)
            acc = jnp.zeros((n, *padded, preds.shape[-1]), dtype)
        acc = _add_windows(acc, preds, batch_rows, importance,
                           jnp.asarray(valid[b * sw_batch_size:(b + 1) * sw_batch_size]))
        del preds  # freed before the next batch is predicted: one batch alive at a time
    out = _normalise(acc, jnp.asarray(positions), importance.astype(acc.dtype))
    if any(sum(p) for p in pads):
        out = out[(slice(None), *(slice(lo, lo + s) for (lo, _), s in zip(pads, spatial)))]
    return out


def _per_axis(value, ndim: int, name: str, kind: type) -> tuple:
    """`value` (a finite number or a sequence of `ndim` of them; whole numbers where `kind` is
    int) as a tuple of `ndim` `kind`s; raises ValueError naming `name` otherwise."""
    values = (value,) * ndim if np.ndim(value) == 0 else value
    try:
        ok = len(values) == ndim and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and math.isfinite(v) and (kind is float or float(v).is_integer()) for v in values)
    except TypeError:
        ok = False
    if not ok:
        what = "int" if kind is int else "finite number"
        raise ValueError(f"{name} must be a {what} or a sequence of {ndim} {what}s (one per "
                         f"spatial axis), got {value!r}")
    return tuple(kind(v) for v in values)


def _start(row: jax.Array, ndim: int) -> tuple:
    """`row` = (image, *spatial offsets) as a `dynamic_slice` start of a `[N, *S, C]` array."""
    return (row[0], *(row[1 + d] for d in range(ndim)), 0)


@functools.partial(jax.jit, static_argnums=2)
def _cut_windows(volume: jax.Array, rows: jax.Array, roi: tuple) -> jax.Array:
    """`[B, *roi, C]` windows of `volume` `[N, *S, C]` at `rows` `[B, 1 + d]`."""
    size = (1, *roi, volume.shape[-1])
    return jax.vmap(lambda r: lax.dynamic_slice(volume, _start(r, len(roi)), size)[0])(rows)


@functools.partial(jax.jit, donate_argnums=0)
def _add_windows(acc: jax.Array, preds: jax.Array, rows: jax.Array, importance: jax.Array,
                 valid: jax.Array) -> jax.Array:
    """`acc` `[N, *S, K]` plus each `importance * valid[i] * preds[i]` at `rows[i]`, in order."""
    ndim = importance.ndim
    size = (1, *importance.shape, acc.shape[-1])

    def add(i, acc):
        start = _start(rows[i], ndim)
        update = (preds[i] * (importance * valid[i])[..., None]).astype(acc.dtype)
        return lax.dynamic_update_slice(acc, lax.dynamic_slice(acc, start, size) + update[None],
                                        start)

    return lax.fori_loop(0, preds.shape[0], add, acc)


@functools.partial(jax.jit, donate_argnums=0)
def _normalise(acc: jax.Array, positions: jax.Array, importance: jax.Array) -> jax.Array:
    """`acc` `[N, *S, K]` divided by the sum of `importance` over the windows at `positions`
    `[P, d]` (every image has the same windows), in place."""

    def add(i, total):
        start = tuple(positions[i, d] for d in range(importance.ndim))
        return lax.dynamic_update_slice(
            total, lax.dynamic_slice(total, start, importance.shape) + importance, start)

    weight = lax.fori_loop(0, positions.shape[0], add, jnp.zeros(acc.shape[1:-1], acc.dtype))
    return acc / weight[None, ..., None]
