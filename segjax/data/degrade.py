"""Degraded masks of known quality: the training data of the oracle (a mask-quality oracle; the
oracle task `segjax.tasks.oracle` derives its examples with these functions).

Fernandes, Cruz & Cardoso ("Deep image segmentation by quality inference", IJCNN 2018) train an
oracle to score a (image, mask) pair with the mask's Dice against the ground truth, on ground
truth masks degraded by random transformations whose parameters are sampled so that the Dice of
the generated masks is roughly uniform on [0, 1]. This module holds those pieces, host-side
(NumPy/SciPy, run in the data pipeline), as deterministic functions of a binary mask and a
`numpy.random.Generator` (seed it from `(seed, step, example index)` with `example_rng`):

* primitives on bool masks `[H, W]`: `elastic` (smoothed random displacement field),
  `morph` (dilation by `disk(r)` for r > 0, erosion by `disk(-r)` for r < 0), `flip_pixels`,
  `rotate` (about the mask's centroid, nearest neighbour), `offset` (integer shift, zero fill),
  `flip_offset` (the object mirrored in its bounding box, then shifted);
* `BINS`: a grid of (primitive, parameter) bins; `degrade(mask, rng, probs)` draws a bin with
  probabilities `probs` and applies it (a bin's remaining randomness -- directions, signs, the
  displacement field -- comes from `rng`);
* `calibrate(masks, ...)`: the bin probabilities that make the Dice histogram of degraded
  masks uniform, by non-negative least squares on the per-bin Dice histograms (the authors'
  method): `probs = nnls(H, 1/B)` normalised, where `H[b, j]` is the fraction of masks degraded
  by bin j whose Dice falls in histogram bin b.

Morphology: for a binary mask and a disk footprint, `dilation(m, disk(r))` is exactly "Euclidean
distance to the nearest foreground pixel <= r" and erosion "distance to the nearest background
pixel > r" (skimage's reflect border adds no nearer pixel). That is what `morph` computes, with
one `scipy.ndimage.distance_transform_edt` per call, instead of `segjax.ops.dilation` (bit-equal
to skimage, but a 41x41 disk is ~1,300 shifted slices and one compilation per radius: too slow
for a host pipeline that draws 40 radii). tests/data/test_degrade.py checks the equality with
`segjax.ops` and `skimage.morphology` for every radius.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import ndimage, optimize

KINDS = ("identity", "elastic", "morph", "flip_pixels", "rotate", "offset", "flip_offset")
# Stream tags of `example_rng` (any distinct integers).
TRAIN_STREAM, EVAL_STREAM, CALIBRATION_STREAM = 0, 1, 2


def example_rng(seed: int, stream: int, position: int, index: int) -> np.random.Generator:
    """The generator of example `index` at `position` (a step, or an eval batch) of `stream`:
    independent of every other example and of how many were drawn before."""
    return np.random.default_rng([int(seed), int(stream), int(position), int(index)])


def dice(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Dice `2|P & T| / (|P| + |T|)` of bool masks `[..., H, W]` (1.0 when both are empty);
    pixels where `valid` is False are not counted."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if valid is not None:
        p, t = p & valid, t & valid
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


# ----------------------------------------------------------------------------------- primitives


def morph(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation (radius > 0) or erosion (radius < 0) of bool `mask` [H, W] by `disk(|radius|)`.

    Equal to `skimage.morphology.dilation / erosion(mask, disk(|radius|))` (and to
    `segjax.ops.dilation / erosion`), border included (see the module docstring)."""
    m = np.asarray(mask, bool)
    r = int(radius)
    if r == 0:
        return m.copy()
    if r > 0:
        if not m.any():
            return m.copy()
        return ndimage.distance_transform_edt(~m) <= r
    if m.all():
        return m.copy()
    return ndimage.distance_transform_edt(m) > -r


def flip_pixels(mask: np.ndarray, rng: np.random.Generator, *, p: float) -> np.ndarray:
    """`mask` with each pixel flipped independently with probability `p`."""
    m = np.asarray(mask, bool)
    return m ^ (rng.random(m.shape) < p)


