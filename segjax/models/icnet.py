"""ICNet (Zhao, Qi, Shen, Shi, Jia, "ICNet for Real-Time Semantic Segmentation on
High-Resolution Images", ECCV 2018), registered as `icnet_resnet50` and `icnet_resnet18`.

The image cascade (paper Sec. 3.2, Fig. 2) runs three branches:

* low resolution (1/4 image): the dilated ResNet's layer3 and layer4 (output stride 8 inside the
  branch, torchvision's dilation scheme) and the pyramid pooling module of PSPNet
  (`PyramidPoolingHead` with `num_classes=None`: bins 1, 2, 3, 6 and a 3x3 fusion conv to
  `head_channels`, 256 as the paper's `conv5_4_k1`) -> 1/32 of the image;
* medium resolution (1/2 image): the same ResNet's stem, layer1 and layer2 (weights shared with
  the low branch) -> 1/16. As in the authors' Caffe release and mmsegmentation, the low branch
  starts from this branch's layer2 map resized by 1/2 (bilinear) rather than running the
  shared stages again on a 1/4 image;
* high resolution (full image): three 3x3 stride-2 conv-BN-ReLU (`branch_channels`, 32, 32, 64)
  -> 1/8.

Cascade feature fusion (Sec. 3.3, Fig. 3), `CascadeFeatureFusion`: the low-resolution map F1 is
upsampled x2 (bilinear, to the higher map's size) and passed through a 3x3 conv of dilation 2 +
BN; the high-resolution map F2 through a 1x1 conv + BN (both `fusion_channels` = 128); their sum
goes through ReLU. Cascade label guidance (Sec. 3.4): a 1x1 classifier on the upsampled F1.
CFF(1/32, 1/16) -> 1/16 and CFF(1/16, 1/8) -> 1/8; the 1/8 map is upsampled x2 and classified
(`cls`, computed at 1/8 and resized: a 1x1 conv commutes with bilinear resizing) and the 1/4
logits are resized bilinearly to the input size: the paper's x4 upsampling at test time when 8
divides H and W, and one interpolation (not x4, then another) otherwise.

Outputs: `"logits"` [N, H, W, K]; with `aux_loss` `"aux_logits"`: a tuple of the two guidance
heads' logits (at 1/16 and at 1/8), each resized to the input size. The paper's loss weights the
1/16, 1/8 and 1/4 heads 0.4, 0.4 and 1 (Eq. 2), which the semantic task gives with
`loss.aux_weight = 0.4` on each element of the tuple. The paper computes the guidance losses
against labels downsampled to each head's size; segjax's task compares every head at the input
resolution.

Differences from the paper (whose PSPNet50 backbone is the authors' Caffe ResNet): segjax's
ResNet is torchvision's (7x7 stem, max pooling without ceil mode), and the pyramid pooling module
is PSPNet's (1x1 conv-BN-ReLU per bin, concatenation, 3x3 fusion conv) where ICNet's release sums
the pooled maps without convolutions; the paper also prunes the kernels of its backbone by half
(Sec. 3.5), which this model does not.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet
from segjax.models.heads import PyramidPoolingHead
from segjax.models.layers import check_images, square_conv
from segjax.models.norm import BatchNorm
from segjax.models.outputs import AUX_LOGITS, LOGITS
from segjax.models.registry import register
from segjax.ops import resize


def _ceil_half(size: Sequence[int]) -> tuple[int, int]:
    """The 1/2 size of an odd or even map (Caffe's Interp with shrink_factor 2)."""
    return tuple(-(-int(s) // 2) for s in size)


class ConvBN(nn.Module):
    """A square conv (no bias, torch padding) -> BN, and ReLU if `relu`; children `conv`, `bn`."""

    features: int
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    relu: bool = True
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = square_conv(self.features, self.kernel, stride=self.stride, dilation=self.dilation,
                        dtype=self.dtype, name="conv")(x)
        x = BatchNorm(not train, self.axis_name, dtype=self.dtype, name="bn")(x)
        return nn.relu(x) if self.relu else x


class CascadeFeatureFusion(nn.Module):
    """The CFF unit (paper Sec. 3.3, Fig. 3).

    `__call__(low [N, h, w, C1], high [N, h2, w2, C2], train)` -> `(fused [N, h2, w2, features],
    guide)`: `low` is bilinearly upsampled (align_corners=False) to `high`'s size (x2 in the
    cascade), `fused = relu(BN(conv3x3_dilation2(up)) + BN(conv1x1(high)))`; `guide` is the label
    guidance classifier `cls` (1x1, bias) on the upsampled `low`, float32 `[N, h2, w2,
    num_classes]`, or None when `num_classes` is None. Children `low`, `high` (`ConvBN`), `cls`.
    """

    features: int = 128
    num_classes: int | None = None
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, low: jax.Array, high: jax.Array, train: bool = False):
        kw = dict(relu=False, dtype=self.dtype, axis_name=self.axis_name)
        up = resize(low, high.shape[1:3])
        fused = nn.relu(ConvBN(self.features, 3, dilation=2, name="low", **kw)(up, train)
                        + ConvBN(self.features, 1, name="high", **kw)(high, train))
        guide = None
        if self.num_classes is not None:
            guide = square_conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="cls")(up)
            guide = guide.astype(jnp.float32)
        return fused, guide


class ICNet(nn.Module):
    """ICNet on a ResNet (see the module docstring).

    Attributes:
      num_classes: output classes.
      backbone_depth: ResNet depth (50: the paper's PSPNet50; 18: mmsegmentation's R18 variant).
      backbone_width: ResNet stem width (64 = torchvision).
      bins: pyramid pooling bin sizes (1, 2, 3, 6).
      head_channels: channels of the pyramid pooling module's fusion conv (256).
      branch_channels: channels of the full-resolution branch's three stride-2 convs (32, 32, 64).
      fusion_channels: channels of the CFF units (128).
      aux_loss: add the two label guidance classifiers and return AUX_LOGITS (a tuple).
      dtype, axis_name, in_channels: the model contract's.
    """

    num_classes: int
    backbone_depth: int = 50
    backbone_width: int = 64
    bins: Sequence[int] = (1, 2, 3, 6)
    head_channels: int = 256
    branch_channels: Sequence[int] = (32, 32, 64)
    fusion_channels: int = 128
    aux_loss: bool = True
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, Any]:
        check_images(images, self.in_channels, f"icnet_resnet{self.backbone_depth}")
        kw = dict(dtype=self.dtype, axis_name=self.axis_name)
        size = images.shape[1:3]
        x = images.astype(self.dtype)

        sub1 = x  # full resolution -> 1/8
        for i, c in enumerate(self.branch_channels):
            sub1 = ConvBN(c, 3, stride=2, name=f"sub1_{i}", **kw)(sub1, train)

        backbone = ResNet(depth=self.backbone_depth, output_stride=8, width=self.backbone_width,
                          in_channels=self.in_channels, name="backbone", **kw)
        half = resize(x, _ceil_half(size))
        sub2 = backbone(half, train, stop="layer2")["layer2"]  # 1/2 image -> 1/16
        quarter = resize(sub2, _ceil_half(sub2.shape[1:3]))
        sub4 = backbone(quarter, train, start="layer3")["layer4"]  # 1/4 image -> 1/32
        sub4 = PyramidPoolingHead(None, tuple(self.bins), self.head_channels, name="ppm", **kw)(sub4, train)

        guided = self.num_classes if self.aux_loss else None
        cff = lambda name: CascadeFeatureFusion(self.fusion_channels, guided, name=name, **kw)  # noqa: E731
        sub24, guide16 = cff("cff_sub24")(sub4, sub2, train)
        sub12, guide8 = cff("cff_sub12")(sub24, sub1, train)

        logits = square_conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="cls")(sub12)
        quarter = resize(logits.astype(jnp.float32), tuple(2 * s for s in sub12.shape[1:3]))
        out = {LOGITS: resize(quarter, size)}  # x4 when 8 divides H and W
        if self.aux_loss:
            out[AUX_LOGITS] = (resize(guide16, size), resize(guide8, size))
        return out


