"""DeepLab v1 (VGG-16), v2, v3 and v3+ (ResNet), registered in `segjax.models.registry`.

- `deeplabv1_vgg16`: VGG-16 (`backbone`, ceil-mode pools) at output stride 8 with fc6 a 3x3 conv
  at dilation 12 and 1024 channels ("DeepLab-LargeFOV"), fc7 1x1 1024 (dropout 0.5 after each),
  then a 1x1 classifier `classifier` (weights N(0, 0.01), as the paper). fc6's dilation scales
  with the output stride like the ASPP rates (6 at OS 16, 3 at OS 32) unless passed.
- `deeplabv2_resnet101`: ResNet-101 at output stride 8 and the v2 ASPP (the sum of 3x3 atrous
  classifiers at rates 6, 12, 18, 24).
- `deeplabv3_resnet{18,50,101}`: torchvision's layout — `backbone` (ResNet, output stride 8),
  `classifier` (ASPP at rates 12, 24, 36 with image pooling + 3x3 conv + 1x1 classifier) and, with
  `aux_loss=True`, `aux_classifier` (FCNHead on layer3). Parameter-for-parameter torchvision's
  `deeplabv3_resnet50/101`, so `segjax.models.torchvision_import` converts its weights.
- `deeplabv3plus_resnet{18,50,101}`: output stride 16, ASPP rates 6, 12, 18, the v3+ decoder on
  layer1 (stride 4); optional depthwise-separable decoder/ASPP convs (`separable`).

Atrous rates and output stride: the rates are given for a reference output stride (8 for v2 and
v3, 16 for v3+). When `atrous_rates` is not passed and `output_stride` differs, they scale like
the effective field of view, `rate * reference / output_stride` (floored, at least 1): v3 at OS 16
uses 6, 12, 18; v3+ at OS 8 uses 12, 24, 36. Rates passed explicitly are used as given.

All models return `{LOGITS: [N, H, W, num_classes]}` (+ `AUX_LOGITS`), bilinearly resized
(align_corners=False) from the head's resolution to the input's.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet
from segjax.models.backbones.vgg import VGG16
from segjax.models.compose import resnet_segmenter
from segjax.models.heads import DeepLabV2ASPP, DeepLabV3Head, DeepLabV3PlusHead
from segjax.models.layers import check_images
from segjax.models.outputs import LOGITS
from segjax.models.registry import register
from segjax.ops import resize

# version -> (reference output stride, atrous rates at that stride)
_DEFAULT_RATES = {"v2": (8, (6, 12, 18, 24)), "v3": (8, (12, 24, 36)), "v3plus": (16, (6, 12, 18))}
_OUTPUT_STRIDES = (8, 16, 32)


def default_atrous_rates(version: str, output_stride: int) -> tuple[int, ...]:
    """The DeepLab `version`'s ("v2", "v3", "v3plus") rates scaled to `output_stride`."""
    reference, rates = _DEFAULT_RATES[version]
    return tuple(max(1, r * reference // output_stride) for r in rates)


class DeepLab(nn.Module):
    """DeepLab v2 / v3 / v3+ on a ResNet backbone (see the module docstring).

    Attributes:
      num_classes: output classes.
      version: "v2", "v3" or "v3plus".
      backbone_depth: ResNet depth (18, 34, 50, 101, 152).
      output_stride: 8, 16 or 32.
      multi_grid: unit rates of layer4's blocks (e.g. (1, 2, 4)) or None (torchvision).
      atrous_rates: ASPP rates; None: the version's defaults scaled to `output_stride`.
      image_pooling: ASPP image-pooling branch (v3, v3+).
      aux_loss: add `aux_classifier` (FCNHead on layer3) and return AUX_LOGITS.
      separable: depthwise-separable 3x3 convs in the v3+ ASPP and decoder.
      backbone_width: ResNet stem width (64 = torchvision; smaller for CPU demos).
      head_channels: ASPP/decoder channels (256 in the papers).
      dtype, axis_name, in_channels: the model contract's.
    """

    num_classes: int
    version: str = "v3"
    backbone_depth: int = 50
    output_stride: int = 8
    multi_grid: Sequence[int] | None = None
    atrous_rates: Sequence[int] | None = None
    image_pooling: bool = True
    aux_loss: bool = False
    separable: bool = False
    backbone_width: int = 64
    head_channels: int = 256
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    def rates(self) -> tuple[int, ...]:
        """The ASPP rates used (explicit `atrous_rates` or the scaled defaults)."""
        if self.version not in _DEFAULT_RATES:
            raise ValueError(f"DeepLab version={self.version!r} is not supported; allowed: {sorted(_DEFAULT_RATES)}")
        if self.output_stride not in _OUTPUT_STRIDES:
            raise ValueError(f"output_stride={self.output_stride!r} is not supported; allowed: {_OUTPUT_STRIDES}")
        if self.atrous_rates is None:
            return default_atrous_rates(self.version, self.output_stride)
        rates = tuple(self.atrous_rates)
        if not rates or any(not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f"atrous_rates={self.atrous_rates!r} must be a non-empty sequence of positive ints")
        return rates

    def validate(self) -> None:
        """Raises ValueError naming an unsupported version, output stride, rates or backbone option."""
        self.rates()
        if not isinstance(self.head_channels, int) or self.head_channels < 1:
            raise ValueError(f"head_channels must be a positive int, got {self.head_channels!r}")
        ResNet(depth=self.backbone_depth, output_stride=self.output_stride, multi_grid=self.multi_grid,
               width=self.backbone_width, parent=None).validate()

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        rates = self.rates()
        kw = dict(dtype=self.dtype, axis_name=self.axis_name)

        def head(feats, train):
            if self.version == "v2":
                return DeepLabV2ASPP(self.num_classes, rates, dtype=self.dtype,
                                     name="classifier")(feats["layer4"])
            if self.version == "v3":
                return DeepLabV3Head(self.num_classes, rates, self.image_pooling,
                                     self.head_channels, name="classifier", **kw)(
                    feats["layer4"], train)
            return DeepLabV3PlusHead(self.num_classes, rates, self.image_pooling,
                                     self.head_channels, separable=self.separable,
                                     name="classifier", **kw)(feats["layer4"], feats["layer1"], train)

        return resnet_segmenter(self, images, train, head, depth=self.backbone_depth,
                                multi_grid=self.multi_grid,
                                label=f"deeplab{self.version}_resnet{self.backbone_depth}")


class DeepLabV1(nn.Module):
    """DeepLab v1 LargeFOV on VGG-16 (see the module docstring).

    Attributes:
      num_classes: output classes.
      output_stride: 8 (paper), 16 or 32.
      fc6_dilation: dilation of the 3x3 fc6; None: 12 * 8 / output_stride.
      fc_dim: channels of fc6/fc7 (1024).
      backbone_width: VGG stage-1 channels (64 = VGG-16).
      dtype, axis_name, in_channels: the model contract's.
    """

    num_classes: int
    output_stride: int = 8
    fc6_dilation: int | None = None
    fc_dim: int = 1024
    backbone_width: int = 64
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if self.output_stride not in _OUTPUT_STRIDES:
            raise ValueError(f"output_stride={self.output_stride!r} is not supported; allowed: {_OUTPUT_STRIDES}")
        check_images(images, self.in_channels, "deeplabv1_vgg16")
        dilation = self.fc6_dilation or max(1, 12 * 8 // self.output_stride)
        feats = VGG16(
            output_stride=self.output_stride, fc6_kernel=3, fc6_dilation=dilation, fc_dim=self.fc_dim,
            width=self.backbone_width, dtype=self.dtype, axis_name=self.axis_name,
            in_channels=self.in_channels, name="backbone",
        )(images, train)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                         kernel_init=nn.initializers.normal(0.01), name="classifier")(feats["fc7"])
        return {LOGITS: resize(logits.astype(jnp.float32), images.shape[1:3])}


@register("deeplabv1_vgg16")
def deeplabv1_vgg16(
    *, num_classes: int, output_stride: int = 8, fc6_dilation: int | None = None, fc_dim: int = 1024,
    backbone_width: int = 64, dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
) -> DeepLabV1:
    """DeepLab v1 LargeFOV: VGG-16 at OS 8, fc6 3x3 dilation 12 (1024), fc7 1x1 (1024), 1x1 classifier."""
    if output_stride not in _OUTPUT_STRIDES:
        raise ValueError(f"output_stride={output_stride!r} is not supported; allowed: {_OUTPUT_STRIDES}")
    return DeepLabV1(
        num_classes=num_classes, output_stride=output_stride, fc6_dilation=fc6_dilation, fc_dim=fc_dim,
        backbone_width=backbone_width, dtype=dtype, axis_name=axis_name, in_channels=in_channels,
    )


def _build(version: str, depth: int, *, multi_grid, atrous_rates, **kwargs) -> DeepLab:
    model = DeepLab(
        version=version, backbone_depth=depth,
        multi_grid=None if multi_grid is None else tuple(multi_grid),
        atrous_rates=None if atrous_rates is None else tuple(atrous_rates), **kwargs,
    )
    model.validate()  # fail in create_model, not at the first init
    return model


def _v2_factory(depth: int):
    def factory(
        *, num_classes: int, output_stride: int = 8, multi_grid: Sequence[int] | None = None,
        atrous_rates: Sequence[int] | None = None, aux_loss: bool = False, backbone_width: int = 64,
        dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
    ) -> DeepLab:
        return _build(
            "v2", depth, num_classes=num_classes, output_stride=output_stride, multi_grid=multi_grid,
            atrous_rates=atrous_rates, aux_loss=aux_loss, backbone_width=backbone_width,
            dtype=dtype, axis_name=axis_name, in_channels=in_channels,
        )

    factory.__doc__ = f"DeepLab v2 on ResNet-{depth}: OS 8, ASPP = sum of atrous classifiers at 6, 12, 18, 24."
    return factory


def _v3_factory(depth: int):
    def factory(
        *, num_classes: int, output_stride: int = 8, multi_grid: Sequence[int] | None = None,
        atrous_rates: Sequence[int] | None = None, image_pooling: bool = True, aux_loss: bool = False,
        backbone_width: int = 64, head_channels: int = 256, dtype: Any = jnp.float32,
        axis_name: str | None = None, in_channels: int = 3,
    ) -> DeepLab:
        return _build(
            "v3", depth, num_classes=num_classes, output_stride=output_stride, multi_grid=multi_grid,
            atrous_rates=atrous_rates, image_pooling=image_pooling, aux_loss=aux_loss,
            backbone_width=backbone_width, head_channels=head_channels, dtype=dtype,
            axis_name=axis_name, in_channels=in_channels,
        )

    factory.__doc__ = f"DeepLab v3 on ResNet-{depth} (torchvision layout): OS 8, ASPP rates 12, 24, 36."
    return factory


def _v3plus_factory(depth: int):
    def factory(
        *, num_classes: int, output_stride: int = 16, multi_grid: Sequence[int] | None = None,
        atrous_rates: Sequence[int] | None = None, image_pooling: bool = True, aux_loss: bool = False,
        separable: bool = False, backbone_width: int = 64, head_channels: int = 256,
        dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
    ) -> DeepLab:
        return _build(
            "v3plus", depth, num_classes=num_classes, output_stride=output_stride, multi_grid=multi_grid,
            atrous_rates=atrous_rates, image_pooling=image_pooling, aux_loss=aux_loss,
            separable=separable, backbone_width=backbone_width, head_channels=head_channels,
            dtype=dtype, axis_name=axis_name, in_channels=in_channels,
        )

    factory.__doc__ = f"DeepLab v3+ on ResNet-{depth}: OS 16, ASPP rates 6, 12, 18, decoder on layer1."
    return factory


deeplabv2_resnet101 = register("deeplabv2_resnet101")(_v2_factory(101))
deeplabv3_resnet18 = register("deeplabv3_resnet18")(_v3_factory(18))
deeplabv3_resnet50 = register("deeplabv3_resnet50")(_v3_factory(50))
deeplabv3_resnet101 = register("deeplabv3_resnet101")(_v3_factory(101))
deeplabv3plus_resnet18 = register("deeplabv3plus_resnet18")(_v3plus_factory(18))
deeplabv3plus_resnet50 = register("deeplabv3plus_resnet50")(_v3plus_factory(50))
deeplabv3plus_resnet101 = register("deeplabv3plus_resnet101")(_v3plus_factory(101))
