"""Mask R-CNN's ROI heads (torchvision's roi_heads.py, faster_rcnn.py, mask_rcnn.py), NHWC.

* `TwoMLPHead`: flatten the 7x7 pooled features, fc6 + ReLU, fc7 + ReLU (1024 in R50-FPN).
  The flatten is (y, x, channel) here, (channel, y, x) in torchvision: converting fc6's weight
  permutes its input axis (`segjax.models.torchvision_import`).
* `FastRCNNPredictor`: `cls_score` (K logits) and `bbox_pred` (4K class-specific deltas).
* `MaskHead`: four 3x3 convs + ReLU (`mask_fcn1..4`, torchvision's `mask_head.{0..3}.0`).
* `MaskPredictor`: 2x2 stride-2 transposed conv + ReLU (`conv5_mask`), 1x1 conv to K
  (`mask_fcn_logits`): 14x14 pooled features -> 28x28 mask logits per class.
* `postprocess_detections`: torchvision's `RoIHeads.postprocess_detections` with static shapes.

Initialisation as torchvision: `nn.Linear`'s default (kaiming-uniform a = sqrt(5), bias
U(±1/sqrt(fan_in))), mask convs kaiming-normal fan_out with zero bias, the transposed conv and
the logits conv kaiming-normal fan_out with torch's default bias.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segjax.models.backbones.resnet import conv_kernel_init
from segjax.models.layers import ConvTranspose, square_conv
from segjax.ops.boxes import clip_boxes, decode_boxes, remove_small_boxes
from segjax.ops.nms import nms

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


class MaskHead(nn.Module):
    """3x3 conv + ReLU stack over [K, 14, 14, C] (torchvision's MaskRCNNHeads, dilation 1)."""

    layers: Sequence[int] = (256, 256, 256, 256)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        for i, features in enumerate(self.layers):
            x = nn.relu(square_conv(features, 3, use_bias=True, dtype=self.dtype, kernel_init=conv_kernel_init,
                                    name=f"mask_fcn{i + 1}")(x))
        return x


class MaskPredictor(nn.Module):
    """[K, 14, 14, C] -> mask logits [K, 28, 28, num_classes] (float32)."""

    num_classes: int
    dim_reduced: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ConvTranspose(self.dim_reduced, 2, stride=2, dtype=self.dtype, kernel_init=conv_kernel_init,
                          bias_init=torch_default_bias_init(self.dim_reduced * 4), name="conv5_mask")(x)
        x = nn.relu(x)
        x = square_conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, kernel_init=conv_kernel_init,
                        name="mask_fcn_logits")(x)
        return x.astype(jnp.float32)


def postprocess_detections(class_logits: jax.Array, box_regression: jax.Array, proposals: jax.Array,
                           proposal_valid: jax.Array, image_size: Sequence[int], *,
                           score_thresh: float = 0.05, nms_thresh: float = 0.5,
                           detections_per_img: int = 100,
                           weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0), min_size: float = 1e-2):
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


__all__ = ["FastRCNNPredictor", "MaskHead", "MaskPredictor", "TwoMLPHead", "postprocess_detections",
           "torch_default_bias_init", "torch_default_kernel_init"]
