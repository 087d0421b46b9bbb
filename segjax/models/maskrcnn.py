"""Mask R-CNN (He et al. 2017) on a ResNet-FPN: torchvision's `maskrcnn_resnet50_fpn`, inference.

Pipeline (one jit per input size, static shapes throughout):
  images [N, H, W, 3] (ImageNet-normalised) -> zero-padded bottom/right to a multiple of 32 ->
  ResNet (`backbone`, BatchNorm frozen: always its running statistics, as torchvision's
  FrozenBatchNorm2d) -> FPN (`fpn`, P2-P6) -> RPN (`rpn_head`, anchors 32-512 x ratios 0.5/1/2;
  per-level top-k, decode, clip, small-box removal, NMS 0.7, post-NMS top-k: `rpn.filter_proposals`)
  -> multi-scale ROI Align 7x7 on P2-P5 -> `box_head` (fc6, fc7) -> `box_predictor` -> softmax,
  per-class decoding (weights 10, 10, 5, 5), score > 0.05, NMS 0.5 per class, 100 detections
  (`roi_heads.postprocess_detections`) -> ROI Align 14x14 of the detected boxes -> `mask_head`
  (4 x 3x3 conv) -> `mask_predictor` (2x2 transposed conv, 1x1 conv to K) -> sigmoid of the
  detected class's 28x28 mask.

`model.apply(variables, images)` returns a dict (keys below): `boxes` [N, D, 4] (x1, y1, x2, y2,
input pixels), `scores` [N, D], `classes` int32 [N, D] (1..K-1), `num_detections` int32 [N]
(valid slots first; the others hold zeros), `mask_probs` [N, D, 28, 28]. Paste the masks into the
image with `segjax.ops.paste_masks(mask_probs, boxes, (H, W))`.

The stages are methods too (`model.apply(variables, ..., method=MaskRCNN.<name>)`), used by the
torchvision parity tests and by training code: `pad`, `features`, `rpn_outputs`, `anchors`,
`proposals`, `box_outputs`, `detect`, `mask_logits`.

The ROI poolers use the exact level scales 1/4 ... 1/32 of the padded maps. torchvision infers
them from the *unpadded* image height (`2 ** round(log2(map height / image height))`), which is the
same unless padding grows the height by more than sqrt(2) (images under ~80 pixels).

The thresholds are overrides with torchvision's names and defaults.

Training: `model.apply(variables, images, train=True, targets=targets, rngs={"dropout": key},
mutable=["batch_stats"])` (the `mutable` is accepted and returns `batch_stats` unchanged) with

  targets = {"boxes": [N, M, 4] float (x1, y1, x2, y2, input pixels), "classes": [N, M] int
             (1..K-1; 0 marks a padding slot), "masks": [N, M, H, W] binary full-image masks (any
             real/bool/uint8 dtype, H, W of `images`), "num_instances": [N] int}

(M static; slot j of image i is ground truth iff `j < num_instances[i]` and `classes[i, j] > 0`;
boxes must have positive width and height, as torchvision requires). It returns
`{name: (sum float32 [N], count int32 [N])}` per image for the five `TRAIN_LOSSES`:

  loss_objectness   sum: BCE-with-logits of the sampled anchors' objectness vs 1 / 0;
                    count: sampled anchors (256 per image unless fewer are labelled).
  loss_rpn_box_reg  sum: smooth-L1 (beta 1/9), summed over the 4 coordinates, of the positive
                    sampled anchors' deltas vs `encode_boxes(matched gt, anchor)` (weights 1);
                    count: sampled anchors (positives and negatives, as torchvision divides).
  loss_classifier   sum: cross-entropy of the sampled ROIs' class logits vs their labels
                    (0 = background); count: sampled ROIs (512 per image unless fewer exist).
  loss_box_reg      sum: smooth-L1 (beta 1/9), summed over 4 coordinates, of the positive
                    sampled ROIs' deltas *of their label's class* vs the box-coder targets
                    (weights 10, 10, 5, 5); count: sampled ROIs.
  loss_mask         sum: BCE-with-logits of the positive ROIs' 28 x 28 logits of their label's
                    class vs the matched gt mask ROI-Aligned on the ROI (`mask_targets`), over
                    ROIs and pixels; count: positive ROIs x 28 x 28.

Summing every sum and every count over the images (and devices: `lax.psum`) and dividing gives
exactly torchvision's batch losses (`segjax.models.detection.losses.normalize(losses,
axis_name)` does it, returning 0 for a zero count as torchvision's empty mask loss); so a
data-parallel caller gets the single-device loss on any device count. The total loss is the sum
of the five means (torchvision's `sum(loss_dict.values())`).

What happens (torchvision's GeneralizedRCNN in train mode, static shapes): anchors matched to
the ground truth at 0.7 / 0.3 with low-quality matches, 256 sampled per image at most half
positive (`rpn_batch_size_per_image`, `rpn_positive_fraction`); proposals from the RPN outputs
with `stop_gradient` (torchvision detaches them) and `rpn_pre/post_nms_top_n_train` = 2000 /
2000; the ground-truth boxes appended as candidates; candidates matched at
`box_fg_iou_thresh` / `box_bg_iou_thresh` = 0.5 / 0.5 and 512 sampled at most a quarter
positive (`box_batch_size_per_image`, `box_positive_fraction`) into fixed slots (positives first)
fed to the box head; the first `int(512 * 0.25)` slots (every positive) to the mask head. The
backbone's BatchNorm uses its running statistics (frozen, as torchvision's FrozenBatchNorm2d; its
scale and offset are still parameters: freeze them in the optimizer, see `frozen_parameters`).

Randomness: image i's anchor and ROI samples come from `fold_in(make_rng("dropout"), g)` with g
its global batch position (`axis_index(axis_name) * N + i` under pmap with `axis_name` set, else
i), so 1 and N devices draw the same samples for the same key; the ROI noise of ground-truth slot
j is drawn from its own key, so padding slots change no sample. `train_outputs` returns the
losses together with the samples (tests compare them with torchvision's).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.models.backbones.resnet import ResNet
from segjax.models.detection import anchors as anchor_lib
from segjax.models.detection import losses as loss_lib
from segjax.models.detection import targets as target_lib
from segjax.models.detection.poolers import pyramid_geometry, pyramid_table, roi_align_table
from segjax.models.detection.roi_heads import (FastRCNNPredictor, MaskHead, MaskPredictor, TwoMLPHead,
                                               postprocess_detections)
from segjax.models.detection.rpn import RPNHead, filter_proposals
from segjax.models.fpn import FPN
from segjax.models.layers import check_images
from segjax.models.registry import register
from segjax.ops.boxes import encode_boxes

# Output keys (shared constants).
BOXES = "boxes"
SCORES = "scores"
CLASSES = "classes"
NUM_DETECTIONS = "num_detections"
MASK_PROBS = "mask_probs"

# Train mode: the target keys and the returned loss names ({name: (sum [N], count [N])}).
TARGET_KEYS = ("boxes", "classes", "masks", "num_instances")
TRAIN_LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")

ROI_LEVELS = ("p2", "p3", "p4", "p5")  # pooled by the ROI heads (torchvision's "0".."3")
RPN_LEVELS = ROI_LEVELS + ("p6",)  # seen by the RPN (+ "pool")
ROI_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class MaskRCNN(nn.Module):
    """Mask R-CNN with a ResNet-FPN backbone (see the module docstring).

    Attributes:
      num_classes: K, counting the background (91 for COCO, as torchvision).
      depth, backbone_width: the ResNet (50 / 101 at width 64 for torchvision's models).
      fpn_channels: channels of every pyramid level (256).
      representation_size: fc6/fc7 width of the box head (1024).
      mask_layers, mask_dim_reduced: mask head conv widths and the transposed conv's (256s).
      rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test, rpn_nms_thresh, rpn_score_thresh,
      box_score_thresh, box_nms_thresh, box_detections_per_img: torchvision's inference settings.
      rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train, rpn_fg_iou_thresh, rpn_bg_iou_thresh,
      rpn_batch_size_per_image, rpn_positive_fraction, box_fg_iou_thresh, box_bg_iou_thresh,
      box_batch_size_per_image, box_positive_fraction: torchvision's training settings.
      anchor_sizes, aspect_ratios: per RPN level (torchvision's defaults).
      size_divisible: images are zero-padded bottom/right to a multiple of this.
      dtype: compute dtype of the convolutions and MLPs (boxes, scores and masks are float32).
      axis_name: the pmap axis the batch is split over, or None. Training folds each image's
        global position (`axis_index * N + i`) into its sampling key; BatchNorm is frozen.
      in_channels: channels of the input images.
      trainable_backbone_layers: None (every parameter trains: training from scratch) or k in
        0..5, torchvision's pretrained-backbone setting: only the last k of layer4, layer3,
        layer2, layer1, conv1 train (3 in its recipe), no gradient flows below them, and the
        backbone's BatchNorm scale/offset stay fixed (FrozenBatchNorm2d). The trainer keeps
        `frozen_parameters(params)` out of the optimizer.
      mask_chunk: training runs the mask head (with its ROI Align and targets) on the positives
        only, to the nearest of geometrically growing chunks: slots ordered positives first,
        chunks of c, c, 2c, 4c, ... slots (c = mask_chunk), a chunk without a positive skipped
        (`_mask_losses`; the same losses and gradients), so P positives cost at most
        max(c, 2P) slots' work; None runs it on every slot.
    """

    num_classes: int
    depth: int = 50
    backbone_width: int = 64
    fpn_channels: int = 256
    representation_size: int = 1024
    mask_layers: Sequence[int] = (256, 256, 256, 256)
    mask_dim_reduced: int = 256
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

    def frozen_parameters(self, params):
        """Bool pytree like `params` (True = never updated), or None when everything trains."""
        if self.trainable_backbone_layers is None:
            return None
        return frozen_parameters(params, self.trainable_backbone_layers)

    def setup(self):
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"Mask R-CNN needs num_classes >= 2 (background included), got {self.num_classes!r}")
        if len(self.anchor_sizes) != len(RPN_LEVELS) or len(self.aspect_ratios) != len(RPN_LEVELS):
            raise ValueError(f"anchor_sizes and aspect_ratios need one entry per RPN level {RPN_LEVELS}")
        counts = set(anchor_lib.num_anchors_per_location(self.anchor_sizes, self.aspect_ratios))
        if len(counts) != 1:
            raise ValueError(f"the shared RPN head needs the same number of anchors on every level, got {counts}")
        if self.mask_chunk is not None:
            mask_chunks(1, self.mask_chunk)  # validates it
        k = self.trainable_backbone_layers
        if k is not None and k not in range(len(BACKBONE_STAGES) + 1):
            raise ValueError(f"trainable_backbone_layers must be None or in 0..5, got {k!r}")
        self.backbone = ResNet(depth=self.depth, width=self.backbone_width, dtype=self.dtype,
                               in_channels=self.in_channels,
                               frozen_stages=0 if k is None else len(BACKBONE_STAGES) - k)
        self.fpn = FPN(out_names=ROI_LEVELS, out_channels=self.fpn_channels, extra_name="p6", dtype=self.dtype)
        self.rpn_head = RPNHead(num_anchors=counts.pop(), dtype=self.dtype)
        self.box_head = TwoMLPHead(self.representation_size, dtype=self.dtype)
        self.box_predictor = FastRCNNPredictor(self.num_classes, dtype=self.dtype)
        self.mask_head = MaskHead(tuple(self.mask_layers), dtype=self.dtype)
        self.mask_predictor = MaskPredictor(self.num_classes, self.mask_dim_reduced, dtype=self.dtype)

    # -- stages -------------------------------------------------------------------------------

    def pad(self, images: jax.Array) -> jax.Array:
        """Zero-pads [N, H, W, C] bottom/right to multiples of `size_divisible` (torchvision's batching)."""
        check_images(images, self.in_channels, "MaskRCNN")
        n, h, w, _ = images.shape
        s = self.size_divisible
        hp, wp = -(-h // s) * s, -(-w // s) * s
        return jnp.pad(images, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))

    def features(self, images: jax.Array) -> dict[str, jax.Array]:
        """FPN maps `p2..p6` [N, Hp / s, Wp / s, fpn_channels] of the padded images."""
        padded = self.pad(images)
        c = self.backbone(padded, train=False)  # frozen BatchNorm
        return self.fpn(c)

    def rpn_outputs(self, features: dict[str, jax.Array]):
        """(objectness per level [N, H_l * W_l * A], deltas per level [N, H_l * W_l * A, 4])."""
        return self.rpn_head([features[k] for k in RPN_LEVELS])

    def anchors(self, padded_size: Sequence[int], features: dict[str, jax.Array]) -> list[np.ndarray]:
        """Anchors per RPN level [H_l * W_l * A, 4] (numpy constants; torchvision's order)."""
        sizes = [features[k].shape[1:3] for k in RPN_LEVELS]
        return anchor_lib.anchors_for(padded_size, sizes, self.anchor_sizes, self.aspect_ratios)

    def proposals(self, images: jax.Array, features: dict[str, jax.Array] | None = None,
                  rpn: tuple | None = None, train: bool = False):
        """RPN proposals: (boxes [N, P, 4], scores [N, P], valid [N, P]); valid slots first.

        `rpn` reuses already computed `rpn_outputs`; `train` selects the `*_train` top-n settings.
        No gradient flows into the proposals (torchvision detaches them).
        """
        if features is None:
            features = self.features(images)
        padded = (features["p2"].shape[1] * 4, features["p2"].shape[2] * 4)
        objectness, deltas = self.rpn_outputs(features) if rpn is None else rpn
        objectness, deltas = jax.lax.stop_gradient((objectness, deltas))
        anchors = self.anchors(padded, features)
        filt = functools.partial(
            filter_proposals, anchors=anchors, image_size=images.shape[1:3],
            pre_nms_top_n=self.rpn_pre_nms_top_n_train if train else self.rpn_pre_nms_top_n_test,
            post_nms_top_n=self.rpn_post_nms_top_n_train if train else self.rpn_post_nms_top_n_test,
            nms_thresh=self.rpn_nms_thresh, score_thresh=self.rpn_score_thresh)
        return jax.vmap(lambda o, d: filt(o, d))(objectness, deltas)

    @staticmethod
    def _pyramid(features: dict[str, jax.Array]):
        """(table, geometry) of the batch's P2-P5 for `roi_align_table` (XLA merges the copies
        that the box and mask paths each build into one)."""
        levels = [features[name] for name in ROI_LEVELS]
        return pyramid_table(levels), pyramid_geometry(levels)

    def _pool(self, features: dict[str, jax.Array], boxes: jax.Array, output_size: int) -> jax.Array:
        """ROI Align of boxes [N, K, 4] on P2-P5 -> [N, K, s, s, C]."""
        n, k = boxes.shape[:2]
        image = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
        pooled = roi_align_table(*self._pyramid(features), boxes.reshape(n * k, 4), image, output_size,
                                 scales=ROI_SCALES)
        return pooled.reshape(n, k, *pooled.shape[1:])

    def box_outputs(self, features: dict[str, jax.Array], boxes: jax.Array):
        """Box head on boxes [N, K, 4]: (class logits [N, K, num_classes], deltas [N, K, 4 num_classes])."""
        n, k = boxes.shape[:2]
        pooled = self._pool(features, boxes, 7)
        x = self.box_head(pooled.reshape(n * k, *pooled.shape[2:]))
        logits, deltas = self.box_predictor(x)
        return logits.reshape(n, k, -1), deltas.reshape(n, k, -1)

    def detect(self, images: jax.Array, features: dict[str, jax.Array] | None = None):
        """Detections without masks: dict of boxes, scores, classes, valid (each [N, D, ...])."""
        if features is None:
            features = self.features(images)
        boxes, _, valid = self.proposals(images, features)
        logits, deltas = self.box_outputs(features, boxes)
        post = functools.partial(
            postprocess_detections, image_size=images.shape[1:3], score_thresh=self.box_score_thresh,
            nms_thresh=self.box_nms_thresh, detections_per_img=self.box_detections_per_img,
            weights=BOX_CODER_WEIGHTS)
        return jax.vmap(lambda lg, dl, b, v: post(lg, dl, b, v))(logits, deltas, boxes, valid)

    def mask_logits(self, features: dict[str, jax.Array], boxes: jax.Array) -> jax.Array:
        """Mask logits [N, K, 28, 28, num_classes] of boxes [N, K, 4]."""
        n, k = boxes.shape[:2]
        pooled = self._pool(features, boxes, 14)
        x = self.mask_head(pooled.reshape(n * k, *pooled.shape[2:]))
        logits = self.mask_predictor(x)
        return logits.reshape(n, k, *logits.shape[1:])

    # -- training -----------------------------------------------------------------------------

    def _mask_losses(self, features, masks, boxes, positive, labels, matched):
        """`loss_mask` (sum [N], count [N]) of the mask slots boxes [N, Q, 4].

        `mask_chunk=None`: ROI Align, targets and mask head run on all N * Q slots. Otherwise the
        slots are ordered positives first over the whole batch and cut into chunks of c, c, 2c,
        4c, ... slots (`mask_chunks`), each run under `lax.cond` on holding a positive: a chunk
        without one contributes exactly zero loss and gradient, so skipping it changes nothing
        but the time, and P positives cost at most max(c, 2P) slots (torchvision runs the head on
        the positives only; with static shapes this is the nearest equivalent). Both paths give
        the same losses and gradients (tested).
        """
        size = 2 * 14  # the predictor's transposed conv doubles the 14 x 14 pooled maps
        n, q = positive.shape
        count = jnp.sum(positive, axis=1, dtype=jnp.int32) * (size * size)
        if self.mask_chunk is None or self.is_initializing():
            targets = jax.vmap(lambda mk, b, j: target_lib.mask_targets(mk, b, j, size))(masks, boxes, matched)
            logits = self.mask_logits(features, boxes)
            return jax.vmap(loss_lib.mask_loss)(logits, labels, targets, positive)
        total, m = n * q, masks.shape[1]
        order = jnp.argsort(~positive.reshape(total), stable=True)  # positives first
        image = (order // q).astype(jnp.int32)
        take = lambda x: x.reshape(total, *x.shape[2:])[order]  # noqa: E731
        boxes_s, labels_s, pos_s = take(boxes), take(labels), take(positive)
        gt_index = image * m + take(matched)  # into the batch's masks [N * M, H, W]
        flat_masks = masks.reshape(n * m, *masks.shape[2:])
        table, geometry = self._pyramid(features)
        head = self.mask_head.clone(parent=None)
        predictor = self.mask_predictor.clone(parent=None)
        head_vars = {"params": self.mask_head.variables["params"]}
        predictor_vars = {"params": self.mask_predictor.variables["params"]}

        def chunk_bce(table, b, img, lab, j, pos):
            pooled = roi_align_table(table, geometry, b, img, 14, scales=ROI_SCALES)
            tgt = target_lib.mask_targets(flat_masks, b, j, size)
            logits = predictor.apply(predictor_vars, head.apply(head_vars, pooled))
            return loss_lib.mask_bce_per_slot(logits, lab, tgt, pos)

        sums = []
        for start, length in mask_chunks(total, self.mask_chunk):
            sl = slice(start, start + length)
            args = (table, boxes_s[sl], image[sl], labels_s[sl], gt_index[sl], pos_s[sl])
            sums.append(lax.cond(jnp.any(pos_s[sl]), chunk_bce,
                                 lambda *a, length=length: jnp.zeros((length,), jnp.float32), *args))
        per_slot = jnp.zeros((total,), jnp.float32).at[order].set(jnp.concatenate(sums)).reshape(n, q)
        return {"loss_mask": (jnp.sum(per_slot, axis=1), count)}

    def _sampling_keys(self, n: int) -> jax.Array:
        """One key per image: the "dropout" key folded with the image's global batch position."""
        if not self.has_rng("dropout"):
            raise ValueError("Mask R-CNN training samples anchors and proposals with the 'dropout' rng: call "
                             "model.apply(variables, images, train=True, targets=..., rngs={'dropout': key})")
        key = self.make_rng("dropout")
        offset = 0 if self.axis_name is None else lax.axis_index(self.axis_name) * n
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(n))

    def train_outputs(self, images: jax.Array, targets: dict[str, jax.Array]):
        """Training losses and the samples behind them: (losses, samples).

        `losses` is what `__call__(train=True)` returns (see `TRAIN_LOSSES`). `samples` (for tests
        and analysis), per image: `anchor_labels` [N, A] (1 / 0 / -1), `anchor_positive`,
        `anchor_negative` bool [N, A] (the sampled anchors, torchvision's anchor order);
        `proposals` [N, P, 4], `proposal_valid` [N, P] (train-mode RPN proposals); over the ROI
        candidates (the P proposal slots, then the M ground-truth slots): `roi_labels` int32
        [N, P + M] (class, 0 background, -1 ignored), `roi_matched` [N, P + M], `roi_positive`,
        `roi_negative` bool [N, P + M]; the box head's slots: `roi_index` int32 [N, S] (into the
        candidates; positives first, then negatives, then unsampled slots), `roi_sampled` [N, S].
        """
        boxes, classes, masks, num = _check_targets(targets, images.shape)
        n, m = classes.shape
        gt_valid = (jnp.arange(m)[None, :] < num[:, None]) & (classes > 0)
        keys = self._sampling_keys(n)
        features = self.features(images)
        rpn = self.rpn_outputs(features)
        objectness = jnp.concatenate(rpn[0], axis=1)
        deltas = jnp.concatenate(rpn[1], axis=1)
        padded = (features["p2"].shape[1] * 4, features["p2"].shape[2] * 4)
        anchors = jnp.asarray(np.concatenate(self.anchors(padded, features)))
        rpn_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        roi_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

        # RPN: match anchors (0.7 / 0.3, low-quality matches), sample 256 (half positive), losses.
        def rpn_targets(key, gt_boxes, valid):
            labels, matched = target_lib.anchor_targets(anchors, gt_boxes, valid,
                                                        fg_iou_thresh=self.rpn_fg_iou_thresh,
                                                        bg_iou_thresh=self.rpn_bg_iou_thresh)
            pos, neg = target_lib.sample_balanced(key, labels, self.rpn_batch_size_per_image,
                                                  self.rpn_positive_fraction)
            reference = jnp.where(pos[:, None], matched, anchors)  # finite targets where unused
            return labels, encode_boxes(reference, anchors), pos, neg

        rpn_labels, rpn_reg, rpn_pos, rpn_neg = jax.vmap(rpn_targets)(rpn_keys, boxes, gt_valid)
        losses = jax.vmap(loss_lib.rpn_losses)(objectness, deltas, rpn_labels, rpn_reg, rpn_pos, rpn_neg)

        # ROI heads: proposals (no gradient) + ground truth, match at 0.5, sample 512 (a quarter positive).
        props, _, prop_valid = self.proposals(images, features, rpn=rpn, train=True)
        p = props.shape[1]
        cand = jnp.concatenate([props, boxes], axis=1)
        cand_valid = jnp.concatenate([prop_valid, gt_valid], axis=1)
        s = min(self.box_batch_size_per_image, p + m)
        q = min(int(self.box_batch_size_per_image * self.box_positive_fraction), s)
        safe = jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32)

        def roi_targets(key, cand, cand_valid, gt_boxes, gt_classes, valid):
            labels, matched = target_lib.proposal_targets(cand, cand_valid, gt_boxes, gt_classes, valid,
                                                          fg_iou_thresh=self.box_fg_iou_thresh,
                                                          bg_iou_thresh=self.box_bg_iou_thresh)
            # The ground-truth slots draw their noise from their own slot's key, so padding slots
            # (never sampled) leave every other draw unchanged.
            k_prop_pos, k_prop_neg, k_gt_pos, k_gt_neg = jax.random.split(key, 4)
            gt_noise = lambda k: jax.vmap(lambda j: jax.random.uniform(jax.random.fold_in(k, j)))(  # noqa: E731
                jnp.arange(m))
            noise_pos = jnp.concatenate([jax.random.uniform(k_prop_pos, (p,)), gt_noise(k_gt_pos)])
            noise_neg = jnp.concatenate([jax.random.uniform(k_prop_neg, (p,)), gt_noise(k_gt_neg)])
            pos, neg = target_lib.sample_balanced_by_noise(noise_pos, noise_neg, labels,
                                                           self.box_batch_size_per_image,
                                                           self.box_positive_fraction)
            _, _, order = lax.sort((~pos, ~neg, jnp.arange(p + m, dtype=jnp.int32)), num_keys=3)
            idx = order[:s]
            sampled = (pos | neg)[idx]
            positive = pos[idx]
            sboxes = jnp.where(sampled[:, None], cand[idx], safe)
            slabels = jnp.where(sampled, labels[idx], 0)
            smatched = matched[idx]
            reference = jnp.where(positive[:, None], gt_boxes[smatched], safe)
            reg = encode_boxes(reference, jnp.where(positive[:, None], sboxes, safe), BOX_CODER_WEIGHTS)
            return dict(roi_labels=labels, roi_matched=matched, roi_positive=pos, roi_negative=neg, roi_index=idx,
                        roi_sampled=sampled, positive=positive, boxes=sboxes, labels=slabels, matched=smatched,
                        reg=reg)

        roi = jax.vmap(roi_targets)(roi_keys, cand, cand_valid, boxes, classes, gt_valid)
        class_logits, box_regression = self.box_outputs(features, roi["boxes"])
        losses.update(jax.vmap(loss_lib.fast_rcnn_losses)(class_logits, box_regression, roi["labels"], roi["reg"],
                                                          roi["roi_sampled"]))

        # Masks on the positives (the first q slots hold every sampled positive).
        mboxes, mpos = roi["boxes"][:, :q], roi["positive"][:, :q]
        losses.update(self._mask_losses(features, masks, mboxes, mpos, roi["labels"][:, :q],
                                        roi["matched"][:, :q]))

        samples = dict(anchor_labels=rpn_labels, anchor_positive=rpn_pos, anchor_negative=rpn_neg, proposals=props,
                       proposal_valid=prop_valid,
                       **{k: roi[k] for k in ("roi_labels", "roi_matched", "roi_positive", "roi_negative",
                                              "roi_index", "roi_sampled")})
        return losses, samples

    # -- the model ----------------------------------------------------------------------------

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
        logits = self.mask_logits(features, det["boxes"])  # [N, D, 28, 28, K]
        probs = jax.nn.sigmoid(jnp.take_along_axis(logits, det["classes"][:, :, None, None, None], axis=-1)[..., 0])
        valid = det["valid"]
        return {
            BOXES: det["boxes"],
            SCORES: det["scores"],
            CLASSES: det["classes"],
            NUM_DETECTIONS: jnp.sum(valid, axis=1, dtype=jnp.int32),
            MASK_PROBS: jnp.where(valid[:, :, None, None], probs, 0.0),
        }


def mask_chunks(total: int, first: int) -> list[tuple[int, int]]:
    """(start, length) of the mask head's chunks over `total` slots: first, first, 2 first, 4 first,
    ... (the last one cut at `total`), so the chunks up to the one holding slot P - 1 span at most
    max(first, 2P) slots."""
    if not isinstance(first, int) or first < 1:
        raise ValueError(f"mask_chunk must be a positive int or None, got {first!r}")
    out, start, length = [], 0, first
    while start < total:
        out.append((start, min(length, total - start)))
        start += length
        length = start  # each chunk as long as all before it: the boundaries double
    return out


BACKBONE_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")  # torchvision's unfreezing order


def frozen_parameters(params, trainable_backbone_layers: int = 3):
    """Bool pytree shaped like `params`: True where torchvision's Mask R-CNN trains nothing.

    With a pretrained backbone torchvision makes every backbone BatchNorm a FrozenBatchNorm2d
    (scale and offset are constants, not parameters) and trains only the last
    `trainable_backbone_layers` (0-5) of `layer4, layer3, layer2, layer1, conv1` (3 by default:
    `conv1` and `layer1` stay fixed). segjax keeps those as parameters (the model uses the
    running statistics either way); mask them in the optimizer, e.g.
    `optax.multi_transform({False: tx, True: optax.set_to_zero()}, frozen_parameters(params))`.
    """
    from flax import traverse_util

    if not 0 <= trainable_backbone_layers <= len(BACKBONE_STAGES):
        raise ValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_backbone_layers}")
    trained = BACKBONE_STAGES[:trainable_backbone_layers]
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path in flat:
        if path[0] != "backbone":
            out[path] = False
            continue
        stage = path[1] if path[1].startswith("layer") else "conv1"  # conv1 / bn1: the stem
        is_bn = any(p.startswith("bn") for p in path[1:-1]) or "downsample" in path and path[-2] == "1"
        out[path] = is_bn or stage not in trained
    return traverse_util.unflatten_dict(out)


def _check_targets(targets, image_shape):
    """(boxes float32 [N, M, 4], classes int32 [N, M], masks [N, M, H, W], num_instances int32 [N])."""
    if not isinstance(targets, dict) or any(k not in targets for k in TARGET_KEYS):
        got = sorted(targets) if isinstance(targets, dict) else type(targets).__name__
        raise ValueError(f"Mask R-CNN targets must be a dict with keys {TARGET_KEYS}, got {got}")
    n, h, w = image_shape[0], image_shape[1], image_shape[2]
    boxes, classes = jnp.asarray(targets["boxes"], jnp.float32), jnp.asarray(targets["classes"])
    masks, num = jnp.asarray(targets["masks"]), jnp.asarray(targets["num_instances"])
    m = classes.shape[-1] if classes.ndim == 2 else None
    expected = {"boxes": (n, m, 4), "classes": (n, m), "masks": (n, m, h, w), "num_instances": (n,)}
    for key, arr in zip(TARGET_KEYS, (boxes, classes, masks, num)):
        if tuple(arr.shape) != expected[key]:
            raise ValueError(f"Mask R-CNN targets[{key!r}] must have shape {expected[key]} (N, M = max instances, "
                             f"H, W of the images), got {tuple(arr.shape)}")
    return boxes, classes.astype(jnp.int32), masks, num.astype(jnp.int32)


def _factory(depth: int, width: int, fpn_channels: int, representation_size: int, mask_channels: int):
    """A registry factory whose keyword defaults are this variant's sizes and torchvision's settings."""

    def factory(*, num_classes: int, backbone_width: int = width, fpn_channels: int = fpn_channels,
                representation_size: int = representation_size, mask_channels: int = mask_channels,
                rpn_pre_nms_top_n_test: int = 1000, rpn_post_nms_top_n_test: int = 1000,
                rpn_nms_thresh: float = 0.7, rpn_score_thresh: float = 0.0, box_score_thresh: float = 0.05,
                box_nms_thresh: float = 0.5, box_detections_per_img: int = 100,
                rpn_pre_nms_top_n_train: int = 2000, rpn_post_nms_top_n_train: int = 2000,
                rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3,
                rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5,
                box_batch_size_per_image: int = 512, box_positive_fraction: float = 0.25,
                dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
                trainable_backbone_layers: int | None = None, mask_chunk: int | None = 8) -> MaskRCNN:
        return MaskRCNN(
            num_classes=num_classes, depth=depth, backbone_width=backbone_width, fpn_channels=fpn_channels,
            representation_size=representation_size, mask_layers=(mask_channels,) * 4,
            mask_dim_reduced=mask_channels, rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test, rpn_nms_thresh=rpn_nms_thresh,
            rpn_score_thresh=rpn_score_thresh, box_score_thresh=box_score_thresh,
            box_nms_thresh=box_nms_thresh, box_detections_per_img=box_detections_per_img,
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_fg_iou_thresh=rpn_fg_iou_thresh, rpn_bg_iou_thresh=rpn_bg_iou_thresh,
            rpn_batch_size_per_image=rpn_batch_size_per_image, rpn_positive_fraction=rpn_positive_fraction,
            box_fg_iou_thresh=box_fg_iou_thresh, box_bg_iou_thresh=box_bg_iou_thresh,
            box_batch_size_per_image=box_batch_size_per_image, box_positive_fraction=box_positive_fraction,
            dtype=dtype, axis_name=axis_name, in_channels=in_channels,
            trainable_backbone_layers=trainable_backbone_layers, mask_chunk=mask_chunk)

    factory.__doc__ = (f"Mask R-CNN, ResNet-{depth}-FPN (backbone width {width}, FPN {fpn_channels}, box head "
                       f"{representation_size}, mask head {mask_channels}); thresholds as torchvision.")
    return factory


maskrcnn_resnet50_fpn = register("maskrcnn_resnet50_fpn", output="detections")(_factory(50, 64, 256, 1024, 256))
maskrcnn_resnet101_fpn = register("maskrcnn_resnet101_fpn", output="detections")(_factory(101, 64, 256, 1024, 256))
# A CPU-sized variant: ResNet-18 at half width, narrow FPN and heads.
maskrcnn_resnet18_fpn = register("maskrcnn_resnet18_fpn", output="detections")(_factory(18, 32, 64, 256, 64))

__all__ = ["BACKBONE_STAGES", "BOXES", "CLASSES", "MASK_PROBS", "MaskRCNN", "NUM_DETECTIONS", "SCORES", "TARGET_KEYS",
           "TRAIN_LOSSES", "frozen_parameters", "maskrcnn_resnet101_fpn", "maskrcnn_resnet18_fpn",
           "maskrcnn_resnet50_fpn"]
