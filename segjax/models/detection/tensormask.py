"""TensorMask (Chen, Girshick, He, Dollár, ICCV 2019): dense sliding-window instance segmentation.

Every window of every pyramid level predicts class scores (sigmoid, one per foreground class and
anchor), box deltas and a V x U mask, as structured 4-D tensors. Written after detectron2's
`projects/TensorMask` (the only public implementation, CUDA-only), with its defaults:

* backbone: ResNet + FPN P2-P7 (`build_retinanet_resnet_fpn_backbone`: P6 = 3x3/2 conv of C5,
  P7 = 3x3/2 conv of relu(P6); FPN `FUSE_TYPE: avg`, the top-down sum halved);
* anchors: one aspect ratio, sizes ((44, 60), (88, 120), ... (1408, 1920)) per level, so A = 2
  windows per position; mask sizes V = size // 4 (stride of P2): 11 and 15;
* head: class, box and mask towers of 4 3x3 convs + ReLU (256, 128, 128 channels), N(0, 0.01)
  weights, class prior 0.01; `mask_pred_V` 1x1 convs (shared by the levels) in the *aligned*
  representation; the tensor bipyramid: every level's mask features upsampled (bilinear) by
  2**level to P2, added to P2's, a 3x3 fuse conv + ReLU, and `swap_align2nat(2**level)` to the
  natural representation, so level l's masks are (2**l V)^2 pixels;
* window-to-object assignment (detectron2's `_assignment_rule`, the paper's §5.1): a window is
  positive for a box iff it *contains* the box, its size minus the stride is at most
  max(2 x the box's longer side, the smallest anchor minus 4) (*scale*), and the centres are at most one
  stride apart (*spatial*); windows that satisfy it for two boxes are negative (*uniqueness*).
  No window is ignored. This rule and not IoU matching: TensorMask's masks live in the window
  frame, so the window must cover the object and be centred on it;
* losses, all divided by max(1, #positives): FL* (`sigmoid_focal_loss_star`, gamma 3, alpha 0.3)
  over every window and class; L1 (smooth-L1 with beta 0) of the deltas (weights 1.5, 1.5, 0.75,
  0.75) over positives; mask BCE with positive-pixel weight 1.5, each window's sum scaled by
  2.0 / (mask pixels);
* inference: sigmoid scores above 0.05, the top 6000 (window, class) pairs, decoded boxes, NMS 0.5
  per class, 100 detections; the mask of each detection's window.

Static shapes: the mask loss runs on `mask_slots` positive windows per (level, anchor) and image
(`swap_align2nat_windows`, so its cost follows the positives; positives past the slots count in
the normaliser but get no mask term, `mask_overflow` in `train_outputs`' samples says how many),
detections have fixed slots. The outputs are Mask R-CNN's (`instances`) plus `mask_boxes`, the
window each 28 x 28 mask lives in (the instance task pastes masks there).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax import ops
from segjax.losses import detection as loss_lib
from segjax.models.backbones.resnet import ResNet
from segjax.models.detection import backbone as backbone_lib
from segjax.models.detection.anchors import grid_anchors
from segjax.models.detection.fpn import FPN, fpn_kernel_init
from segjax.models.detection.instances import (BOXES, CLASSES, MASK_BOXES, MASK_PROBS, NUM_DETECTIONS, SCORES,
                                               check_targets, gt_valid)
from segjax.models.layers import check_images, square_conv
from segjax.models.registry import module_variant, register
from segjax.ops.roi_align import roi_align_weights

LEVELS = ("p2", "p3", "p4", "p5", "p6", "p7")
DEFAULT_ANCHOR_SIZES = ((44, 60), (88, 120), (176, 240), (352, 480), (704, 960), (1408, 1920))
BBOX_REG_WEIGHTS = (1.5, 1.5, 0.75, 0.75)
TRAIN_LOSSES = ("loss_cls", "loss_box_reg", "loss_mask")
head_init = nn.initializers.normal(0.01)


def assignment_rule(gt_boxes: jax.Array, gt_ok: jax.Array, anchors: jax.Array, unit_lengths: jax.Array,
                    min_anchor_size: float, scale_thresh: float = 2.0, spatial_thresh: float = 1.0):
    """detectron2's `_assignment_rule` (uniqueness on) for one image: (matches int32 [A], positive bool [A]).

    Args: gt_boxes [M, 4]; gt_ok bool [M] (padding and degenerate boxes False); anchors [A, 4];
    unit_lengths [A] (each window's stride); `min_anchor_size` (smallest anchor minus the P2 stride).
    """
    g, a = gt_boxes[:, None, :], anchors[None, :, :]
    contain = jnp.all(a[..., :2] <= g[..., :2], axis=-1) & jnp.all(a[..., 2:] >= g[..., 2:], axis=-1)
    gt_size = jnp.max(gt_boxes[:, 2:] - gt_boxes[:, :2], axis=1)
    upper = jnp.maximum(gt_size * scale_thresh, min_anchor_size)
    anchor_size = jnp.max(anchors[:, 2:] - anchors[:, :2], axis=1) - unit_lengths
    scale = upper[:, None] - anchor_size[None, :] >= 0
    offset = ((gt_boxes[:, None, :2] + gt_boxes[:, None, 2:]) - (anchors[None, :, :2] + anchors[None, :, 2:])) / 2
    offset = offset / unit_lengths[None, :, None]
    spatial = jnp.sum(offset * offset, axis=-1) <= spatial_thresh * spatial_thresh
    assign = contain & scale & spatial & gt_ok[:, None]
    return jnp.argmax(assign, axis=0).astype(jnp.int32), jnp.sum(assign, axis=0) == 1


def window_mask_targets(gt_masks: jax.Array, windows: jax.Array, matched: jax.Array, size: int) -> jax.Array:
    """Binary targets [K, size, size]: gt mask `matched[k]` in window k, as detectron2's
    `BitMasks.crop_and_resize` (ROI Align aligned=True, adaptive sampling, then >= 0.5)."""
    _, h, w = gt_masks.shape
    grid = -(-3 * max(h, w) // size)  # windows are at most ~2x the image (scale rule) + a stride
    wy = roi_align_weights(windows[:, 1], windows[:, 3], size, h, sampling_ratio=0, aligned=True, max_grid=grid)
    wx = roi_align_weights(windows[:, 0], windows[:, 2], size, w, sampling_ratio=0, aligned=True, max_grid=grid)
    masks = gt_masks[matched].astype(jnp.float32)
    soft = jnp.einsum("kph,khw,kqw->kpq", wy, masks, wx, precision=jax.lax.Precision.HIGHEST)
    return (soft >= 0.5).astype(jnp.float32)


class P6P7(nn.Module):
    """RetinaNet's top block (detectron2's `LastLevelP6P7`): P6 = conv3x3/2(C5), P7 = conv3x3/2(relu(P6))."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, c5):
        conv = functools.partial(square_conv, self.channels, 3, stride=2, use_bias=True, dtype=self.dtype,
                                 kernel_init=fpn_kernel_init)
        p6 = conv(name="p6")(c5.astype(self.dtype))
        return p6, conv(name="p7")(nn.relu(p6))