def offset(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`mask` shifted by (dy, dx) whole pixels (down, right); pixels shifted in are False.

    Equal to `scipy.ndimage.shift(mask, (dy, dx), order=0, cval=0)`."""
    m = np.asarray(mask, bool)
    h, w = m.shape
    out = np.zeros_like(m)
    dy, dx = int(dy), int(dx)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        m[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def centroid(mask: np.ndarray) -> tuple[float, float]:
    """(row, column) mean of the True pixels; the image centre when there is none."""
    m = np.asarray(mask, bool)
    if not m.any():
        return (m.shape[0] - 1) / 2.0, (m.shape[1] - 1) / 2.0
    ys, xs = np.nonzero(m)
    return float(ys.mean()), float(xs.mean())


def rotate(mask: np.ndarray, angle: float, center: tuple[float, float] | None = None
           ) -> np.ndarray:
    """`mask` rotated by `angle` degrees (counter-clockwise as displayed, rows pointing down)
    about `center` (row, column; default: the mask's centroid), nearest neighbour, False
    outside. With the image centre as `center` it equals `scipy.ndimage.rotate(mask, angle,
    reshape=False, order=0)` up to rounding ties; 90 degrees is `np.rot90`."""
    m = np.asarray(mask, bool)
    h, w = m.shape
    cy, cx = centroid(m) if center is None else center
    t = np.deg2rad(angle)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64) - cy, np.arange(w, dtype=np.float64) - cx,
                         indexing="ij")
    # Output pixel o takes the input at R(-angle) o, in (x right, y up) coordinates.
    src_x = np.cos(t) * xx - np.sin(t) * yy + cx
    src_y = np.sin(t) * xx + np.cos(t) * yy + cy
    iy, ix = np.rint(src_y).astype(np.int64), np.rint(src_x).astype(np.int64)
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    out = np.zeros_like(m)
    out[inside] = m[iy[inside], ix[inside]]
    return out


def flip_offset(mask: np.ndarray, axis: int, dy: int, dx: int) -> np.ndarray:
    """The object mirrored inside its bounding box along `axis` (0: upside down, 1: left-right),
    then shifted by (dy, dx) (`offset`)."""
    m = np.asarray(mask, bool).copy()
    if m.any():
        ys, xs = np.nonzero(m)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        m[box] = np.flip(m[box], axis=axis)
    return offset(m, dy, dx)


def elastic(mask: np.ndarray, rng: np.random.Generator, *, alpha: float, sigma: float = 6.0
            ) -> np.ndarray:
    """Elastic deformation (Simard et al. 2003): `mask` sampled (bilinear, threshold 0.5) at
    positions displaced by a Gaussian-smoothed (std `sigma` px) white-noise field scaled so that
    its largest displacement is `alpha` pixels."""
    m = np.asarray(mask, bool)
    if alpha == 0:
        return m.copy()
    fields = []
    for _ in range(2):
        f = ndimage.gaussian_filter(rng.standard_normal(m.shape), sigma, mode="reflect")
        fields.append(f)
    scale = alpha / max(float(np.max(np.hypot(*fields))), 1e-12)
    yy, xx = np.meshgrid(np.arange(m.shape[0]), np.arange(m.shape[1]), indexing="ij")
    coords = [yy + scale * fields[0], xx + scale * fields[1]]
    return ndimage.map_coordinates(m.astype(np.float32), coords, order=1, mode="constant") > 0.5


# ---------------------------------------------------------------------------- the bin sampler


@dataclasses.dataclass(frozen=True)
class Bin:
    """One (primitive, parameter) cell of the degradation grid (`value`: see `apply_bin`)."""

    kind: str
    value: float = 0.0


def default_bins(max_radius: int = 20) -> tuple[Bin, ...]:
    """The grid: identity; dilation/erosion radii +-1..`max_radius`; elastic displacement
    2-24 px; pixel flips 0.5-40 %; rotations 5-180 degrees; offsets 1-48 px; flip+offset
    0-24 px."""
    radii = [r for r in (1, 2, 3, 4, 6, 8, 11, 14, 17, 20) if r <= max_radius]
    bins = [Bin("identity")]
    bins += [Bin("morph", s * r) for r in radii for s in (1, -1)]
    bins += [Bin("elastic", a) for a in (2, 4, 8, 12, 16, 24)]
    bins += [Bin("flip_pixels", p) for p in (0.005, 0.02, 0.05, 0.1, 0.2, 0.4)]
    bins += [Bin("rotate", a) for a in (5, 15, 30, 60, 90, 180)]
    bins += [Bin("offset", d) for d in (1, 2, 4, 8, 12, 16, 24, 32, 48)]
    bins += [Bin("flip_offset", d) for d in (0, 4, 12, 24)]
    return tuple(bins)


BINS = default_bins()


def _direction(rng: np.random.Generator, distance: float) -> tuple[int, int]:
    t = rng.uniform(0, 2 * np.pi)
    return int(np.rint(distance * np.sin(t))), int(np.rint(distance * np.cos(t)))


def apply_bin(mask: np.ndarray, b: Bin, rng: np.random.Generator) -> np.ndarray:
    """`mask` degraded by bin `b`; `rng` supplies the bin's own randomness: the direction of an
    offset, the sign of a rotation, the axis of a flip, the elastic field, the flipped pixels."""
    if b.kind == "identity":
        return np.asarray(mask, bool).copy()
    if b.kind == "morph":
        return morph(mask, int(b.value))
    if b.kind == "elastic":
        return elastic(mask, rng, alpha=b.value)
    if b.kind == "flip_pixels":
        return flip_pixels(mask, rng, p=b.value)
    if b.kind == "rotate":
        return rotate(mask, b.value * rng.choice((-1.0, 1.0)))
    if b.kind == "offset":
        return offset(mask, *_direction(rng, b.value))
    if b.kind == "flip_offset":
        axis = int(rng.integers(2))
        return flip_offset(mask, axis, *_direction(rng, b.value))
    raise ValueError(f"unknown degradation kind {b.kind!r}; known: {KINDS}")


def degrade(mask: np.ndarray, rng: np.random.Generator, probs: np.ndarray | None = None,
            bins: Sequence[Bin] = BINS) -> tuple[np.ndarray, int]:
    """(`mask` degraded by one bin drawn with `probs` (default uniform), that bin's index)."""
    p = None if probs is None else np.asarray(probs, np.float64)
    j = int(rng.choice(len(bins), p=None if p is None else p / p.sum()))
    return apply_bin(mask, bins[j], rng), j


def dice_histograms(masks: Sequence[np.ndarray], *, seed: int, num_bins: int = 10,
                    bins: Sequence[Bin] = BINS, repeats: int = 1) -> np.ndarray:
    """`H [num_bins, len(bins)]`: column j is the histogram (fractions) of the Dice of the masks
    degraded by bin j, `repeats` draws per mask (generators from `(seed, j, mask index)`)."""
    hist = np.zeros((num_bins, len(bins)))
    for j, b in enumerate(bins):
        for i, m in enumerate(masks):
            rng = example_rng(seed, CALIBRATION_STREAM, j, i)
            for _ in range(repeats):
                d = dice(apply_bin(m, b, rng), m)
                hist[min(int(d * num_bins), num_bins - 1), j] += 1
    return hist / (len(masks) * repeats)


def calibrate(masks: Sequence[np.ndarray], *, seed: int = 0, num_bins: int = 10,
              bins: Sequence[Bin] = BINS, repeats: int = 1, spread: float = 0.003
              ) -> np.ndarray:
    """Bin probabilities `[len(bins)]` making the Dice of `degrade(mask, rng, probs)` uniform.

    Non-negative least squares `min_w ||H w - 1/num_bins||^2 + spread ||w - 1/J||^2` on
    `H = dice_histograms(masks)` (J bins), normalised to sum to 1. `spread=0` is the authors'
    calibration; it fits exactly but keeps only ~10 of the 46 bins (on synthetic shapes: mostly
    dilations/erosions and 40 % pixel flips), so the oracle would see few kinds of error. The
    small ridge towards uniform weights keeps ~all bins with the histogram still uniform to
    +-0.001 per Dice bin (measured on 40 synthetic-shapes masks).

    Args:
      masks: bool ground-truth masks `[H, W]` (non-empty), e.g. ~50 from the training split.
    """
    if not len(masks):
        raise ValueError("calibrate needs at least one mask")
    hist = dice_histograms(masks, seed=seed, num_bins=num_bins, bins=bins, repeats=repeats)
    j = len(bins)
    a = np.vstack([hist, np.sqrt(spread) * np.eye(j)])
    b = np.concatenate([np.full(num_bins, 1.0 / num_bins), np.sqrt(spread) * np.full(j, 1.0 / j)])
    w, _ = optimize.nnls(a, b)
    if w.sum() <= 0:
        raise ValueError("calibration failed: no non-negative combination of the bins fits")
    return w / w.sum()
