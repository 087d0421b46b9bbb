"""Part segmentation metrics of ShapeNet-part (Yi et al. 2016), as PointNet's evaluation computes them.

Each shape is scored alone, over the parts of its own object category (global part ids, a contiguous
range per category; `part_category[k]` is part k's category):

  IoU_k = |pred = k and truth = k| / |pred = k or truth = k|, and 1 when no point is k in either
  shape mIoU = the mean of IoU_k over the parts k of the shape's category

"Instance mIoU" (PointNet's 83.7 on ShapeNet-part) is the mean of the shape mIoUs over all shapes;
"class mIoU" the mean over categories of their shapes' mean (categories without shapes left out).
Predictions are the argmax over the category's parts only (`restrict_to_category`), as the authors'
`part_seg/test.py` sets the other parts' scores below the minimum.

`restrict_to_category` and `shape_mious` run on device inside an eval step (per-shape IoUs from
int32 counts, static shapes, padded points masked out); `PartIoUAccumulator` sums them per category
on the host in float64 and reports both means.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def restrict_to_category(logits: jax.Array, categories: jax.Array, part_category: jax.Array) -> jax.Array:
    """Per-point part predictions int32 `[N, P]`: argmax of `logits` `[N, P, K]` over the parts whose
    `part_category` (`[K]`) equals the shape's category (`categories` int `[N]`)."""
    in_category = jnp.asarray(part_category)[None, :] == jnp.asarray(categories)[:, None]  # [N, K]
    masked = jnp.where(in_category[:, None, :], logits, -jnp.inf)
    return jnp.argmax(masked, axis=-1).astype(jnp.int32)


def shape_mious(predictions: jax.Array, labels: jax.Array, categories: jax.Array, part_category: jax.Array,
                valid: jax.Array | None = None) -> jax.Array:
    """The mIoU of each shape over its category's parts (module docstring), float32 `[N]`.

    Args:
      predictions, labels: int `[N, P]` global part ids.
      categories: int `[N]`, each shape's category.
      part_category: int `[K]`, each part's category (K parts in all).
      valid: bool `[N, P]`, False at padded points (None: all points count).
    """
    num_parts = part_category.shape[0]
    valid = jnp.ones(labels.shape, bool) if valid is None else valid
    pred = jax.nn.one_hot(predictions, num_parts, dtype=jnp.int32) * valid[..., None]
    true = jax.nn.one_hot(labels, num_parts, dtype=jnp.int32) * valid[..., None]
    intersection = jnp.sum(pred * true, axis=1)  # [N, K]
    union = jnp.sum(pred, axis=1) + jnp.sum(true, axis=1) - intersection
    iou = jnp.where(union == 0, 1.0, intersection / jnp.maximum(union, 1))
    in_category = (jnp.asarray(part_category)[None, :] == jnp.asarray(categories)[:, None]).astype(jnp.float32)
    return (jnp.sum(iou * in_category, axis=1) / jnp.sum(in_category, axis=1)).astype(jnp.float32)


class PartIoUAccumulator:
    """Sums shape mIoUs per category over batches (host, float64); `result()` gives both means.

    Example:
      >>> acc = PartIoUAccumulator(("airplane", "mug"))
      >>> acc.update(shape_mious(pred, labels, cats, part_category), cats)
      >>> acc.result()["instance_miou"]
    """

    def __init__(self, category_names: Sequence[str]):
        self.category_names = tuple(category_names)
        self.sums = np.zeros(len(self.category_names), np.float64)
        self.counts = np.zeros(len(self.category_names), np.int64)

    def update(self, mious, categories, valid=None) -> None:
        """Adds shapes' mIoUs `[N]` of `categories` `[N]` (only where `valid` `[N]`, for padded batches)."""
        mious, categories = np.asarray(mious, np.float64).ravel(), np.asarray(categories).ravel()
        keep = np.ones(mious.shape, bool) if valid is None else np.asarray(valid, bool).ravel()
        if np.any((categories[keep] < 0) | (categories[keep] >= len(self.category_names))):
            raise ValueError(f"categories must be in [0, {len(self.category_names)}), got "
                             f"{sorted(set(categories[keep].tolist()))}")
        np.add.at(self.sums, categories[keep], mious[keep])
        np.add.at(self.counts, categories[keep], 1)

    def result(self) -> dict:
        """`instance_miou` (mean over shapes), `class_miou` (mean over categories with shapes) and
        `miou_per_category` {name: mean} of the categories with shapes (strict-JSON-safe: no NaN).

        Raises ValueError when no shape was added."""
        seen = self.counts > 0
        if not seen.any():
            raise ValueError("PartIoUAccumulator.result(): no shape was added (empty evaluation split?)")
        per_category = self.sums[seen] / self.counts[seen]
        return {"instance_miou": float(self.sums.sum() / self.counts.sum()),
                "class_miou": float(per_category.mean()),
                "miou_per_category": dict(zip(np.asarray(self.category_names)[seen].tolist(),
                                              per_category.tolist()))}
