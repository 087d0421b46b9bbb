"""Instances from per-pixel embeddings: host-side clustering in NumPy (inference only).

A model trained with the discriminative loss (`segjax.losses.discriminative_loss`)
maps every pixel of an instance to within delta_v of the instance's mean embedding, and the means
at least 2 delta_d apart (where the loss is zero). Clustering the foreground pixels' embeddings
then recovers the instances (De Brabandere, Neven & Van Gool 2017, section 3.3):

- `threshold_cluster`: seed at the first unassigned pixel (raster order), shift the centre to the
  mean of the unassigned embeddings within `radius` a few times, take every unassigned pixel
  within `radius` of it as one instance, repeat. With delta_d > 2 delta_v and a zero loss, any
  radius in [2 delta_v, 2 delta_d - 2 delta_v) separates the instances exactly even from an
  unshifted seed (two pixels of one instance are at most 2 delta_v apart, pixels of different
  instances at least 2 delta_d - 2 delta_v); the default 1.5 = 3 delta_v is the middle of that
  range for the paper's delta_v = 0.5, delta_d = 1.5.
- `mean_shift_cluster`: flat-kernel mean shift as scikit-learn's `MeanShift(bin_seeding=True)`,
  written in NumPy (scikit-learn is not a dependency); bandwidth ~ delta_d.
- `cluster_instances`: either of them per semantic class of a class map.

Everything is deterministic (no random seeds), and instance ids are numbered 1, 2, ... in the
raster order of each instance's first pixel; 0 means background or unassigned.
"""

from __future__ import annotations

import numpy as np

METHODS = ("threshold", "mean_shift")


def _foreground_points(embeddings, foreground):
    embeddings = np.asarray(embeddings, np.float64)
    foreground = np.asarray(foreground, bool)
    if embeddings.ndim != 3 or foreground.shape != embeddings.shape[:2]:
        raise ValueError(
            f"embeddings must be [H, W, D] and foreground [H, W], got {embeddings.shape} and "
            f"{foreground.shape}"
        )
    return embeddings[foreground], foreground


def _to_map(labels, foreground, min_pixels):
    """Scatter per-point labels (0 = none) back to [H, W], drop small clusters, renumber 1.. in
    raster order of first appearance."""
    if min_pixels > 1 and labels.size:
        sizes = np.bincount(labels)
        labels = np.where(sizes[labels] >= min_pixels, labels, 0)
    _, first = np.unique(labels, return_index=True)
    old = labels[np.sort(first)]
    old = old[old > 0]
    mapping = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    mapping[old] = np.arange(1, len(old) + 1, dtype=np.int32)
    out = np.zeros(foreground.shape, np.int32)
    out[foreground] = mapping[labels]
    return out


def _within(points, center, radius):
    return np.sum((points - center) ** 2, axis=1) <= radius * radius


def threshold_cluster(
    embeddings: np.ndarray,
    foreground: np.ndarray,
    *,
    radius: float = 1.5,
    shift_steps: int = 10,
    min_pixels: int = 1,
) -> np.ndarray:
    """Instance ids by seeded thresholding of the foreground pixels' embeddings.

    Args:
      embeddings: [H, W, D] per-pixel embeddings.
      foreground: bool [H, W], the pixels to group (e.g. the semantic head's "thing" pixels).
      radius: the threshold in embedding space (see the module docstring for how to pick it
        from delta_v and delta_d: 2 delta_v <= radius < 2 delta_d - 2 delta_v).
      shift_steps: at most this many mean-shift steps of each seed's centre (0: threshold
        around the seed pixel itself).
      min_pixels: instances with fewer pixels become 0 (unassigned).

    Returns:
      int32 [H, W]: 0 outside the foreground (and for dropped instances), 1..K otherwise.
    """
    points, foreground = _foreground_points(embeddings, foreground)
    labels = np.zeros(len(points), np.int64)
    unassigned = np.ones(len(points), bool)
    k = 0
    while unassigned.any():
        seed = int(np.argmax(unassigned))
        center = points[seed]
        for _ in range(shift_steps):
            # Never empty: the mean of a ball's points has a point within the radius (it has the
            # smallest mean squared distance to them of any centre, the old centre's <= r^2).
            new = points[unassigned & _within(points, center, radius)].mean(axis=0)
            if np.allclose(new, center, rtol=0.0, atol=1e-9):
                break
            center = new
        members = unassigned & _within(points, center, radius)
        members[seed] = True  # progress even if the centre drifted away from the seed
        k += 1
        labels[members] = k
        unassigned &= ~members
    return _to_map(labels, foreground, min_pixels)


