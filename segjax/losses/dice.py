"""Soft Dice losses for volumes (and images): V-Net's squared form and the plain one.

Milletari, Navab & Ahmadi (V-Net, 3DV 2016), Sec. 3, eq. 1, for a prediction p and a binary
ground truth g over the voxels i:  D = 2 sum_i p_i g_i / (sum_i p_i^2 + sum_i g_i^2).
Here, for volume (or image) n and class k over the n-th volume's counted voxels, with
p = softmax(logits) and g = one-hot labels:

  squared=True  (eq. 1):  D_nk = (2 sum p g + smooth) / (sum p^2 + sum g^2 + smooth)
  squared=False (plain):  D_nk = (2 sum p g + smooth) / (sum p + sum g + smooth)
  loss_n = 1 - mean_k D_nk

Every class counts, background included (the paper's two-class output; monai's
`DiceLoss(include_background=True)`). `smooth` (default 1e-5, monai's `smooth_nr = smooth_dr`) keeps
a class absent from both p and g at D = 1 instead of 0 / 0; eq. 1 has none. The gradient is that of
the formula (the paper's eq. 2 is its derivative for two classes).

Counted voxels are those whose label is not `ignore_label` and that lie inside `valid_mask` (bool,
[N] or the labels' shape): the others add nothing to any sum. Shapes: `logits` [N, ..., K] (NDHWC
volumes [N, D, H, W, K], or images), `labels` [N, ...] integer class ids.

Global normalisation, two ways:
- `vnet_dice_loss` (registered as "vnet_dice") returns `(sum over volumes of loss_n, number of
  volumes with a counted voxel)`: a volume lies on one device, so summing both over devices and
  dividing gives the mean over the global batch, as the other per-image losses in `pixel.py`.
- `dice_statistics` returns the per-volume sums `(intersection, denominator)` [N, K]; summed over
  volumes and devices (`psum`) and passed to `dice_from_statistics`, they give one Dice per class
  over the whole global batch (monai's `batch=True`), which is not a mean of per-device values.

`pixel.dice_loss` (loss kind "dice") is `vnet_dice_loss(squared=False, smooth=1.0)`. Written out
because `optax.losses.dice_loss(apply_softmax=False)` checks values and fails under jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from segjax.losses.pixel import _log_probs_and_targets, valid_pixels
from segjax.losses.registry import Pair, register


def dice_statistics(
    logits: jax.Array, labels: jax.Array, *, ignore_label: int, valid_mask: jax.Array | None = None,
    squared: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Per-volume, per-class Dice sums over the counted voxels (module docstring).

    Returns:
      `(intersection, denominator)`, each float32 [N, K]: sum p g and sum p^2 + sum g^2 (`squared`)
      or sum p + sum g. Add them up over volumes (and devices) for a batch-wide Dice.

    Raises:
      ValueError: logits not labels' shape + [K], or non-integer labels.
    """
    log_p, onehot, _, valid = _log_probs_and_targets(logits, labels, ignore_label, valid_mask)
    if labels.ndim < 1:
        raise ValueError("dice_statistics needs a leading batch dimension in labels")
    v = valid[..., None].astype(jnp.float32)
    p, g = jnp.exp(log_p) * v, onehot * v
    axes = tuple(range(1, labels.ndim))
    intersection = jnp.sum(p * g, axis=axes)
    if squared:
        denominator = jnp.sum(p * p, axis=axes) + jnp.sum(g * g, axis=axes)
    else:
        denominator = jnp.sum(p, axis=axes) + jnp.sum(g, axis=axes)
    return intersection, denominator


def dice_from_statistics(intersection: jax.Array, denominator: jax.Array, smooth: float = 1e-5) -> jax.Array:
    """D = (2 intersection + smooth) / (denominator + smooth), elementwise ([..., K] -> [..., K])."""
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    return (2.0 * intersection + smooth) / (denominator + smooth)


@register("vnet_dice")
def vnet_dice_loss(
    logits: jax.Array, labels: jax.Array, *, ignore_label: int, valid_mask: jax.Array | None = None,
    squared: bool = True, smooth: float = 1e-5,
) -> Pair:
    """V-Net's Dice loss (eq. 1; `squared=False`: the plain soft Dice), per volume, as a pair.

    Returns:
      `(sum over volumes of 1 - mean_k D_nk, number of volumes with a counted voxel)` (module
      docstring); volumes without counted voxels add nothing, and an all-ignored or empty batch
      gives (0, 0) with a zero gradient.
    """
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    intersection, denominator = dice_statistics(logits, labels, ignore_label=ignore_label,
                                                valid_mask=valid_mask, squared=squared)
    dice = dice_from_statistics(intersection, denominator, smooth)
    valid = valid_pixels(labels, ignore_label, valid_mask)
    counted = jnp.any(valid.reshape(valid.shape[0], int(np.prod(valid.shape[1:]))), axis=1)
    per_volume = jnp.where(counted, 1.0 - jnp.mean(dice, axis=-1), 0.0)
    return jnp.sum(per_volume), jnp.sum(counted.astype(jnp.float32))