class TensorMaskHead(nn.Module):
    """Class, box and mask towers over the levels (shared), the bipyramid and the aligned masks.

    `norm` None is detectron2's TensorMask (no normalisation in the towers); "GN" puts a
    GroupNorm (32 groups) after each tower conv, as RetinaNet/FCOS's GN heads: narrow towers
    trained from scratch (the CPU demo) otherwise shrink their N(0, 0.01) signal ~5x per conv and
    learn only the class prior.

    Returns (logits [N, H_l, W_l, A K'] per level, deltas [N, H_l, W_l, A 4] per level, aligned
    masks [level][anchor] [N, H_2, W_2, V_a^2] at P2's resolution), K' foreground classes.
    """

    num_foreground: int
    mask_sizes: Sequence[int]
    num_convs: int = 4
    cls_channels: int = 256
    bbox_channels: int = 128
    mask_channels: int = 128
    prior_prob: float = 0.01
    norm: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]):
        def conv(ch, k, name, bias=nn.initializers.zeros):
            return square_conv(ch, k, use_bias=True, dtype=self.dtype, kernel_init=head_init, bias_init=bias,
                               name=name)

        def tower(prefix, ch):
            layers = [conv(ch, 3, f"{prefix}_{i}") for i in range(self.num_convs)]
            norms = [nn.GroupNorm(num_groups=min(32, ch), dtype=self.dtype, name=f"{prefix}_{i}_gn")
                     if self.norm == "GN" else None for i in range(self.num_convs)]

            def run(x):
                for layer, norm in zip(layers, norms):
                    x = layer(x)
                    x = nn.relu(x if norm is None else norm(x))
                return x
            return run

        a = len(self.mask_sizes)
        prior = float(-np.log((1 - self.prior_prob) / self.prior_prob))
        cls_tower, cls_score = tower("cls_subnet", self.cls_channels), conv(
            a * self.num_foreground, 3, "cls_score", nn.initializers.constant(prior))
        box_tower, bbox_pred = tower("bbox_subnet", self.bbox_channels), conv(a * 4, 3, "bbox_pred")
        logits = [cls_score(cls_tower(x)).astype(jnp.float32) for x in features]
        deltas = [bbox_pred(box_tower(x)).astype(jnp.float32) for x in features]

        mask_tower, fuse = tower("mask_subnet", self.mask_channels), conv(self.mask_channels, 3, "mask_fuse")
        mask_preds = [conv(v * v, 1, f"mask_pred_{v:02d}") for v in self.mask_sizes]
        feats = [mask_tower(x) for x in features]
        high = feats[0]
        h, w = high.shape[1:3]
        aligned = []
        for lvl, feat in enumerate(feats):
            if lvl:
                lam = 2 ** lvl
                feat = ops.resize(feat, (feat.shape[1] * lam, feat.shape[2] * lam), "bilinear")[:, :h, :w]
            fused = nn.relu(fuse(feat + high))
            aligned.append([pred(fused).astype(jnp.float32) for pred in mask_preds])
        return logits, deltas, aligned


