"""PANet (Liu, Qi, Qin, Shi, Jia, "Path Aggregation Network for Instance Segmentation", CVPR 2018):
Mask R-CNN (`maskrcnn.MaskRCNN`, subclassed) with the paper's three additions (Sec. 3):

* Bottom-up path augmentation (Sec. 3.1, Fig. 2; `BottomUpPath`): after the FPN, N2 = P2 and
  N_{i+1} = ReLU(conv3x3(ReLU(conv3x3_stride2(N_i)) + P_{i+1})), every map `fpn_channels` wide;
  N6 = N5 sub-sampled by 2 (the max-pool of kernel 1 that makes FPN's P6).
* Adaptive feature pooling (Sec. 3.2, Fig. 6; `adaptive_roi_align_table`): every ROI is
  ROI-Aligned from all of N2-N5 (not only its FPN level); each level's grid goes through its own
  first layer (box branch: fc6 per level, `AdaptiveTwoMLPHead`; mask branch: the first conv per
  level, `AdaptiveMaskHead`) and the levels are fused by element-wise max before the rest of the
  head.
* Fully-connected fusion (Sec. 3.4, Fig. 4; `FusedMaskPredictor`): from the mask head's conv3,
  besides the FCN (conv4, deconv, per-class 1x1 logits), a short path conv4_fc (3x3), conv5_fc
  (3x3, half the channels), fc to 28 x 28 = 784 outputs predicts one class-agnostic mask that is
  added to every class's logits.

Where the paper leaves a detail open, this follows the authors' PyTorch re-implementation
(github.com/ShuLiu1993/PANet, `lib/modeling/FPN.py`, `fast_rcnn_heads.roi_2mlp_head_gn_panet`,
`mask_rcnn_heads.mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff`, `model_builder.py`):

* the RPN, too, reads the augmented maps N2-N6 (`Generalized_RCNN` feeds the FPN body's output, the
  bottom-up path's when `panet_buttomup`, to both the RPN and the ROI heads);
* each bottom-up conv is followed by a ReLU (the paper's text and the repository's GN variant);
  their weights are Xavier-uniform with zero bias (Caffe2's XavierFill, as FPN's convs here);
* the max fuses after each level's first layer and its ReLU (ReLU commutes with max); the fc
  path's fc has a ReLU too (`mask_fc = Linear + ReLU`), with N(0, 0.01) weights, zero bias;
* no GroupNorm: the repository adds GN to the FPN and heads (its README) where the paper trained
  with synchronised BatchNorm; segjax's Mask R-CNN has neither, so the comparison with it is like
  for like.

The output contract, training losses (each a global (sum, count)), sampling, chunked mask loss
and static shapes are Mask R-CNN's (`maskrcnn` module docstring).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import conv_kernel_init
from segjax.models.detection import backbone as backbone_lib
from segjax.models.detection import mask_head as mask_lib
from segjax.models.detection.fpn import fpn_kernel_init
from segjax.models.detection.maskrcnn import ROI_SCALES, MaskRCNN
from segjax.models.detection.roi_heads import torch_default_bias_init, torch_default_kernel_init
from segjax.models.layers import square_conv
from segjax.models.registry import module_variant, register
from segjax.ops.roi_align import roi_align_table

BOTTOM_UP_LEVELS = ("n2", "n3", "n4", "n5")  # the augmented maps, strides 4-32 (read by the ROI heads)
BOTTOM_UP_EXTRA = "n6"  # N5 sub-sampled by 2, stride 64 (read by the RPN only)


class BottomUpPath(nn.Module):
    """Sec. 3.1: `{in_names[i]: P_i [N, H_i, W_i, C]}` -> `{out_names[i]: N_i}` (+ `extra_name`).

    N_first = P_first; N_{i+1} = ReLU(fuse_i(ReLU(down_i(N_i)) + P_{i+1})) with `down_i` a 3x3
    stride-2 conv (padding 1: ceil(H_i / 2) rows, which must be P_{i+1}'s) and `fuse_i` a 3x3 conv,
    both `channels` wide with biases. The extra map is the last N_i at every other pixel.

    Children: `down_{i}`, `fuse_{i}` for i = 1 .. len(in_names) - 1 (the level they produce).
    """

    channels: int = 256
    in_names: Sequence[str] = backbone_lib.PYRAMID_LEVELS
    out_names: Sequence[str] = BOTTOM_UP_LEVELS
    extra_name: str | None = BOTTOM_UP_EXTRA
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, jax.Array]) -> dict[str, jax.Array]:
        if len(self.in_names) != len(self.out_names):
            raise ValueError(f"BottomUpPath needs one output name per input: {self.in_names} vs {self.out_names}")
        missing = [k for k in self.in_names if k not in features]
        if missing:
            raise ValueError(f"BottomUpPath inputs {missing} not among the maps {sorted(features)}")

        def conv(stride, name):
            return square_conv(self.channels, 3, stride=stride, use_bias=True, dtype=self.dtype,
                               kernel_init=fpn_kernel_init, name=name)

        ps = [features[k].astype(self.dtype) for k in self.in_names]
        outputs = [ps[0]]
        for i in range(1, len(ps)):
            down = nn.relu(conv(2, f"down_{i}")(outputs[-1]))
            if down.shape[1:3] != ps[i].shape[1:3]:
                raise ValueError(f"BottomUpPath: {self.in_names[i]} is {ps[i].shape[1:3]}, the stride-2 conv of "
                                 f"{self.out_names[i - 1]} gives {down.shape[1:3]} (each level must be "
                                 f"ceil(H / 2) x ceil(W / 2) of the finer one)")
            outputs.append(nn.relu(conv(1, f"fuse_{i}")(down + ps[i])))
        result = dict(zip(self.out_names, outputs))
        if self.extra_name is not None:
            result[self.extra_name] = outputs[-1][:, ::2, ::2]  # max_pool2d(kernel 1, stride 2)
        return result


def adaptive_roi_align_table(table: jax.Array, geometry: Sequence[tuple[int, int]], boxes: jax.Array,
                             image_index: jax.Array, output_size: int, *, scales: Sequence[float],
                             sampling_ratio: int = 2) -> jax.Array:
    """Sec. 3.2: every box ROI-Aligned from every level of the pyramid, one gather.

    Args:
      table, geometry: `pyramid_table` / `pyramid_geometry` of the batch's L levels [N, H_l, W_l, C].
      boxes: [K, 4] (x1, y1, x2, y2, image pixels); image_index: int [K].
      output_size: bins per side; scales: feature cells per image pixel of each level;
      sampling_ratio: samples per bin and axis (Mask R-CNN's 2; `aligned=False` as its poolers).
    Returns:
      [K, L, s, s, C] float32: [k, l] equals `torchvision.ops.roi_align(level_l, box k,
      spatial_scale=scales[l], sampling_ratio, aligned=False)`.
    """
    k, levels = boxes.shape[0], len(geometry)
    pooled = roi_align_table(table, geometry, jnp.repeat(boxes, levels, axis=0), jnp.repeat(image_index, levels),
                             jnp.tile(jnp.arange(levels, dtype=jnp.int32), k), output_size, scales=scales,
                             sampling_ratio=sampling_ratio)
    return pooled.reshape(k, levels, *pooled.shape[1:])


def _dense(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
    """torch's nn.Linear default init (as the Mask R-CNN box head's)."""
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(fan_in), name=name)


class AdaptiveTwoMLPHead(nn.Module):
    """Box head of Fig. 6: [K, L, 7, 7, C] -> [K, representation_size].

    fc6 per level (`fc6_{l}`, + ReLU) on the (y, x, channel)-flattened grid, max over the L
    levels, fc7 (+ ReLU): Mask R-CNN's `TwoMLPHead` with its first layer split by level.
    """

    representation_size: int = 1024
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, levels = x.shape[:2]
        x = x.reshape(k, levels, -1).astype(self.dtype)
        fan_in = x.shape[-1]
        per_level = [nn.relu(_dense(self.representation_size, fan_in, self.dtype, f"fc6_{lv}")(x[:, lv]))
                     for lv in range(levels)]
        fused = functools.reduce(jnp.maximum, per_level)
        return nn.relu(_dense(self.representation_size, self.representation_size, self.dtype, "fc7")(fused))


def _mask_conv(features: int, dtype: Any, name: str) -> nn.Conv:
    """A mask-head 3x3 conv: kaiming-normal fan_out, zero bias (torchvision's MaskRCNNHeads, the
    authors' MSRAFill)."""
    return square_conv(features, 3, use_bias=True, dtype=dtype, kernel_init=conv_kernel_init, name=name)


class AdaptiveMaskHead(nn.Module):
    """Mask head of Fig. 6 up to conv3: [K, L, 14, 14, C] -> [K, 14, 14, channels].

    The first 3x3 conv per level (`mask_fcn1_{l}`, + ReLU), max over the L levels, then
    `mask_fcn2`, `mask_fcn3` (+ ReLU); conv4 is `FusedMaskPredictor`'s.
    """

    channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        per_level = [nn.relu(_mask_conv(self.channels, self.dtype, f"mask_fcn1_{lv}")(x[:, lv]))
                     for lv in range(x.shape[1])]
        x = functools.reduce(jnp.maximum, per_level)
        for i in (2, 3):
            x = nn.relu(_mask_conv(self.channels, self.dtype, f"mask_fcn{i}")(x))
        return x


class FusedMaskPredictor(nn.Module):
    """Fig. 4: conv3's output [K, 14, 14, C] -> mask logits [K, 28, 28, num_classes] (float32).

    FCN: `mask_fcn4` (3x3 + ReLU) -> Mask R-CNN's `MaskPredictor` (`predictor`: 2x2 deconv + ReLU,
    1x1 per-class logits). fc path: `mask_fcn4_fc` (3x3, C, + ReLU), `mask_fcn5_fc` (3x3, C / 2,
    + ReLU), `mask_fc` (fc on the (y, x, channel)-flattened 14 x 14 x C / 2 map to 28 * 28, +
    ReLU as the authors' code), reshaped to [K, 28, 28, 1] and added to every class's logits.
    """

    num_classes: int
    channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.channels < 2:
            raise ValueError(f"FusedMaskPredictor needs channels >= 2 (conv5_fc has half), got {self.channels}")
        x = x.astype(self.dtype)
        fcn = nn.relu(_mask_conv(self.channels, self.dtype, "mask_fcn4")(x))
        logits = mask_lib.MaskPredictor(self.num_classes, self.channels, dtype=self.dtype, name="predictor")(fcn)
        fc = nn.relu(_mask_conv(self.channels, self.dtype, "mask_fcn4_fc")(x))
        fc = nn.relu(_mask_conv(self.channels // 2, self.dtype, "mask_fcn5_fc")(fc))
        size = logits.shape[1]
        fc = nn.Dense(size * size, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.normal(0.01), name="mask_fc")(fc.reshape(fc.shape[0], -1))
        return logits + nn.relu(fc).astype(jnp.float32).reshape(-1, size, size, 1)


class PANet(MaskRCNN):
    """PANet on a ResNet-FPN (module docstring); attributes, stages, inputs and outputs are
    `MaskRCNN`'s. The RPN reads N2-N6 and the ROI heads N2-N5 (`features` returns the P and N
    maps); `mask_channels` is the width of every mask conv (conv5_fc: half of it)."""

    RPN_MAPS: ClassVar[tuple[str, ...]] = BOTTOM_UP_LEVELS + (BOTTOM_UP_EXTRA,)
    ROI_MAPS: ClassVar[tuple[str, ...]] = BOTTOM_UP_LEVELS

    def setup(self):
        super().setup()
        self.bottom_up = BottomUpPath(self.fpn_channels, dtype=self.dtype)

    @nn.nowrap
    def make_box_head(self) -> nn.Module:
        return AdaptiveTwoMLPHead(self.representation_size, dtype=self.dtype)

    @nn.nowrap
    def make_mask_head(self) -> nn.Module:
        return AdaptiveMaskHead(self.mask_channels, dtype=self.dtype)

    @nn.nowrap
    def make_mask_predictor(self) -> nn.Module:
        return FusedMaskPredictor(self.num_classes, self.mask_channels, dtype=self.dtype)

    @nn.nowrap
    def roi_pooler(self) -> Callable[..., jax.Array]:
        """Every box from every level N2-N5: [K, 4, s, s, C] (`adaptive_roi_align_table`)."""
        return functools.partial(adaptive_roi_align_table, scales=ROI_SCALES)

    def features(self, images: jax.Array) -> dict[str, jax.Array]:
        """FPN maps `p2..p6` and the bottom-up path's `n2..n6` of the padded images."""
        pyramid = super().features(images)
        return {**pyramid, **self.bottom_up(pyramid)}


def _variant(name: str, depth: int, paper: str, **sizes: int):
    """Registers `functools.partial(PANet, depth=depth, **sizes)` (as Mask R-CNN's variants)."""
    doc = f"PANet, ResNet-{depth}-FPN ({sizes or 'paper sizes: FPN 256, fc 1024, mask convs 256'}); {paper}"
    factory = module_variant(PANet, hidden=("depth", "anchor_sizes", "aspect_ratios", "size_divisible"),
                             doc=doc, depth=depth, **sizes)
    return register(name, output="detections")(factory)


panet_resnet50_fpn = _variant(
    "panet_resnet50_fpn", 50, "paper (README of the authors' repository, COCO 2017 val, 2x, multi-scale "
    "training): 42.1 box AP / 37.8 mask AP; the authors' PyTorch re-implementation 43.1 / 38.3.")
# A CPU-sized variant, the sizes of maskrcnn_resnet18_fpn: ResNet-18 at half width, narrow FPN and heads.
panet_resnet18_fpn = _variant("panet_resnet18_fpn", 18, "CPU-sized (not in the paper).", backbone_width=32,
                              fpn_channels=64, representation_size=256, mask_channels=64)

__all__ = ["AdaptiveMaskHead", "AdaptiveTwoMLPHead", "BOTTOM_UP_EXTRA", "BOTTOM_UP_LEVELS", "BottomUpPath",
           "FusedMaskPredictor", "PANet", "adaptive_roi_align_table", "panet_resnet18_fpn", "panet_resnet50_fpn"]
