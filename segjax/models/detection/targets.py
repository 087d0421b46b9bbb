"""Training targets for Mask R-CNN as pure, static-shaped functions (torchvision's semantics).

* `match`: torchvision's `Matcher` — each prediction (anchor / proposal) gets the index of its
  best ground truth, or `BELOW_LOW_THRESHOLD` (-1) / `BETWEEN_THRESHOLDS` (-2); with
  `allow_low_quality_matches`, every prediction that is the best one of some ground truth (ties
  included) gets its own best ground truth back even below the high threshold.
* `anchor_targets`: the RPN's `assign_targets_to_anchors` — labels 1 / 0 / -1 (ignored) and the
  matched ground-truth box per anchor (Matcher 0.7 / 0.3 with low-quality matches).
* `proposal_targets`: the ROI heads' `assign_targets_to_proposals` — class label per proposal
  (0 background, -1 ignored) and the matched ground-truth index (Matcher 0.5 / 0.5).
* `mask_targets`: `project_masks_on_boxes` — each proposal's matched ground-truth mask ROI-Aligned
  to M x M (aligned=False, torchvision's adaptive sampling ratio ceil(box size / M)).
* `sample_balanced`: `BalancedPositiveNegativeSampler` — at most `batch_size * positive_fraction`
  positives drawn uniformly without replacement, negatives filling the rest — keyed by a PRNG
  key argument (derive it from the step key and the example's global position for
  device-count-independent training).

Ground truth comes padded to M slots with a validity mask (`gt_valid`); padding never matches.
Vmap over images for a batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from segjax.ops.boxes import box_iou

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


def anchor_targets(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, *,
                   fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3):
    """RPN targets of one image: (labels float32 [A] in {1, 0, -1}, matched gt boxes [A, 4]).

    torchvision's `RegionProposalNetwork.assign_targets_to_anchors`: label 1 for matched anchors
    (including low-quality matches), 0 below `bg_iou_thresh`, -1 (ignored) in between. Without
    any valid ground truth every anchor is background, matched to box 0 (a zero box when padded).
    """
    matches = match(box_iou(gt_boxes, anchors), fg_iou_thresh, bg_iou_thresh,
                    allow_low_quality_matches=True, gt_valid=gt_valid)
    labels = jnp.where(matches >= 0, 1.0, jnp.where(matches == BETWEEN_THRESHOLDS, -1.0, 0.0))
    matched = gt_boxes[jnp.maximum(matches, 0)]
    any_gt = jnp.any(gt_valid)
    matched = jnp.where(any_gt, matched, 0.0)
    return labels.astype(jnp.float32), matched


def proposal_targets(proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array,
                     gt_classes: jax.Array, gt_valid: jax.Array, *, fg_iou_thresh: float = 0.5,
                     bg_iou_thresh: float = 0.5):
    """ROI-head targets of one image: (labels int32 [P], matched gt index int32 [P]).

    torchvision's `RoIHeads.assign_targets_to_proposals`: the matched ground truth's class, 0
    (background) below `bg_iou_thresh`, -1 (ignored) between the thresholds; padding proposals
    (`proposal_valid` False) are -1 too. The matched index is clamped at 0 like torchvision's
    (meaningful only where the label is > 0). torchvision appends the ground-truth boxes to the
    proposals before this (`add_gt_proposals`); do that by concatenating them with `gt_valid`
    as their validity.
    """
    matches = match(box_iou(gt_boxes, proposals), fg_iou_thresh, bg_iou_thresh, gt_valid=gt_valid)
    clamped = jnp.maximum(matches, 0)
    labels = gt_classes[clamped].astype(jnp.int32)
    labels = jnp.where(matches == BELOW_LOW_THRESHOLD, 0, labels)
    labels = jnp.where((matches == BETWEEN_THRESHOLDS) | ~proposal_valid, -1, labels)
    return labels, clamped.astype(jnp.int32)


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


def _adaptive_axis_weights(start, end, out: int, size: int, max_grid: int) -> jax.Array:
    """[K, out, size]: row p averages the bilinear weights of bin p's ceil(extent / out) samples."""
    k = start.shape[0]
    extent = jnp.maximum(end - start, 1.0)
    bin_size = extent / out
    grid = jnp.clip(jnp.ceil(extent / out).astype(jnp.int32), 1, max_grid)
    p = jnp.arange(out, dtype=jnp.float32)[None, :, None]
    i = jnp.arange(max_grid, dtype=jnp.float32)[None, None, :]
    g = grid.astype(jnp.float32)[:, None, None]
    pos = start[:, None, None] + p * bin_size[:, None, None] + ((i + 0.5) * bin_size[:, None, None]) / g
    used = (i < g) & (pos >= -1.0) & (pos <= size)
    pos = jnp.maximum(pos, 0.0)
    low = jnp.floor(pos).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    frac = jnp.where(at_end, 0.0, pos - low.astype(jnp.float32))
    w = jnp.where(used, 1.0, 0.0) / g
    rows = jnp.broadcast_to(jnp.arange(k)[:, None, None], low.shape)
    bins = jnp.broadcast_to(jnp.arange(out)[None, :, None], low.shape)
    weights = jnp.zeros((k, out, size), jnp.float32)
    weights = weights.at[rows, bins, low].add(w * (1.0 - frac))
    return weights.at[rows, bins, high].add(w * frac)


def mask_targets(gt_masks: jax.Array, boxes: jax.Array, matched: jax.Array, size: int = 28) -> jax.Array:
    """Mask targets [P, size, size] float32: gt mask `matched[p]` ROI-Aligned on box p.

    Equal to torchvision's `project_masks_on_boxes(gt_masks, boxes, matched, size)`, i.e.
    `roi_align(gt_masks[:, None], [matched, boxes], (size, size), 1.0)` with `aligned=False`
    and the adaptive sampling ratio `ceil(box extent / size)` per box and axis (capped at
    `ceil(max(H, W) / size)`, which any box inside the image satisfies). The averaged bilinear
    weights of each box are separable, so a target is `Wy @ mask @ Wx^T`; boxes are processed
    sequentially in groups (`lax.map`) so no [P, H, W] copy of the masks is made.

    Args:
      gt_masks: [M, H, W] binary (or soft) masks, any real or bool dtype.
      boxes: [P, 4] proposals in mask pixels; matched: [P] int indices into gt_masks.
    """
    m, h, w = gt_masks.shape
    max_grid = -(-max(h, w) // size)
    wy = _adaptive_axis_weights(boxes[:, 1], boxes[:, 3], size, h, max_grid)
    wx = _adaptive_axis_weights(boxes[:, 0], boxes[:, 2], size, w, max_grid)

    def one(args):
        a, b, idx = args
        mask = gt_masks[idx].astype(jnp.float32)
        return jnp.einsum("ph,hw,qw->pq", a, mask, b, precision=lax.Precision.HIGHEST)

    return lax.map(one, (wy, wx, matched.astype(jnp.int32)), batch_size=16)


__all__ = ["BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "anchor_targets", "mask_targets", "match",
           "proposal_targets", "sample_balanced", "sample_balanced_by_noise"]