class TensorMask(nn.Module):
    """TensorMask on a ResNet-FPN (see the module docstring).

    Attributes: num_classes K counting the background (as Mask R-CNN: the head scores K - 1
    classes with sigmoids; outputs are 1..K-1); `depth`, `backbone_width`, `fpn_channels`; the
    towers' `num_convs`, `cls_channels`, `bbox_channels`, `mask_channels`; `anchor_sizes` per
    level (one aspect ratio; their number sets the levels, P2 first); the losses' `focal_alpha`,
    `focal_gamma`, `mask_loss_weight`, `mask_pos_weight`; inference's `score_thresh`,
    `topk_candidates`, `nms_thresh`, `detections_per_img`, `mask_output_size`; `mask_slots`
    (positive windows per level, anchor and image given a mask loss); `head_norm` (None as
    detectron2, "GN": GroupNorm in the towers); `size_divisible`; `dtype`;
    `axis_name` (unused: nothing is sampled); `in_channels`; `trainable_backbone_layers`.
    """

    num_classes: int
    depth: int = 50
    backbone_width: int = 64
    fpn_channels: int = 256
    num_convs: int = 4
    cls_channels: int = 256
    bbox_channels: int = 128
    mask_channels: int = 128
    anchor_sizes: Sequence[Sequence[int]] = DEFAULT_ANCHOR_SIZES
    focal_alpha: float = 0.3
    focal_gamma: float = 3.0
    mask_loss_weight: float = 2.0
    mask_pos_weight: float = 1.5
    score_thresh: float = 0.05
    topk_candidates: int = 6000
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    mask_output_size: int = 28
    mask_slots: int = 64
    size_divisible: int = 128
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3
    trainable_backbone_layers: int | None = None
    head_norm: str | None = None

    def frozen_parameters(self, params):
        if self.trainable_backbone_layers is None:
            return None
        return backbone_lib.frozen_parameters(params, self.trainable_backbone_layers)

    @property
    def mask_sizes(self) -> tuple[int, ...]:
        return tuple(int(s) // 4 for s in self.anchor_sizes[0])

    def setup(self):
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"TensorMask needs num_classes >= 2 (background included), got {self.num_classes!r}")
        levels = len(self.anchor_sizes)
        if not 2 <= levels <= len(LEVELS) or len({len(s) for s in self.anchor_sizes}) != 1:
            raise ValueError(f"anchor_sizes needs 2..6 levels (P2 first) with the same number of sizes each, got "
                             f"{self.anchor_sizes}")
        if self.head_norm not in (None, "GN"):
            raise ValueError(f"head_norm must be None or 'GN', got {self.head_norm!r}")
        if self.size_divisible % 2 ** (levels + 1):
            raise ValueError(f"size_divisible must be a multiple of the coarsest stride {2 ** (levels + 1)}")
        k = self.trainable_backbone_layers
        self.backbone = ResNet(depth=self.depth, width=self.backbone_width, dtype=self.dtype,
                               in_channels=self.in_channels,
                               frozen_stages=0 if k is None else len(backbone_lib.BACKBONE_STAGES) - k)
        self.fpn = FPN(out_channels=self.fpn_channels, extra_max_pool=False, fuse_type="avg", dtype=self.dtype)
        self.top = P6P7(self.fpn_channels, dtype=self.dtype)
        self.head = TensorMaskHead(self.num_classes - 1, self.mask_sizes, self.num_convs, self.cls_channels,
                                   self.bbox_channels, self.mask_channels, norm=self.head_norm, dtype=self.dtype)

    def features(self, images: jax.Array) -> list[jax.Array]:
        """Pyramid maps P2.. (as many as levels) of the zero-padded images."""
        check_images(images, self.in_channels, "TensorMask")
        padded = backbone_lib.pad_to_multiple(images, self.size_divisible)
        c = self.backbone(padded, train=False)
        p = self.fpn(c)
        maps = [p["p2"], p["p3"], p["p4"], p["p5"]]
        if len(self.anchor_sizes) > len(maps):  # P6, P7 only where they are used
            maps.extend(self.top(c["layer4"]))
        return maps[:len(self.anchor_sizes)]

    def windows(self, features: Sequence[jax.Array]):
        """numpy constants over all windows, level-major then (y, x, anchor): boxes [T, 4], strides [T]."""
        boxes, strides = [], []
        for lvl, (feat, sizes) in enumerate(zip(features, self.anchor_sizes)):
            s = 4 * 2 ** lvl
            cells = np.asarray([[-z / 2, -z / 2, z / 2, z / 2] for z in sizes], np.float32)
            boxes.append(grid_anchors(feat.shape[1:3], (s, s), cells))
            strides.append(np.full(len(boxes[-1]), s, np.float32))
        return np.concatenate(boxes), np.concatenate(strides)

    def _flat(self, per_level, width):
        n = per_level[0].shape[0]
        return jnp.concatenate([x.reshape(n, -1, width) for x in per_level], axis=1)

    def train_outputs(self, images: jax.Array, targets: dict[str, jax.Array]):
        """({loss: (sum [N], count [N])}, samples: `positive` [N, T], `matches` [N, T], `mask_overflow` [N])."""
        boxes, classes, masks, num = check_targets(targets, images.shape)
        ok = gt_valid(classes, num, boxes)  # a degenerate box (possible under jit) is padding
        feats = self.features(images)
        logits, deltas, aligned = self.head(feats)
        kf = self.num_classes - 1
        logits, deltas = self._flat(logits, kf), self._flat(deltas, 4)
        windows, strides = self.windows(feats)
        min_size = min(self.anchor_sizes[0]) - 4
        matches, positive = jax.vmap(lambda b, o: assignment_rule(b, o, windows, strides, min_size))(boxes, ok)
        num_fg = jnp.sum(positive, axis=1, dtype=jnp.int32)
        labels = jnp.take_along_axis(classes, matches, axis=1) - 1
        cls_target = jax.nn.one_hot(jnp.where(positive, labels, -1), kf)
        loss_cls = loss_lib.sigmoid_focal_loss_star(logits, cls_target, self.focal_alpha, self.focal_gamma)
        matched_boxes = jnp.take_along_axis(boxes, matches[..., None], axis=1)
        reg = ops.encode_boxes(matched_boxes, jnp.asarray(windows)[None], BBOX_REG_WEIGHTS)
        l1 = jnp.where(positive[..., None], jnp.abs(deltas - jnp.where(positive[..., None], reg, 0.0)), 0.0)
        losses = {"loss_cls": (jnp.sum(loss_cls, axis=(1, 2)), num_fg),
                  "loss_box_reg": (jnp.sum(l1, axis=(1, 2)), num_fg)}
        mask_sum, overflow = self._mask_losses(feats, aligned, masks, matches, positive, windows)
        losses["loss_mask"] = (mask_sum, num_fg)
        return losses, {"positive": positive, "matches": matches, "mask_overflow": overflow}

    def _groups(self, feats):
        """(level, anchor, first window index, H_l, W_l) of each window group."""
        start, out = 0, []
        a = len(self.mask_sizes)
        for lvl, f in enumerate(feats):
            h, w = f.shape[1:3]
            out.append((lvl, h, w, start))
            start += h * w * a
        return [(lvl, anc, h, w, s) for lvl, h, w, s in out for anc in range(a)]

    def _mask_losses(self, feats, aligned, masks, matches, positive, windows):
        a = len(self.mask_sizes)
        total = jnp.zeros(masks.shape[0], jnp.float32)
        overflow = jnp.zeros(masks.shape[0], jnp.int32)
        for lvl, anc, h, w, start in self._groups(feats):
            idx = start + np.arange(h * w) * a + anc
            pos = positive[:, idx]
            slots = min(self.mask_slots, h * w)
            cell = jax.vmap(lambda p: jnp.nonzero(p, size=slots, fill_value=0)[0])(pos)
            used = jnp.arange(slots)[None] < jnp.sum(pos, axis=1, keepdims=True)
            overflow = overflow + jnp.maximum(jnp.sum(pos, axis=1) - slots, 0)
            size = self.mask_sizes[anc] * 2 ** lvl
            logits = ops.swap_align2nat_windows(aligned[lvl][anc], 2 ** lvl, cell // w, cell % w)
            win = jnp.asarray(windows)[idx][cell]
            gt = jnp.take_along_axis(matches[:, idx], cell, axis=1)
            target = jax.vmap(lambda m, b, j: window_mask_targets(m, b, j, size))(masks, win, gt)
            bce = loss_lib.bce_with_logits_pos_weight(logits, target, self.mask_pos_weight)
            per_slot = jnp.sum(bce, axis=(2, 3)) * (self.mask_loss_weight / size ** 2)
            total = total + jnp.sum(jnp.where(used, per_slot, 0.0), axis=1)
        return total, overflow

    def detect(self, images: jax.Array, feats=None, head=None):
        """Detections: dict of boxes, scores, classes (1..K-1), valid, window (index) [N, D, ...]."""
        feats = self.features(images) if feats is None else feats
        logits, deltas, _ = self.head(feats) if head is None else head
        kf = self.num_classes - 1
        scores = jax.nn.sigmoid(self._flat(logits, kf)).reshape(images.shape[0], -1)
        deltas = self._flat(deltas, 4)
        windows, _ = self.windows(feats)
        k = min(self.topk_candidates, scores.shape[1])
        hw = images.shape[1:3]

        def one(s, d):
            top, idx = jax.lax.top_k(s, k)
            ok = top > self.score_thresh
            win = idx // kf
            boxes = ops.decode_boxes(d[win], jnp.asarray(windows)[win], BBOX_REG_WEIGHTS)
            boxes = ops.clip_boxes(boxes, hw)
            ok = ok & jnp.all(boxes[:, 2:] > boxes[:, :2], axis=1)
            keep, count = ops.batched_nms(boxes, top, idx % kf, self.nms_thresh, self.detections_per_img, valid=ok)
            valid = jnp.arange(self.detections_per_img) < count
            keep = jnp.where(valid, keep, 0)
            return dict(boxes=jnp.where(valid[:, None], boxes[keep], 0.0), scores=jnp.where(valid, top[keep], 0.0),
                        classes=jnp.where(valid, idx[keep] % kf + 1, 0).astype(jnp.int32), valid=valid,
                        window=win[keep])

        return jax.vmap(one)(scores, deltas)

    def window_masks(self, feats, aligned, window: jax.Array) -> jax.Array:
        """Mask probabilities [N, D, S, S] (S = mask_output_size) of windows [N, D] (flat indices)."""
        out = jnp.zeros(window.shape + (self.mask_output_size,) * 2, jnp.float32)
        a = len(self.mask_sizes)
        for lvl, anc, h, w, start in self._groups(feats):
            rel = window - start
            here = (rel >= 0) & (rel < h * w * a) & (rel % a == anc)
            cell = jnp.where(here, rel // a, 0)
            m = ops.swap_align2nat_windows(aligned[lvl][anc], 2 ** lvl, cell // w, cell % w, size=self.mask_output_size)
            out = jnp.where(here[..., None, None], jax.nn.sigmoid(m), out)
        return out

    def __call__(self, images: jax.Array, train: bool = False, targets: dict[str, jax.Array] | None = None):
        if train:
            if targets is None:
                raise ValueError("TensorMask with train=True needs targets={'boxes', 'classes', 'masks', "
                                 "'num_instances'}")
            return self.train_outputs(images, targets)[0]
        feats = self.features(images)
        head = self.head(feats)
        det = self.detect(images, feats, head)
        windows, _ = self.windows(feats)
        probs = self.window_masks(feats, head[2], det["window"])
        probs = jnp.where(det["valid"][..., None, None], probs, 0.0)
        return {BOXES: det["boxes"], SCORES: det["scores"], CLASSES: det["classes"],
                NUM_DETECTIONS: jnp.sum(det["valid"], axis=1, dtype=jnp.int32), MASK_PROBS: probs,
                MASK_BOXES: jnp.asarray(windows)[det["window"]]}


def _variant(name: str, depth: int, **sizes):
    doc = f"TensorMask, ResNet-{depth}-FPN P2-P7 ({sizes or 'detectron2 sizes'}); detectron2's defaults."
    factory = module_variant(TensorMask, hidden=("depth",), doc=doc, depth=depth, **sizes)
    return register(name, output="detections")(factory)


tensormask_resnet50_fpn = _variant("tensormask_resnet50_fpn", 50)
tensormask_resnet101_fpn = _variant("tensormask_resnet101_fpn", 101)
# CPU-sized: ResNet-18 at half width, narrow FPN and towers.
tensormask_resnet18_fpn = _variant("tensormask_resnet18_fpn", 18, backbone_width=32, fpn_channels=64,
                                   cls_channels=64, bbox_channels=32, mask_channels=32)

__all__ = ["BBOX_REG_WEIGHTS", "DEFAULT_ANCHOR_SIZES", "LEVELS", "P6P7", "TRAIN_LOSSES", "TensorMask",
           "TensorMaskHead", "assignment_rule", "tensormask_resnet101_fpn", "tensormask_resnet18_fpn",
           "tensormask_resnet50_fpn", "window_mask_targets"]
