"""Mask R-CNN training losses as (sum, count) pairs per image (torchvision's definitions).

torchvision averages each loss over the whole batch (every image's sampled anchors or
proposals concatenated). Returning the per-image *sum* and *count* instead lets a caller
normalise globally — sum both over the images of its shard, `psum` them over devices, divide —
and get exactly torchvision's batch means on any device count (DESIGN §4, "global
normalisation"). `normalize` does that.

* `rpn_losses`: objectness BCE-with-logits summed over the sampled anchors (count: sampled
  anchors); box smooth-L1 (beta 1/9, deltas vs `encode_boxes(matched gt, anchor)`, unit weights)
  summed over the sampled *positive* anchors, count: all sampled anchors (torchvision divides
  the box sum by the number of sampled anchors, not of positives).
* `fast_rcnn_losses`: cross-entropy summed over the sampled proposals (count: sampled
  proposals); smooth-L1 (beta 1/9) of the labelled class's deltas vs the box-coder targets
  summed over the sampled positives, count: all sampled proposals.
* `mask_loss`: BCE-with-logits of the labelled class's 28x28 logits vs the mask targets summed
  over positive proposals and pixels; count: positives x 28 x 28. With no positive in the whole
  batch torchvision's mask loss is 0: `normalize` returns 0 for a zero count.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from jax import lax

SMOOTH_L1_BETA = 1.0 / 9.0


def smooth_l1(x: jax.Array, beta: float = SMOOTH_L1_BETA) -> jax.Array:
    """Elementwise smooth-L1 of a difference `x` (torch's `smooth_l1_loss(reduction='none')`)."""
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy with logits, `softplus(x) - x t` (torch's values; its
    gradient is exactly `sigmoid(x) - t`, also at x = 0, where the `max(x, 0) + log1p(exp(-|x|))`
    form gets JAX's subgradients of max and abs and returns `-t`)."""
    return jax.nn.softplus(logits) - logits * targets


def bce_with_logits_pos_weight(logits: jax.Array, targets: jax.Array, pos_weight: float) -> jax.Array:
    """Elementwise BCE with logits, the positive term weighted by `pos_weight` (torch's
    `binary_cross_entropy_with_logits(..., pos_weight=p, reduction='none')`):
    `(1 - t) x + (1 + (p - 1) t) softplus(-x)`."""
    log_weight = 1.0 + (pos_weight - 1.0) * targets
    return (1.0 - targets) * logits + log_weight * jax.nn.softplus(-logits)


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
    """Elementwise sigmoid focal loss FL (Lin et al. 2017, RetinaNet; `torchvision.ops.sigmoid_focal_loss`
    with reduction 'none'): `alpha_t (1 - p_t)^gamma BCE(x, t)`; `alpha < 0` disables alpha_t."""
    p = jax.nn.sigmoid(logits)
    ce = bce_with_logits(logits, targets)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss


def sigmoid_focal_loss_star(logits: jax.Array, targets: jax.Array, alpha: float = -1.0,
                            gamma: float = 1.0) -> jax.Array:
    """Elementwise FL* (RetinaNet paper, appendix; fvcore's `sigmoid_focal_loss_star`, which
    detectron2's TensorMask trains with): `-log sigmoid(gamma x (2 t - 1)) / gamma`, times
    `alpha_t` when `alpha >= 0`. TensorMask uses gamma 3, alpha 0.3."""
    loss = -jax.nn.log_sigmoid(gamma * logits * (2.0 * targets - 1.0)) / gamma
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss


def _count(mask: jax.Array, scale: int = 1) -> jax.Array:
    return jnp.sum(mask, dtype=jnp.int32) * scale


def rpn_losses(objectness: jax.Array, deltas: jax.Array, labels: jax.Array, regression_targets: jax.Array,
               positive: jax.Array, negative: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
    """RPN losses of one image as {name: (sum float32 [], count int32 [])}.

    Args:
      objectness: [A] logits; deltas: [A, 4] predicted box deltas.
      labels: [A] float targets (1 object, 0 background; others are never sampled).
      regression_targets: [A, 4] (finite everywhere: only positives are used).
      positive, negative: bool [A], the sampled anchors (`sample_balanced`).
    Returns:
      `loss_objectness`: (sum of BCE over sampled anchors, #sampled);
      `loss_rpn_box_reg`: (sum of smooth-L1 over the positives' 4 deltas, #sampled).
    """
    sampled = positive | negative
    bce = jnp.where(sampled, bce_with_logits(objectness, labels), 0.0)
    box = jnp.where(positive[:, None], smooth_l1(deltas - regression_targets), 0.0)
    n = _count(sampled)
    return {"loss_objectness": (jnp.sum(bce), n), "loss_rpn_box_reg": (jnp.sum(box), n)}


def fast_rcnn_losses(class_logits: jax.Array, box_regression: jax.Array, labels: jax.Array,
                     regression_targets: jax.Array, sampled: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Box-head losses of one image's sampled proposals (torchvision's `fastrcnn_loss`).

    Args:
      class_logits: [S, K]; box_regression: [S, 4K] class-specific deltas.
      labels: int [S] (0 background, 1..K-1 the matched class; any value where not sampled).
      regression_targets: [S, 4] box-coder targets (weights 10, 10, 5, 5), finite everywhere.
      sampled: bool [S], the slots that hold a sampled proposal.
    Returns:
      `loss_classifier`: (sum of CE over sampled slots, #sampled);
      `loss_box_reg`: (sum of smooth-L1 over positive slots' 4 deltas of their class, #sampled).
    """
    s, k = class_logits.shape
    labels = jnp.where(sampled, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(class_logits, axis=-1)
    ce = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    ce = jnp.where(sampled, ce, 0.0)
    deltas = jnp.take_along_axis(box_regression.reshape(s, k, 4), labels[:, None, None], axis=1)[:, 0]
    positive = sampled & (labels > 0)
    box = jnp.where(positive[:, None], smooth_l1(deltas - regression_targets), 0.0)
    n = _count(sampled)
    return {"loss_classifier": (jnp.sum(ce), n), "loss_box_reg": (jnp.sum(box), n)}


def mask_loss(mask_logits: jax.Array, labels: jax.Array, targets: jax.Array,
              positive: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Mask loss of one image's positive proposals (torchvision's `maskrcnn_loss`).

    Args:
      mask_logits: [Q, m, m, K]; labels: int [Q] (the matched class); targets: [Q, m, m] in [0, 1].
      positive: bool [Q], the slots holding a positive proposal.
    Returns:
      `loss_mask`: (sum of BCE over positive slots and m x m pixels, #positives x m x m).
    """
    m = mask_logits.shape[1]
    return {"loss_mask": (jnp.sum(mask_bce_per_slot(mask_logits, labels, targets, positive)),
                          _count(positive, m * m))}


def mask_bce_per_slot(mask_logits: jax.Array, labels: jax.Array, targets: jax.Array,
                      positive: jax.Array) -> jax.Array:
    """[Q]: each slot's BCE summed over its m x m pixels (0 for a non-positive slot), of the
    logits of its label's class (`mask_loss`'s terms)."""
    labels = jnp.where(positive, labels, 0).astype(jnp.int32)
    logits = jnp.take_along_axis(mask_logits, labels[:, None, None, None], axis=-1)[..., 0]
    bce = jnp.where(positive[:, None, None], bce_with_logits(logits, targets), 0.0)
    return jnp.sum(bce, axis=(1, 2))


def normalize(losses: Mapping[str, tuple[jax.Array, jax.Array]], axis_name: str | None = None) -> dict[str, jax.Array]:
    """Batch means {name: sum / count} of (sum, count) pairs of any shape (e.g. per image [N]).

    Sums and counts are summed over all their axes and, with `axis_name` (inside pmap), over
    devices: the result is torchvision's batch-mean loss for the global batch. A zero count
    gives 0 (torchvision's mask loss without positives).
    """
    out = {}
    for name, (s, c) in losses.items():
        s = jnp.sum(s)
        c = jnp.sum(c)
        if axis_name is not None:
            s, c = lax.psum((s, c), axis_name)
        out[name] = jnp.where(c > 0, s / jnp.maximum(c, 1).astype(s.dtype), 0.0)
    return out


__all__ = ["SMOOTH_L1_BETA", "bce_with_logits", "bce_with_logits_pos_weight", "sigmoid_focal_loss",
           "sigmoid_focal_loss_star", "fast_rcnn_losses", "mask_loss", "normalize", "rpn_losses",
           "smooth_l1"]
