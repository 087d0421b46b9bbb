"""The ROI heads' box branch (torchvision's roi_heads.py, faster_rcnn.py), NHWC; the mask branch is
`mask_head`.

* `proposal_targets`, `label_and_sample_proposals`: the training ROIs of one image — proposals
  plus ground truth labelled (Matcher 0.5 / 0.5) and sampled (512, a quarter positive) into
  fixed slots, positives first, with their box-regression targets.
* `TwoMLPHead`: flatten the 7x7 pooled features, fc6 + ReLU, fc7 + ReLU (1024 in R50-FPN).
  The flatten is (y, x, channel) here, (channel, y, x) in torchvision: converting fc6's weight
  permutes its input axis (`segjax.models.torchvision_import`).
* `FastRCNNPredictor`: `cls_score` (K logits) and `bbox_pred` (4K class-specific deltas).
* `postprocess_detections`: torchvision's `RoIHeads.postprocess_detections` with static shapes.

Initialisation as torchvision: `nn.Linear`'s default (kaiming-uniform a = sqrt(5), bias
U(±1/sqrt(fan_in))). The losses are `segjax.losses.detection.fast_rcnn_losses`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segjax.models.detection.matching import (BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match,
                                              sample_balanced_by_noise)
from segjax.ops.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes, proper_boxes, remove_small_boxes
from segjax.ops.nms import nms

# torchvision's box coder weights of the ROI heads (x, y, w, h).
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)

# torch.nn.Linear / Conv default weight init: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
    """torch's default bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(fan_in), name=name)


def proposal_targets(proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array,
                     gt_classes: jax.Array, gt_valid: jax.Array, *, fg_iou_thresh: float = 0.5,
                     bg_iou_thresh: float = 0.5):
    """ROI-head targets of one image: (labels int32 [P], matched gt index int32 [P]).

    torchvision's `RoIHeads.assign_targets_to_proposals`: the matched ground truth's class, 0
    (background) below `bg_iou_thresh`, -1 (ignored) between the thresholds; padding proposals
    (`proposal_valid` False) are -1 too. The matched index is clamped at 0 like torchvision's
    (meaningful only where the label is > 0). torchvision appends the ground-truth boxes to the
    proposals before this (`add_gt_proposals`); do that by concatenating them with `gt_valid`
    as their validity. A degenerate ground-truth box (not `proper_boxes`) counts as padding.
    """
    gt_valid = gt_valid & proper_boxes(gt_boxes)
    matches = match(box_iou(gt_boxes, proposals), fg_iou_thresh, bg_iou_thresh, gt_valid=gt_valid)
    clamped = jnp.maximum(matches, 0)
    labels = gt_classes[clamped].astype(jnp.int32)
    labels = jnp.where(matches == BELOW_LOW_THRESHOLD, 0, labels)
    labels = jnp.where((matches == BETWEEN_THRESHOLDS) | ~proposal_valid, -1, labels)
    return labels, clamped.astype(jnp.int32)


def label_and_sample_proposals(key: jax.Array, proposals: jax.Array, proposal_valid: jax.Array,
                               gt_boxes: jax.Array, gt_classes: jax.Array, gt_valid: jax.Array, *,
                               fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5,
                               batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                               weights: Sequence[float] = BOX_CODER_WEIGHTS) -> dict[str, jax.Array]:
    """The box head's training ROIs of one image (torchvision's `select_training_samples`).

    The candidates are the P proposals then the M ground-truth boxes (`add_gt_proposals`),
    labelled by `proposal_targets` and sampled by `sample_balanced_by_noise`; the ground-truth
    slots draw their noise from their own slot's key, so padding slots (never sampled) leave
    every other draw unchanged. The S = min(batch_size_per_image, P + M) slots hold the sampled
    positives first, then the negatives, then unsampled candidates.

    Args:
      key: PRNG key of this image's sample. proposals: [P, 4], proposal_valid: bool [P].
      gt_boxes: [M, 4], gt_classes: int [M], gt_valid: bool [M] (padded ground truth).
    Returns:
      dict over the candidates: `roi_labels` int32 [P + M] (class, 0 background, -1 ignored),
      `roi_matched` [P + M], `roi_positive`, `roi_negative` bool [P + M]; over the slots:
      `roi_index` int32 [S] (into the candidates), `roi_sampled`, `positive` bool [S], `boxes`
      [S, 4] (unsampled: (0, 0, 1, 1)), `labels` int32 [S] (0 where unsampled), `matched` [S]
      (ground-truth index), `reg` [S, 4] (box-coder targets, `weights`; zeros but at positives).
    """
    p, m = proposals.shape[0], gt_boxes.shape[0]
    gt_valid = gt_valid & proper_boxes(gt_boxes)  # a degenerate box is padding: never a candidate
    cand = jnp.concatenate([proposals, gt_boxes], axis=0)
    cand_valid = jnp.concatenate([proposal_valid, gt_valid], axis=0)
    s = min(batch_size_per_image, p + m)
    safe = jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32)
    labels, matched = proposal_targets(cand, cand_valid, gt_boxes, gt_classes, gt_valid,
                                       fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh)
    k_prop_pos, k_prop_neg, k_gt_pos, k_gt_neg = jax.random.split(key, 4)
    gt_noise = lambda k: jax.vmap(lambda j: jax.random.uniform(jax.random.fold_in(k, j)))(  # noqa: E731
        jnp.arange(m))
    noise_pos = jnp.concatenate([jax.random.uniform(k_prop_pos, (p,)), gt_noise(k_gt_pos)])
    noise_neg = jnp.concatenate([jax.random.uniform(k_prop_neg, (p,)), gt_noise(k_gt_neg)])
    pos, neg = sample_balanced_by_noise(noise_pos, noise_neg, labels, batch_size_per_image, positive_fraction)
    _, _, order = lax.sort((~pos, ~neg, jnp.arange(p + m, dtype=jnp.int32)), num_keys=3)
    idx = order[:s]
    sampled = (pos | neg)[idx]
    positive = pos[idx]
    sboxes = jnp.where(sampled[:, None], cand[idx], safe)
    slabels = jnp.where(sampled, labels[idx], 0)
    smatched = matched[idx]
    reference = jnp.where(positive[:, None], gt_boxes[smatched], safe)
    reg = encode_boxes(reference, jnp.where(positive[:, None], sboxes, safe), weights)
    return dict(roi_labels=labels, roi_matched=matched, roi_positive=pos, roi_negative=neg, roi_index=idx,
                roi_sampled=sampled, positive=positive, boxes=sboxes, labels=slabels, matched=smatched, reg=reg)


