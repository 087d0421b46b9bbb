"""Mask R-CNN (He et al. 2017) on a ResNet-FPN, torchvision's `maskrcnn_resnet50_fpn`: the thin
meta-architecture composing the detection wing (one jit per input size, static shapes).

Inference: pad to a multiple of 32 -> ResNet + FPN P2-P6 (`backbone`) -> RPN proposals (`rpn`) ->
ROI Align 7x7 on P2-P5 (`poolers`, the exact scales of the padded maps) -> box head, detections
(`roi_heads`) -> ROI Align 14x14 -> mask head, each detection's 28x28 class mask (`mask_head`);
the outputs of `instances`. Stages are methods (`method=MaskRCNN.<name>`): `pad`, `features`,
`rpn_outputs`, `anchors`, `proposals`, `roi_features`, `box_outputs`, `detect`, `mask_logits`,
`train_outputs`. A variant (PANet) overrides the maps the RPN and ROI heads read (`RPN_MAPS`,
`ROI_MAPS`), the pooling (`roi_pooler`) and the heads (`make_box_head`, `make_mask_head`,
`make_mask_predictor`); everything else, training included, is shared.

Training: `model.apply(variables, images, train=True, targets=targets, rngs={"dropout": key},
mutable=["batch_stats"])` (unchanged: BatchNorm is frozen), targets as `instances.TARGET_KEYS`,
returns `{name: (sum float32 [N], count int32 [N])}` of the `TRAIN_LOSSES` (`losses.normalize`
gives torchvision's batch means on any device count). `rpn` labels and samples the anchors,
`roi_heads` the train-mode proposals (no gradient) plus the ground truth (positives first); the
first `int(512 * 0.25)` slots go to `mask_head`. Image i samples with `fold_in(make_rng("dropout"),
g)` (g: its global batch position, `matching.image_keys`) folded with 0 (anchors) / 1 (ROIs).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.losses import detection as loss_lib
from segjax.models.detection import anchors as anchor_lib
from segjax.models.detection import backbone as backbone_lib
from segjax.models.detection import mask_head as mask_lib
from segjax.models.detection.instances import (BOXES, CLASSES, MASK_PROBS, NUM_DETECTIONS, SCORES, TARGET_KEYS,
                                               check_targets, gt_valid)
from segjax.models.detection.matching import image_keys
from segjax.models.detection.poolers import multiscale_roi_align_table, pyramid_of
from segjax.models.detection.roi_heads import (BOX_CODER_WEIGHTS, FastRCNNPredictor, TwoMLPHead, batched_detections,
                                               label_and_sample_proposals)
from segjax.models.detection.rpn import RPNHead, batched_proposals, label_and_sample_anchors
from segjax.models.layers import check_images
from segjax.models.registry import module_variant, register

TRAIN_LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
ROI_LEVELS = backbone_lib.PYRAMID_LEVELS  # pooled by the ROI heads
RPN_LEVELS = ROI_LEVELS + (backbone_lib.EXTRA_LEVEL,)  # seen by the RPN
ROI_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


class MaskRCNN(nn.Module):
    """Mask R-CNN with a ResNet-FPN backbone (see the module docstring).

    Attributes: num_classes K (counting the background: 91 for COCO); the ResNet `depth`,
    `backbone_width`; `fpn_channels`; the box head's `representation_size`; `mask_channels` (the
    mask head's four convs and transposed conv); torchvision's inference (`rpn_*_test`,
    `rpn_nms_thresh`, `rpn_score_thresh`, `box_score_thresh`, `box_nms_thresh`,
    `box_detections_per_img`) and training settings (`rpn_*_train`, `rpn_fg/bg_iou_thresh`,
    `rpn_batch_size_per_image`, `rpn_positive_fraction`, `box_fg/bg_iou_thresh`,
    `box_batch_size_per_image`, `box_positive_fraction`); `anchor_sizes`, `aspect_ratios` per RPN
    level; `size_divisible` (padding); `dtype` (compute; outputs are float32); `axis_name` (the
    pmap axis, for the sampling keys); `in_channels`; `trainable_backbone_layers` (None trains
    everything, k in 0..5 torchvision's pretrained setting: `frozen_parameters`); `mask_chunk`
    (None runs the mask head on every slot, c on the positives in chunks c, c, 2c, ...:
    `mask_head.chunked_mask_losses`).
    """

    num_classes: int
    depth: int = 50
    backbone_width: int = 64
    fpn_channels: int = 256
    representation_size: int = 1024
    mask_channels: int = 256
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_score_thresh: float = 0.0
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    anchor_sizes: Sequence[Sequence[int]] = anchor_lib.DEFAULT_SIZES
    aspect_ratios: Sequence[Sequence[float]] = anchor_lib.DEFAULT_ASPECT_RATIOS
    size_divisible: int = 32
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3
    trainable_backbone_layers: int | None = None
    mask_chunk: int | None = 8

    # The feature maps the RPN and the ROI heads read (PANet: its bottom-up path's N2-N6).
    RPN_MAPS: ClassVar[tuple[str, ...]] = RPN_LEVELS
    ROI_MAPS: ClassVar[tuple[str, ...]] = ROI_LEVELS

    def frozen_parameters(self, params):
        """Bool pytree like `params` (True = never updated), or None when everything trains."""
        if self.trainable_backbone_layers is None:
            return None
        return backbone_lib.frozen_parameters(params, self.trainable_backbone_layers)

    def setup(self):
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"Mask R-CNN needs num_classes >= 2 (background included), got {self.num_classes!r}")
        if len(self.anchor_sizes) != len(RPN_LEVELS) or len(self.aspect_ratios) != len(RPN_LEVELS):
            raise ValueError(f"anchor_sizes and aspect_ratios need one entry per RPN level {RPN_LEVELS}")
        counts = set(anchor_lib.num_anchors_per_location(self.anchor_sizes, self.aspect_ratios))
        if len(counts) != 1:
            raise ValueError(f"the shared RPN head needs the same number of anchors on every level, got {counts}")
        if self.mask_chunk is not None:
            mask_lib.mask_chunks(1, self.mask_chunk)  # validates it
        self.backbone, self.fpn = backbone_lib.resnet_fpn(
            depth=self.depth, width=self.backbone_width, fpn_channels=self.fpn_channels, dtype=self.dtype,
            in_channels=self.in_channels, trainable_backbone_layers=self.trainable_backbone_layers)
        self.rpn_head = RPNHead(num_anchors=counts.pop(), dtype=self.dtype)
        self.box_head = self.make_box_head()
        self.box_predictor = FastRCNNPredictor(self.num_classes, dtype=self.dtype)
        self.mask_head = self.make_mask_head()
        self.mask_predictor = self.make_mask_predictor()

    @nn.nowrap
    def make_box_head(self) -> nn.Module:
        """The box head on `roi_pooler`'s 7x7 features (fc6, fc7)."""
        return TwoMLPHead(self.representation_size, dtype=self.dtype)

    @nn.nowrap
    def make_mask_head(self) -> nn.Module:
        """The mask head on `roi_pooler`'s 14x14 features (four 3x3 convs)."""
        return mask_lib.MaskHead((self.mask_channels,) * 4, dtype=self.dtype)

    @nn.nowrap
    def make_mask_predictor(self) -> nn.Module:
        """The mask head's features -> mask logits [K, 28, 28, num_classes]."""
        return mask_lib.MaskPredictor(self.num_classes, self.mask_channels, dtype=self.dtype)

    @nn.nowrap
    def roi_pooler(self) -> Callable[..., jax.Array]:
        """Pure `f(table, geometry, boxes [K, 4], image_index [K], output_size)` -> the ROI heads'
        input: each box ROI-Aligned at its FPN level, [K, s, s, C] (`poolers.multiscale_roi_align_table`)."""
        return functools.partial(multiscale_roi_align_table, scales=ROI_SCALES)

    def roi_features(self, features: dict[str, jax.Array], boxes: jax.Array, output_size: int) -> jax.Array:
        """`roi_pooler` on boxes [N, K, 4] (box k of image i) over the `ROI_MAPS`: [N * K, ...]."""
        n, k = boxes.shape[:2]
        image = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
        return self.roi_pooler()(*pyramid_of(features, self.ROI_MAPS), boxes.reshape(n * k, 4), image, output_size)

    def pad(self, images: jax.Array) -> jax.Array:
        """Zero-pads [N, H, W, C] bottom/right to multiples of `size_divisible` (torchvision's batching)."""
        check_images(images, self.in_channels, type(self).__name__)
        return backbone_lib.pad_to_multiple(images, self.size_divisible)

    def features(self, images: jax.Array) -> dict[str, jax.Array]:
        """FPN maps `p2..p6` [N, Hp / s, Wp / s, fpn_channels] of the padded images."""
        return backbone_lib.pyramid(self.backbone, self.fpn, self.pad(images))

    def rpn_outputs(self, features: dict[str, jax.Array]):
        """(objectness per level [N, H_l * W_l * A], deltas per level [N, H_l * W_l * A, 4])."""
        return self.rpn_head([features[k] for k in self.RPN_MAPS])

    def anchors(self, padded_size: Sequence[int], features: dict[str, jax.Array]) -> list[np.ndarray]:
        """Anchors per RPN level [H_l * W_l * A, 4] (numpy constants; torchvision's order)."""
        sizes = [features[k].shape[1:3] for k in self.RPN_MAPS]
        return anchor_lib.anchors_for(padded_size, sizes, self.anchor_sizes, self.aspect_ratios)

    def proposals(self, images: jax.Array, features: dict[str, jax.Array] | None = None,
                  rpn: tuple | None = None, train: bool = False):
        """RPN proposals (no gradient): (boxes [N, P, 4], scores [N, P], valid [N, P]), valid first.

        `rpn` reuses already computed `rpn_outputs`; `train` selects the `*_train` top-n settings.
        """
        features = self.features(images) if features is None else features
        padded = (features["p2"].shape[1] * 4, features["p2"].shape[2] * 4)
        objectness, deltas = jax.lax.stop_gradient(self.rpn_outputs(features) if rpn is None else rpn)
        return batched_proposals(
            objectness, deltas, self.anchors(padded, features), images.shape[1:3],
            pre_nms_top_n=self.rpn_pre_nms_top_n_train if train else self.rpn_pre_nms_top_n_test,
            post_nms_top_n=self.rpn_post_nms_top_n_train if train else self.rpn_post_nms_top_n_test,
            nms_thresh=self.rpn_nms_thresh, score_thresh=self.rpn_score_thresh)

    def box_outputs(self, features: dict[str, jax.Array], boxes: jax.Array):
        """Box head on boxes [N, K, 4]: (class logits [N, K, num_classes], deltas [N, K, 4 num_classes])."""
        n, k = boxes.shape[:2]
        logits, deltas = self.box_predictor(self.box_head(self.roi_features(features, boxes, 7)))
        return logits.reshape(n, k, -1), deltas.reshape(n, k, -1)

    def detect(self, images: jax.Array, features: dict[str, jax.Array] | None = None):
        """Detections without masks: dict of boxes, scores, classes, valid (each [N, D, ...])."""
        features = self.features(images) if features is None else features
        boxes, _, valid = self.proposals(images, features)
        logits, deltas = self.box_outputs(features, boxes)
        return batched_detections(logits, deltas, boxes, valid, images.shape[1:3], score_thresh=self.box_score_thresh,
                                  nms_thresh=self.box_nms_thresh, detections_per_img=self.box_detections_per_img,
                                  weights=BOX_CODER_WEIGHTS)

    def mask_logits(self, features: dict[str, jax.Array], boxes: jax.Array) -> jax.Array:
        """Mask logits [N, K, 28, 28, num_classes] of boxes [N, K, 4]."""
        n, k = boxes.shape[:2]
        logits = self.mask_predictor(self.mask_head(self.roi_features(features, boxes, mask_lib.MASK_POOL_SIZE)))
        return logits.reshape(n, k, *logits.shape[1:])

    def _mask_losses(self, features, masks, boxes, positive, labels, matched):
        """`loss_mask` of the mask slots boxes [N, Q, 4], chunked unless `mask_chunk` is None."""
        if self.mask_chunk is None or self.is_initializing():
            return mask_lib.mask_losses(self.mask_logits(features, boxes), masks, boxes, positive, labels, matched)
        head, predictor = self.mask_head.clone(parent=None), self.mask_predictor.clone(parent=None)
        head_vars = {"params": self.mask_head.variables["params"]}
        predictor_vars = {"params": self.mask_predictor.variables["params"]}
        logits_fn = lambda pooled: predictor.apply(predictor_vars, head.apply(head_vars, pooled))  # noqa: E731
        return mask_lib.chunked_mask_losses(logits_fn, *pyramid_of(features, self.ROI_MAPS), masks, boxes, positive,
                                            labels, matched, chunk=self.mask_chunk, scales=ROI_SCALES,
                                            pooler=self.roi_pooler())

    def train_outputs(self, images: jax.Array, targets: dict[str, jax.Array]):
        """Training losses and the samples behind them: (losses, samples).

        `losses` is what `__call__(train=True)` returns. `samples` (tests, analysis), per image:
        `anchor_labels` [N, A] (1 / 0 / -1), `anchor_positive`, `anchor_negative` bool [N, A]
        (`rpn.label_and_sample_anchors`); `proposals` [N, P, 4], `proposal_valid` [N, P]
        (train-mode RPN proposals); `roi_labels`, `roi_matched`, `roi_positive`, `roi_negative`
        [N, P + M] and `roi_index`, `roi_sampled` [N, S] (`roi_heads.label_and_sample_proposals`).
        """
        boxes, classes, masks, num = check_targets(targets, images.shape)
        valid = gt_valid(classes, num, boxes)  # a degenerate box (possible under jit) is padding
        if not self.has_rng("dropout"):
            raise ValueError("Mask R-CNN training samples anchors and proposals with the 'dropout' rng: call "
                             "model.apply(variables, images, train=True, targets=..., rngs={'dropout': key})")
        keys = image_keys(self.make_rng("dropout"), classes.shape[0], self.axis_name)
        features = self.features(images)
        rpn = self.rpn_outputs(features)
        objectness, deltas = jnp.concatenate(rpn[0], axis=1), jnp.concatenate(rpn[1], axis=1)
        padded = (features["p2"].shape[1] * 4, features["p2"].shape[2] * 4)
        anchors = jnp.asarray(np.concatenate(self.anchors(padded, features)))
        rpn_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        roi_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

        rpn_labels, rpn_reg, rpn_pos, rpn_neg = jax.vmap(lambda k, b, v: label_and_sample_anchors(
            k, anchors, b, v, fg_iou_thresh=self.rpn_fg_iou_thresh, bg_iou_thresh=self.rpn_bg_iou_thresh,
            batch_size_per_image=self.rpn_batch_size_per_image, positive_fraction=self.rpn_positive_fraction))(
            rpn_keys, boxes, valid)
        losses = jax.vmap(loss_lib.rpn_losses)(objectness, deltas, rpn_labels, rpn_reg, rpn_pos, rpn_neg)

        props, _, prop_valid = self.proposals(images, features, rpn=rpn, train=True)
        roi = jax.vmap(functools.partial(
            label_and_sample_proposals, fg_iou_thresh=self.box_fg_iou_thresh, bg_iou_thresh=self.box_bg_iou_thresh,
            batch_size_per_image=self.box_batch_size_per_image, positive_fraction=self.box_positive_fraction))(
            roi_keys, props, prop_valid, boxes, classes, valid)
        class_logits, box_regression = self.box_outputs(features, roi["boxes"])
        losses.update(jax.vmap(loss_lib.fast_rcnn_losses)(class_logits, box_regression, roi["labels"], roi["reg"],
                                                          roi["roi_sampled"]))
        q = min(int(self.box_batch_size_per_image * self.box_positive_fraction), roi["boxes"].shape[1])
        losses.update(self._mask_losses(features, masks, *(roi[k][:, :q] for k in ("boxes", "positive", "labels",
                                                                                    "matched"))))
        samples = dict(anchor_labels=rpn_labels, anchor_positive=rpn_pos, anchor_negative=rpn_neg, proposals=props,
                       proposal_valid=prop_valid, **{k: roi[k] for k in ("roi_labels", "roi_matched", "roi_positive",
                                                                         "roi_negative", "roi_index", "roi_sampled")})
        return losses, samples

    def __call__(self, images: jax.Array, train: bool = False, targets: dict[str, jax.Array] | None = None):
        if train:
            if targets is None:
                raise ValueError("Mask R-CNN with train=True needs targets={'boxes', 'classes', 'masks', "
                                 "'num_instances'} (see the MaskRCNN docstring)")
            return self.train_outputs(images, targets)[0]
        features = self.features(images)
        if self.is_initializing():
            # Every parameter is created by the heads on any boxes: skip the proposal filtering and
            # NMS loops, which would only make `init` slower to trace and compile.
            boxes = jnp.zeros((images.shape[0], 1, 4), jnp.float32).at[..., 2:].set(1.0)
            self.rpn_outputs(features)
            self.box_outputs(features, boxes)
            det = {"boxes": boxes, "scores": jnp.zeros(boxes.shape[:2]),
                   "classes": jnp.ones(boxes.shape[:2], jnp.int32), "valid": jnp.ones(boxes.shape[:2], bool)}
        else:
            det = self.detect(images, features)
        probs = mask_lib.mask_probs(self.mask_logits(features, det["boxes"]), det["classes"], det["valid"])
        return {BOXES: det["boxes"], SCORES: det["scores"], CLASSES: det["classes"],
                NUM_DETECTIONS: jnp.sum(det["valid"], axis=1, dtype=jnp.int32), MASK_PROBS: probs}


def _variant(name: str, depth: int, **sizes: int):
    """Registers `functools.partial(MaskRCNN, depth=depth, **sizes)`; the name fixes the depth, and
    the anchor geometry and padding are torchvision's (not overrides)."""
    doc = f"Mask R-CNN, ResNet-{depth}-FPN ({sizes or 'torchvision sizes'}); thresholds as torchvision."
    factory = module_variant(MaskRCNN, hidden=("depth", "anchor_sizes", "aspect_ratios", "size_divisible"),
                             doc=doc, depth=depth, **sizes)
    return register(name, output="detections")(factory)


maskrcnn_resnet50_fpn = _variant("maskrcnn_resnet50_fpn", 50)
maskrcnn_resnet101_fpn = _variant("maskrcnn_resnet101_fpn", 101)
# A CPU-sized variant: ResNet-18 at half width, narrow FPN and heads.
maskrcnn_resnet18_fpn = _variant("maskrcnn_resnet18_fpn", 18, backbone_width=32, fpn_channels=64,
                                 representation_size=256, mask_channels=64)

__all__ = ["BOXES", "CLASSES", "MASK_PROBS", "MaskRCNN", "NUM_DETECTIONS", "ROI_LEVELS", "ROI_SCALES", "RPN_LEVELS",
           "SCORES", "TARGET_KEYS", "TRAIN_LOSSES", "maskrcnn_resnet101_fpn", "maskrcnn_resnet18_fpn",
           "maskrcnn_resnet50_fpn"]
