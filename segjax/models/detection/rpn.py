"""Region Proposal Network: torchvision's `RPNHead`, its proposal filtering, anchor labelling and sampling.

The head (shared by all pyramid levels): 3x3 conv + ReLU, then 1x1 convs to A objectness logits
and 4A box deltas per cell (weights N(0, 0.01), biases 0). Channel `a * 4 + j` of the deltas is
coordinate j of anchor a, so NHWC outputs flatten to the anchors' `(y, x, a)` order directly.

`filter_proposals` is torchvision's `RegionProposalNetwork.filter_proposals` with static shapes,
for one image (vmap it over a batch):
  per level, the top `pre_nms_top_n` anchors by objectness (all when the level has fewer), their
  deltas decoded on the anchors (unit weights), clipped to the image, boxes narrower or lower
  than `min_size` and scores (sigmoid) below `score_thresh` marked invalid, NMS at `nms_thresh`
  within the level; then the `post_nms_top_n` highest-scoring survivors over all levels.
torchvision drops what is filtered; here the result has a fixed number of slots with a `valid`
mask (valid slots first, by decreasing score).

Training (`label_and_sample_anchors`, one image): anchors matched to the ground truth
(`anchor_targets`, Matcher 0.7 / 0.3 with low-quality matches), then `batch_size_per_image`
(256) sampled at most `positive_fraction` (half) positive, with the box-regression targets of
the positives; the losses are `segjax.losses.detection.rpn_losses`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segjax.models.detection.matching import BETWEEN_THRESHOLDS, match, sample_balanced
from segjax.models.layers import square_conv
from segjax.ops.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes, proper_boxes, remove_small_boxes
from segjax.ops.nms import nms

rpn_kernel_init = nn.initializers.normal(0.01)


class RPNHead(nn.Module):
    """Shared RPN head: per level `[N, H, W, C]` -> (objectness [N, H*W*A], deltas [N, H*W*A, 4]).

    Children `conv` (3x3, C -> C), `cls_logits` (1x1, C -> A), `bbox_pred` (1x1, C -> 4A):
    torchvision's `conv.0.0`, `cls_logits`, `bbox_pred`.
    """

    num_anchors: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]):
        channels = features[0].shape[-1]
        conv = square_conv(channels, 3, use_bias=True, dtype=self.dtype, kernel_init=rpn_kernel_init,
                           name="conv")
        cls = square_conv(self.num_anchors, 1, use_bias=True, dtype=self.dtype, kernel_init=rpn_kernel_init,
                          name="cls_logits")
        reg = square_conv(4 * self.num_anchors, 1, use_bias=True, dtype=self.dtype,
                          kernel_init=rpn_kernel_init, name="bbox_pred")
        objectness, deltas = [], []
        for x in features:
            t = nn.relu(conv(x))
            n = x.shape[0]
            objectness.append(cls(t).astype(jnp.float32).reshape(n, -1))
            deltas.append(reg(t).astype(jnp.float32).reshape(n, -1, 4))
        return objectness, deltas


def filter_proposals(objectness: Sequence[jax.Array], deltas: Sequence[jax.Array],
                     anchors: Sequence[jax.Array], image_size: Sequence[int], *,
                     pre_nms_top_n: int = 1000, post_nms_top_n: int = 1000, nms_thresh: float = 0.7,
                     score_thresh: float = 0.0, min_size: float = 1e-3):
    """Proposals of one image (see the module docstring).

    Args:
      objectness: per level [A_l] logits; deltas: per level [A_l, 4]; anchors: per level [A_l, 4].
      image_size: (H, W) of the unpadded image (boxes are clipped to it).
    Returns:
      (boxes [P, 4], scores [P] (sigmoid objectness), valid [P] bool) with
      P = min(post_nms_top_n, sum_l min(pre_nms_top_n, A_l)); valid slots first by decreasing score.
    """
    cand_boxes, cand_scores, cand_valid = [], [], []
    for logits, d, a in zip(objectness, deltas, anchors):
        k = min(pre_nms_top_n, logits.shape[0])
        top, idx = lax.top_k(logits, k)
        boxes = clip_boxes(decode_boxes(d[idx], jnp.asarray(a)[idx]), image_size)
        scores = jax.nn.sigmoid(top)
        cand_boxes.append(boxes)
        cand_scores.append(scores)
        cand_valid.append(remove_small_boxes(boxes, min_size) & (scores >= score_thresh))
    # NMS of every level at once (vmapped over levels padded to the longest): one compiled loop.
    kmax = max(len(s) for s in cand_scores)
    pad = lambda x, value: jnp.pad(x, [(0, kmax - x.shape[0])] + [(0, 0)] * (x.ndim - 1),  # noqa: E731
                                   constant_values=value)
    keep_idx, count = jax.vmap(lambda b, s, v: nms(b, s, nms_thresh, kmax, valid=v))(
        jnp.stack([pad(b, 0.0) for b in cand_boxes]), jnp.stack([pad(s, 0.0) for s in cand_scores]),
        jnp.stack([pad(v, False) for v in cand_valid]))
    levels = jnp.arange(len(cand_scores))[:, None]
    keep_grid = jnp.zeros((len(cand_scores), kmax), bool).at[levels, jnp.where(keep_idx >= 0, keep_idx, kmax)].set(
        True, mode="drop")
    cand_keep = [keep_grid[i, :len(s)] for i, s in enumerate(cand_scores)]
    boxes = jnp.concatenate(cand_boxes)
    scores = jnp.concatenate(cand_scores)
    keep = jnp.concatenate(cand_keep)
    p = min(post_nms_top_n, boxes.shape[0])
    # Kept boxes first by decreasing score (ties: lower position, i.e. lower level first).
    _, _, order = lax.sort((~keep, -scores, jnp.arange(boxes.shape[0])), num_keys=3)
    order = order[:p]
    return boxes[order], scores[order], keep[order]


def batched_proposals(objectness: Sequence[jax.Array], deltas: Sequence[jax.Array], anchors: Sequence[jax.Array],
                      image_size: Sequence[int], **settings):
    """`filter_proposals` of a batch: per-level objectness [N, A_l], deltas [N, A_l, 4], shared
    anchors [A_l, 4] -> (boxes [N, P, 4], scores [N, P], valid [N, P]); `settings` its keywords."""
    filt = functools.partial(filter_proposals, anchors=anchors, image_size=image_size, **settings)
    return jax.vmap(lambda o, d: filt(o, d))(objectness, deltas)


def anchor_targets(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, *,
                   fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3):
    """RPN targets of one image: (labels float32 [A] in {1, 0, -1}, matched gt boxes [A, 4]).

    torchvision's `RegionProposalNetwork.assign_targets_to_anchors`: label 1 for matched anchors
    (including low-quality matches), 0 below `bg_iou_thresh`, -1 (ignored) in between. Without
    any valid ground truth every anchor is background, matched to a zero box; otherwise an
    unmatched anchor gets the first valid box (torchvision's `clamp(min=0)`).
    A degenerate ground-truth box (zero or negative width or height, or a non-finite coordinate:
    not `proper_boxes`) counts as padding; torchvision raises on one instead.
    """
    gt_valid = gt_valid & proper_boxes(gt_boxes)
    matches = match(box_iou(gt_boxes, anchors), fg_iou_thresh, bg_iou_thresh,
                    allow_low_quality_matches=True, gt_valid=gt_valid)
    labels = jnp.where(matches >= 0, 1.0, jnp.where(matches == BETWEEN_THRESHOLDS, -1.0, 0.0))
    # Unmatched anchors get the first ground-truth box, as torchvision's clamp(min=0) over its
    # list of boxes: the first *valid* slot here (slot 0 may be padding or a degenerate box).
    matched = gt_boxes[jnp.where(matches >= 0, matches, jnp.argmax(gt_valid))]
    any_gt = jnp.any(gt_valid)
    matched = jnp.where(any_gt, matched, 0.0)
    return labels.astype(jnp.float32), matched


def label_and_sample_anchors(key: jax.Array, anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, *,
                             fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3,
                             batch_size_per_image: int = 256, positive_fraction: float = 0.5):
    """The RPN's training samples of one image (torchvision's RPN in train mode).

    Args:
      key: PRNG key of this image's sample. anchors: [A, 4] (every level, torchvision's order).
      gt_boxes: [M, 4] padded ground truth; gt_valid: bool [M].
    Returns:
      (labels float32 [A] in {1, 0, -1} (`anchor_targets`), regression targets [A, 4]
      (`encode_boxes(matched gt, anchor)`, unit weights; zeros where not a sampled positive),
      positive bool [A], negative bool [A]: the sampled anchors, `sample_balanced`).
    """
    labels, matched = anchor_targets(anchors, gt_boxes, gt_valid, fg_iou_thresh=fg_iou_thresh,
                                     bg_iou_thresh=bg_iou_thresh)
    pos, neg = sample_balanced(key, labels, batch_size_per_image, positive_fraction)
    reference = jnp.where(pos[:, None], matched, anchors)  # finite targets where unused
    return labels, encode_boxes(reference, anchors), pos, neg


__all__ = ["RPNHead", "anchor_targets", "batched_proposals", "filter_proposals", "label_and_sample_anchors",
           "rpn_kernel_init"]