class TwoMLPHead(nn.Module):
    """[K, h, w, C] pooled features -> [K, representation_size] (fc6, fc7, each + ReLU)."""

    representation_size: int = 1024
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        x = nn.relu(_dense(self.representation_size, x.shape[-1], self.dtype, "fc6")(x))
        return nn.relu(_dense(self.representation_size, self.representation_size, self.dtype, "fc7")(x))


class FastRCNNPredictor(nn.Module):
    """[K, D] -> (class logits [K, num_classes], box deltas [K, num_classes * 4]), float32."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array):
        fan_in = x.shape[-1]
        scores = _dense(self.num_classes, fan_in, self.dtype, "cls_score")(x)
        deltas = _dense(4 * self.num_classes, fan_in, self.dtype, "bbox_pred")(x)
        return scores.astype(jnp.float32), deltas.astype(jnp.float32)


def postprocess_detections(class_logits: jax.Array, box_regression: jax.Array, proposals: jax.Array,
                           proposal_valid: jax.Array, image_size: Sequence[int], *,
                           score_thresh: float = 0.05, nms_thresh: float = 0.5,
                           detections_per_img: int = 100,
                           weights: Sequence[float] = BOX_CODER_WEIGHTS, min_size: float = 1e-2):
    """Detections of one image from the box head's outputs on its proposals (vmap for a batch).

    torchvision: decode the class-specific deltas on every proposal, clip to the image, softmax
    scores, drop the background column, keep (proposal, class) pairs with score > score_thresh
    and both sides >= min_size, NMS per class at nms_thresh, the detections_per_img best.
    Here NMS runs per class over all proposals (vmapped over classes, each capped at
    `detections_per_img`, which cannot change the final top-k), and the survivors are ranked by
    decreasing score, ties by torchvision's flat position `proposal * (K - 1) + class`.

    Args:
      class_logits: [P, K]; box_regression: [P, 4K]; proposals: [P, 4]; proposal_valid: [P].
      image_size: (H, W) of the unpadded image.
    Returns:
      dict with boxes [D, 4], scores [D], classes int32 [D] (1..K-1), valid bool [D]
      (valid slots first; padding slots hold zeros), D = detections_per_img.
    """
    p, k = class_logits.shape
    c = k - 1
    d = detections_per_img
    boxes = decode_boxes(box_regression.reshape(p, k, 4), proposals[:, None, :], weights)
    boxes = clip_boxes(boxes, image_size)[:, 1:]  # [P, C, 4]
    scores = jax.nn.softmax(class_logits, axis=-1)[:, 1:]  # [P, C]
    valid = proposal_valid[:, None] & (scores > score_thresh) & remove_small_boxes(boxes, min_size)
    idx, count = jax.vmap(lambda b, s, v: nms(b, s, nms_thresh, d, valid=v), in_axes=(1, 1, 1))(
        boxes, scores, valid)  # [C, D], [C]
    kept = jnp.arange(d)[None, :] < count[:, None]
    prop = jnp.where(idx >= 0, idx, 0)
    cls = jnp.broadcast_to(jnp.arange(c)[:, None], (c, d))
    cand_scores = scores[prop, cls]
    flat = (prop * c + cls).reshape(-1)
    _, _, _, order = lax.sort((~kept.reshape(-1), -cand_scores.reshape(-1), flat, jnp.arange(c * d)),
                              num_keys=3)
    order = order[:d]
    prop, cls, ok = prop.reshape(-1)[order], cls.reshape(-1)[order], kept.reshape(-1)[order]
    out_boxes = jnp.where(ok[:, None], boxes[prop, cls], 0.0)
    out_scores = jnp.where(ok, scores[prop, cls], 0.0)
    out_classes = jnp.where(ok, cls + 1, 0).astype(jnp.int32)
    return {"boxes": out_boxes, "scores": out_scores, "classes": out_classes, "valid": ok}


def batched_detections(class_logits: jax.Array, box_regression: jax.Array, proposals: jax.Array,
                       proposal_valid: jax.Array, image_size: Sequence[int], **settings) -> dict[str, jax.Array]:
    """`postprocess_detections` of a batch (every argument with a leading N; `settings` its keywords)."""
    post = functools.partial(postprocess_detections, image_size=image_size, **settings)
    return jax.vmap(lambda lg, dl, b, v: post(lg, dl, b, v))(class_logits, box_regression, proposals, proposal_valid)


__all__ = ["BOX_CODER_WEIGHTS", "FastRCNNPredictor", "TwoMLPHead", "batched_detections", "label_and_sample_proposals",
           "postprocess_detections", "proposal_targets", "torch_default_bias_init", "torch_default_kernel_init"]
