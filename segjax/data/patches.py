"""Fixed-size 3-D patches with nnU-Net's foreground oversampling (host-side NumPy, stateless).

nnU-Net (Isensee et al. 2021, Nat. Methods 18:203, "Training procedure"; nnunetv2
`nnUNetDataLoaderBase.get_bbox`) trains on random patches, but forces a fixed fraction of each
batch -- 1/3 by default, `oversample_foreground` -- to contain foreground: in those slots it picks
a foreground class at random among the classes present in the case, then a voxel of that class at
random, and centres the patch on it (the patch start is `max(lower bound, voxel - patch // 2)`,
so the voxel is always inside). The other slots draw the patch start uniformly. Which slots are
forced follows nnU-Net's `_oversample_last_XX_percent`: slot `b` of `B` is forced iff
`b >= round(B * (1 - oversample_foreground))` (the last third). A case without foreground falls
back to a uniform patch.

Volumes smaller than the patch are padded: along an axis where the case is shorter than the
patch, the start is drawn from nnU-Net's range `[-(need // 2) ... shape - patch + need // 2 +
need % 2]`, `need = patch - shape` (written with Python's floor division, as nnU-Net does),
and whatever falls outside the volume is `image_pad_value` (0: the mean after normalisation,
nnU-Net's value) in the image and `label_pad_value` in the label (default 255, the ignore label:
losses skip it; nnU-Net pads with -1 and maps it to background).

Everything is a pure function of its arguments: slot `b` of the batch at `step` draws from
`np.random.default_rng([seed, step, b])` -- first the case (uniform, with replacement, as
nnU-Net's `np.random.choice`), then the patch -- so a batch is the same on every run, process
and device count, and a slot does not depend on the batch size. It runs on the host (NumPy),
where the volumes are; the patches then go to the devices.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

OVERSAMPLE_FOREGROUND = 1.0 / 3.0  # nnU-Net's oversample_foreground_percent (0.33)


def class_locations(label: np.ndarray, *, ignore_label: int | None = 255) -> dict:
    """`{class id: int64 [n, 3] (d, h, w) indices}` of every foreground class in `label`
    (`[D, H, W]` integer; foreground = values > 0 other than `ignore_label`), in increasing class
    order. Compute it once per case and pass it to `sample_patches` (nnU-Net's preprocessing
    stores the same, subsampled to at most 10,000 voxels per class; here every voxel)."""
    label = np.asarray(label)
    if label.ndim != 3 or label.dtype.kind not in "ui":
        raise ValueError(f"label must be an integer [D, H, W] array, got {label.dtype} "
                         f"{label.shape}")
    classes = [int(c) for c in np.unique(label) if c > 0 and c != ignore_label]
    return {c: np.argwhere(label == c) for c in classes}


def forced_foreground(batch_size: int, oversample_foreground: float = OVERSAMPLE_FOREGROUND
                      ) -> np.ndarray:
    """bool `[batch_size]`: which slots must contain foreground (nnU-Net: the last
    `batch_size - round(batch_size * (1 - oversample_foreground))`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= oversample_foreground <= 1.0:
        raise ValueError(f"oversample_foreground must be in [0, 1], got {oversample_foreground}")
    return np.arange(batch_size) >= round(batch_size * (1 - oversample_foreground))


def start_bounds(shape: Sequence[int], patch_size: Sequence[int]) -> tuple:
    """(lowest, highest) patch start per axis, inclusive (nnU-Net's `lbs`, `ubs`): `[0, shape -
    patch]` where the case is at least as large as the patch, else the padded range of the
    module docstring."""
    need = [max(p - s, 0) for s, p in zip(shape, patch_size)]
    lower = np.array([-n // 2 for n in need])
    upper = np.array([s + n // 2 + n % 2 - p for s, n, p in zip(shape, need, patch_size)])
    return lower, upper


def patch_start(rng: np.random.Generator, shape: Sequence[int], patch_size: Sequence[int],
                locations: dict | None, force_foreground: bool) -> np.ndarray:
    """int64 `[3]` start (may be negative: padding) of one patch of a case of `shape` (D, H, W),
    drawn from `rng` as the module docstring says (`locations`: `class_locations` of the case,
    needed when `force_foreground`)."""
    lower, upper = start_bounds(shape, patch_size)
    if force_foreground and locations:
        classes = sorted(c for c, where in locations.items() if len(where))
        if classes:
            where = locations[classes[int(rng.integers(len(classes)))]]
            voxel = where[int(rng.integers(len(where)))]
            return np.maximum(lower, voxel - np.asarray(patch_size) // 2)
    return np.array([rng.integers(lo, hi + 1) for lo, hi in zip(lower, upper)])


def crop(array: np.ndarray, start: Sequence[int], patch_size: Sequence[int],
         pad_value) -> np.ndarray:
    """`array[start : start + patch_size]` over the first three axes (trailing axes kept), with
    `pad_value` wherever the window leaves the array."""
    array = np.asarray(array)
    out = np.full(tuple(patch_size) + array.shape[3:], pad_value, array.dtype)
    source, target = [], []
    for lo, p, s in zip(start, patch_size, array.shape[:3]):
        a, b = max(lo, 0), min(lo + p, s)
        if a >= b:
            return out
        source.append(slice(a, b))
        target.append(slice(a - lo, b - lo))
    out[tuple(target)] = array[tuple(source)]
    return out


def sample_patches(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
                   patch_size: Sequence[int], batch_size: int, seed: int, step: int,
                   oversample_foreground: float = OVERSAMPLE_FOREGROUND,
                   locations: Sequence[dict] | None = None, ignore_label: int | None = 255,
                   image_pad_value: float = 0.0, label_pad_value: int = 255) -> dict:
    """One training batch of patches of `patch_size` `(pd, ph, pw)` (an int: a cube) from the
    cases (`images[i]` `[D_i, H_i, W_i, C]`, `labels[i]` `[D_i, H_i, W_i]` integer; sizes may
    differ between cases).

    Returns `image` float32 `[B, pd, ph, pw, C]`, `label` int32 `[B, pd, ph, pw]`, `case` int32
    `[B]` (which case), `start` int32 `[B, 3]` (the patch's first voxel, negative where padded)
    and `forced` bool `[B]` (`forced_foreground`). `locations`: `class_locations(labels[i])` per
    case, computed here when None (costly for large volumes: cache it). Example:

        batch = sample_patches(images, labels, patch_size=(16, 32, 32), batch_size=2, seed=0,
                               step=step)
    """
    patch_size = tuple(int(p) for p in (
        (patch_size,) * 3 if np.ndim(patch_size) == 0 else patch_size))
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise ValueError(f"patch_size must be 3 positive ints (D, H, W), got {patch_size}")
    if not len(images) or len(images) != len(labels):
        raise ValueError(f"images and labels must be non-empty lists of the same length, got "
                         f"{len(images)} and {len(labels)}")
    if locations is not None and len(locations) != len(labels):
        raise ValueError(f"locations must hold one entry per case ({len(labels)}), got "
                         f"{len(locations)}")
    forced = forced_foreground(batch_size, oversample_foreground)
    channels = np.shape(images[0])[-1]
    for i, (image, label) in enumerate(zip(images, labels)):
        if np.ndim(image) != 4 or np.shape(image)[:3] != np.shape(label) or (
                np.shape(image)[-1] != channels):
            raise ValueError(f"case {i}: image must be [D, H, W, {channels}] and label [D, H, W] "
                             f"of the same size, got {np.shape(image)} and {np.shape(label)}")
    out = {"image": np.empty((batch_size,) + patch_size + (channels,), np.float32),
           "label": np.empty((batch_size,) + patch_size, np.int32),
           "case": np.empty(batch_size, np.int32), "start": np.empty((batch_size, 3), np.int32),
           "forced": forced}
    for b in range(batch_size):
        rng = np.random.default_rng([seed, step, b])
        case = int(rng.integers(len(images)))
        label = np.asarray(labels[case])
        where = (locations[case] if locations is not None
                 else class_locations(label, ignore_label=ignore_label) if forced[b] else None)
        start = patch_start(rng, label.shape, patch_size, where, bool(forced[b]))
        out["image"][b] = crop(images[case], start, patch_size, image_pad_value)
        out["label"][b] = crop(label, start, patch_size, label_pad_value)
        out["case"][b], out["start"][b] = case, start
    return out
