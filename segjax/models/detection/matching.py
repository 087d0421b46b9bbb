"""Labelling machinery shared by the RPN and the ROI heads (torchvision's `_utils`), static-shaped.

* `match`: torchvision's `Matcher` — each prediction (anchor / proposal) gets the index of its
  best ground truth, or `BELOW_LOW_THRESHOLD` (-1) / `BETWEEN_THRESHOLDS` (-2); with
  `allow_low_quality_matches`, every prediction that is the best one of some ground truth (ties
  included) gets its own best ground truth back even below the high threshold.
* `sample_balanced`: `BalancedPositiveNegativeSampler` — at most `batch_size * positive_fraction`
  positives drawn uniformly without replacement, negatives filling the rest — keyed by a PRNG
  key argument (derive it from the step key and the example's global position for
  device-count-independent training).

The RPN's anchor labelling is `rpn.anchor_targets`, the ROI heads' proposal labelling
`roi_heads.proposal_targets`, the mask targets `mask_head.mask_targets`. Ground truth comes
padded to M slots with a validity mask (`gt_valid`); padding never matches. Vmap over images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(quality: jax.Array, high_threshold: float, low_threshold: float, *,
          allow_low_quality_matches: bool = False, gt_valid: jax.Array | None = None) -> jax.Array:
    """torchvision's `Matcher(high, low, allow_low_quality_matches)(quality)`, padded ground truth.

    Args:
      quality: [M, N] match quality (IoU) of ground truth m and prediction n.
      gt_valid: optional bool [M]; invalid rows are ignored (with no valid row every prediction
        is BELOW_LOW_THRESHOLD, as torchvision's RPN treats an image without boxes).
    Returns:
      int32 [N]: the matched ground-truth index, or -1 (below low) / -2 (between thresholds).
      Ties in a prediction's best quality go to the lower ground-truth index.
    """
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold {low_threshold} must be <= high_threshold {high_threshold}")
    m = quality.shape[0]
    if gt_valid is None:
        gt_valid = jnp.ones((m,), bool)
    if m == 0:
        return jnp.full(quality.shape[1:], BELOW_LOW_THRESHOLD, jnp.int32)
    q = jnp.where(gt_valid[:, None], quality, -jnp.inf)
    matched_vals = jnp.max(q, axis=0)
    all_matches = jnp.argmax(q, axis=0).astype(jnp.int32)
    matches = jnp.where(matched_vals < low_threshold, BELOW_LOW_THRESHOLD,
                        jnp.where(matched_vals < high_threshold, BETWEEN_THRESHOLDS, all_matches))
    if allow_low_quality_matches:
        best_per_gt = jnp.max(q, axis=1, keepdims=True)
        is_best = jnp.any((q == best_per_gt) & gt_valid[:, None], axis=0)
        matches = jnp.where(is_best, all_matches, matches)
    return matches.astype(jnp.int32)


def sample_balanced(key: jax.Array, labels: jax.Array, batch_size_per_image: int,
                    positive_fraction: float):
    """torchvision's `BalancedPositiveNegativeSampler` for one image, keyed by `key`.

    Args:
      key: a PRNG key (the same key gives the same sample).
      labels: [N]; >= 1 positive, 0 negative, < 0 ignored.
    Returns:
      (positive bool [N], negative bool [N]): `min(#positives, int(batch_size * fraction))`
      positives and `min(#negatives, batch_size - #chosen positives)` negatives, each a uniform
      random subset (without replacement) of its kind.
    """
    n = labels.shape[0]
    k_pos, k_neg = jax.random.split(key)
    return sample_balanced_by_noise(jax.random.uniform(k_pos, (n,)), jax.random.uniform(k_neg, (n,)), labels,
                                    batch_size_per_image, positive_fraction)


def sample_balanced_by_noise(noise_pos: jax.Array, noise_neg: jax.Array, labels: jax.Array,
                             batch_size_per_image: int, positive_fraction: float):
    """`sample_balanced` given its random draws: iid uniform [0, 1) `noise_pos`, `noise_neg` [N].

    The positives (negatives) with the smallest `noise_pos` (`noise_neg`) are chosen (ties by
    index). Drawing the noise per element from keys that depend only on the element's identity
    (e.g. `fold_in(key, id)`) makes the sample independent of how many padding elements there are.
    """
    n = labels.shape[0]
    positive = labels >= 1
    negative = labels == 0
    num_pos = jnp.minimum(jnp.sum(positive), int(batch_size_per_image * positive_fraction))
    num_neg = jnp.minimum(jnp.sum(negative), batch_size_per_image - num_pos)

    def choose(u, members, count):
        # Rank members by an iid uniform key: the first `count` form a uniform random subset.
        _, order = lax.sort((jnp.where(members, u, 2.0), jnp.arange(n)), num_keys=1)
        rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
        return members & (rank < count)

    return choose(noise_pos, positive, num_pos), choose(noise_neg, negative, num_neg)


def image_keys(key: jax.Array, n: int, axis_name: str | None = None) -> jax.Array:
    """One sampling key per image [n]: `key` folded with the image's global batch position
    (`axis_index(axis_name) * n + i` inside pmap with `axis_name`, else i), so 1 and N devices
    draw the same samples."""
    offset = 0 if axis_name is None else lax.axis_index(axis_name) * n
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(n))


__all__ = ["BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "image_keys", "match", "sample_balanced",
           "sample_balanced_by_noise"]