def _icnet_factory(depth: int, reported: str):
    def factory(
        *, num_classes: int, backbone_width: int = 64, bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int = 256, branch_channels: Sequence[int] = (32, 32, 64),
        fusion_channels: int = 128, aux_loss: bool = True, dtype: Any = jnp.float32,
        axis_name: str | None = None, in_channels: int = 3,
    ) -> ICNet:
        ResNet(depth=depth, output_stride=8, width=backbone_width).validate()
        for key, value in (("head_channels", head_channels), ("fusion_channels", fusion_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        branch = tuple(branch_channels)
        if len(branch) != 3 or any(not isinstance(c, int) or c < 1 for c in branch):
            raise ValueError(f"branch_channels must be 3 positive ints (three stride-2 convs to 1/8), "
                             f"got {branch_channels!r}")
        if not bins or any(not isinstance(b, int) or b < 1 for b in bins):
            raise ValueError(f"bins must be positive ints, got {bins!r}")
        return ICNet(num_classes=num_classes, backbone_depth=depth, backbone_width=backbone_width,
                     bins=tuple(bins), head_channels=head_channels, branch_channels=branch,
                     fusion_channels=fusion_channels, aux_loss=aux_loss, dtype=dtype,
                     axis_name=axis_name, in_channels=in_channels)

    factory.__doc__ = (f"ICNet on ResNet-{depth}: cascade of 1, 1/2, 1/4 inputs, CFF units of 128 "
                       f"channels, two label-guidance heads. {reported}")
    return factory


icnet_resnet50 = register("icnet_resnet50")(_icnet_factory(
    50, "The paper (PSPNet50-based, kernels pruned by half): 69.5% Cityscapes test mIoU (67.7% "
        "val in its ablations) at 30.3 fps on 1024x2048 images on a Titan X."))
icnet_resnet18 = register("icnet_resnet18")(_icnet_factory(
    18, "mmsegmentation's icnet_r18-d8_in1k-pre_832x832_160k_cityscapes: 74.43% Cityscapes val mIoU."))