def mean_shift_modes(points: np.ndarray, bandwidth: float, *, max_iter: int = 300, min_bin_freq: int = 1) -> np.ndarray:
    """Modes of flat-kernel mean shift from grid ("bin") seeds, as scikit-learn's `MeanShift`.

    Seeds: the centres of the bandwidth-sized grid cells holding at least `min_bin_freq` points.
    Each seed moves to the mean of the points within `bandwidth` until it moves less than
    1e-3 * bandwidth; modes are ranked by how many points they hold and a mode within
    `bandwidth` of a stronger one is dropped. Returns [K, D].
    """
    points = np.asarray(points, np.float64)
    if len(points) == 0:
        return np.zeros((0, points.shape[-1]))
    cells, counts = np.unique(np.round(points / bandwidth), axis=0, return_counts=True)
    seeds = cells[counts >= min_bin_freq] * bandwidth
    if len(seeds) in (0, len(points)):
        seeds = points

    def shift(seeds):
        found = {}
        for seed in seeds:
            mean = seed
            for _ in range(max_iter):
                near = _within(points, mean, bandwidth)
                if not near.any():
                    break
                old, mean = mean, points[near].mean(axis=0)
                if np.linalg.norm(mean - old) <= 1e-3 * bandwidth:
                    break
            if near.any():
                found[tuple(mean)] = int(near.sum())
        return found

    # A grid cell's centre can lie farther than `bandwidth` from every point of the cell (up to
    # sqrt(D) / 2 bandwidths away): with no point near any bin seed, scikit-learn raises; here the
    # points themselves seed instead (each has itself within the bandwidth).
    found = shift(seeds) or shift(points)
    ranked = sorted(found.items(), key=lambda item: (item[1], item[0]), reverse=True)
    modes = np.array([m for m, _ in ranked])
    keep = np.ones(len(modes), bool)
    for i in range(len(modes)):
        if keep[i]:
            close = _within(modes, modes[i], bandwidth)
            close[i] = False
            keep &= ~close
    return modes[keep]


def mean_shift_cluster(
    embeddings: np.ndarray,
    foreground: np.ndarray,
    *,
    bandwidth: float = 1.5,
    min_pixels: int = 1,
    max_iter: int = 300,
    min_bin_freq: int = 1,
) -> np.ndarray:
    """Instance ids by mean shift (`mean_shift_modes`): each foreground pixel goes to its
    nearest mode (as `MeanShift(bin_seeding=True, cluster_all=True)`). Same returns as
    `threshold_cluster`; `bandwidth` plays the role of its radius."""
    points, foreground = _foreground_points(embeddings, foreground)
    modes = mean_shift_modes(points, bandwidth, max_iter=max_iter, min_bin_freq=min_bin_freq)
    if len(points) == 0:
        return np.zeros(foreground.shape, np.int32)
    sq = np.sum((points[:, None, :] - modes[None, :, :]) ** 2, axis=-1)
    return _to_map(np.argmin(sq, axis=1) + 1, foreground, min_pixels)


def cluster_instances(
    embeddings: np.ndarray,
    semantic: np.ndarray,
    *,
    method: str = "threshold",
    background: int = 0,
    ignore_label: int | None = None,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Instances of every semantic class: clusters each class's pixels separately.

    Args:
      embeddings: [H, W, D].
      semantic: [H, W] int class map (e.g. the argmax of a semantic head), or bool foreground
        (one class, 1). Pixels of class `background` or `ignore_label` get no instance.
      method: "threshold" (`threshold_cluster`) or "mean_shift" (`mean_shift_cluster`);
        `kwargs` go to it (radius / bandwidth, min_pixels, ...).

    Returns:
      (instance_ids int32 [H, W] with 0 = none and 1..K numbered in raster order of each
      instance's first pixel, classes int32 [K] with the class of instance k at k - 1).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    fn = threshold_cluster if method == "threshold" else mean_shift_cluster
    semantic = np.asarray(semantic)
    if semantic.dtype == bool:
        semantic = semantic.astype(np.int32)
    ids = np.zeros(semantic.shape, np.int64)
    classes = []
    for c in np.unique(semantic):
        if c == background or (ignore_label is not None and c == ignore_label):
            continue
        per_class = fn(embeddings, semantic == c, **kwargs)
        n = int(per_class.max(initial=0))
        ids = np.where(per_class > 0, per_class + len(classes), ids)
        classes += [int(c)] * n
    # One numbering over all classes: raster order of first pixel.
    classes = np.asarray(classes, np.int32)
    flat = ids.ravel()
    _, first = np.unique(flat, return_index=True)
    order = flat[np.sort(first)]
    order = order[order > 0]
    mapping = np.zeros(len(classes) + 1, np.int32)
    mapping[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return mapping[ids], classes[order - 1]
