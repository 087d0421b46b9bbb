"""Fully convolutional networks (Long, Shelhamer & Darrell, 2015) on VGG-16 and ResNet.

FCN-32s/16s/8s on VGG-16 (`FCNVGG16`): `score_fr` (1x1 conv) scores fc7; FCN-16s adds the
score of pool4 (`score_pool4`, 1x1, zero-initialised as in the paper) to the 2x upsampled fc7
score, FCN-8s then adds pool3's (`score_pool3`); the fused stride-32/16/8 score map is
upsampled to the image. Every upsampling by a factor f is a transposed convolution with kernel
2f, stride f and padding f/2 (`segjax.models.layers.ConvTranspose`, no bias, initialised to
bilinear interpolation and learnable), or with `learnable_upsampling=False` a fixed bilinear
`segjax.ops.resize` by exactly f.

Alignment (instead of the paper's pad-100 input and crop offsets): the backbone's 2x2 pools are
in ceil mode, so cell i of a stride-s map covers input pixels [s*i, s*i + s) and a map has
ceil(H / s) rows. Upsampling by f maps h rows to exactly f*h rows on the same grid (bilinear
with half-pixel centres, torch's `align_corners=False`), which is at least as large as the finer
map (ceil(H / s') <= f * ceil(H / (f * s'))); the result is cropped at the bottom/right to the
finer map's (or the image's) size. So any H, W >= 1 works and no padding is ever scored.

FCN on ResNet (`FCNResNet`, torchvision's layout): `backbone` (ResNet at output stride 8),
`classifier` = FCNHead on layer4, `aux_classifier` = FCNHead on layer3 when `aux_loss`; logits
bilinearly resized to the image (`align_corners=False`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax import ops
from segjax.models.backbones.resnet import ResNet
from segjax.models.backbones.vgg import VGG16
from segjax.models.compose import resnet_segmenter
from segjax.models.heads import FCNHead
from segjax.models.layers import ConvTranspose, bilinear_init, check_images
from segjax.models.outputs import LOGITS
from segjax.models.registry import register

_FINAL_STRIDES = (32, 16, 8)


def upsample(
    x: jax.Array, factor: int, size: tuple[int, int], *, learnable: bool, dtype: Any, name: str
) -> jax.Array:
    """Upsamples `x` [N, h, w, C] by `factor` to [N, f*h, f*w, C], then crops to `size` (<= f*h, f*w).

    `learnable`: a bilinear-initialised transposed conv (kernel 2f, stride f, padding f/2) named
    `name`, a child of the calling compact module; else fixed bilinear `ops.resize`.
    """
    _, h, w, c = x.shape
    if size[0] > factor * h or size[1] > factor * w:
        raise ValueError(f"cannot upsample {x.shape} by {factor} to cover {size}")
    if factor == 1:
        return x[:, : size[0], : size[1]]
    if learnable:
        x = ConvTranspose(
            c, (2 * factor, 2 * factor), stride=factor, padding=factor // 2, use_bias=False,
            dtype=dtype, kernel_init=bilinear_init(factor), name=name,
        )(x)
    else:
        x = ops.resize(x, (factor * h, factor * w), "bilinear", align_corners=False)
    return x[:, : size[0], : size[1]]


class FCNVGG16(nn.Module):
    """FCN-32s / 16s / 8s on VGG-16 (see the module docstring).

    Attributes:
      num_classes: output classes.
      final_stride: 32 (FCN-32s), 16 (FCN-16s, + pool4) or 8 (FCN-8s, + pool4 and pool3).
      learnable_upsampling: transposed convs initialised to bilinear (True) or fixed bilinear resize.
      backbone_width, fc_dim, dropout_rate: VGG-16's width, fc6/fc7 channels and dropout (64, 4096, 0.5;
        smaller for tiny models).
      dtype: compute dtype; logits are float32.
      axis_name: pmap axis (unused: VGG-16 here has no BatchNorm; kept for the model contract).
      in_channels: channels of the input images.

    Children: `backbone` (VGG16), `score_fr`, `score_pool4`, `score_pool3` (1x1 convs),
    `upscore2` (fc7 x2), `upscore_pool4` (x2 after the pool4 fusion), `upscore_final`.
    """

    num_classes: int
    final_stride: int = 8
    learnable_upsampling: bool = True
    backbone_width: int = 64
    fc_dim: int = 4096
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    def _backbone(self, **kwargs: Any) -> VGG16:
        return VGG16(width=self.backbone_width, fc_dim=self.fc_dim, dropout_rate=self.dropout_rate, dtype=self.dtype,
                     axis_name=self.axis_name, in_channels=self.in_channels, **kwargs)

    def validate(self) -> None:
        """Raises ValueError naming an unsupported final stride or backbone option."""
        if self.final_stride not in _FINAL_STRIDES:
            raise ValueError(f"final_stride={self.final_stride!r} is not supported; allowed: {_FINAL_STRIDES}")
        self._backbone(parent=None).validate()

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        self.validate()
        check_images(images, self.in_channels, f"fcn{self.final_stride}s_vgg16")
        feats = self._backbone(name="backbone")(images, train)

        def score(name: str, x: jax.Array, zero: bool) -> jax.Array:
            init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
            return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                           kernel_init=init, name=name)(x)

        up = functools.partial(upsample, learnable=self.learnable_upsampling, dtype=self.dtype)
        x = score("score_fr", feats["fc7"], zero=False)
        for pool, stride, up_name in (("pool4", 16, "upscore2"), ("pool3", 8, "upscore_pool4")):
            if stride < self.final_stride:
                break
            skip = feats[pool]
            x = up(x, 2, skip.shape[1:3], name=up_name) + score(f"score_{pool}", skip, zero=True)
        x = up(x, self.final_stride, images.shape[1:3], name="upscore_final")
        return {LOGITS: x.astype(jnp.float32)}


class FCNResNet(nn.Module):
    """torchvision's FCN on a dilated ResNet (see the module docstring).

    Attributes:
      num_classes: output classes.
      depth: ResNet depth (18, 50, 101, ...).
      output_stride: 8 (torchvision), 16 or 32.
      aux_loss: add `aux_classifier` (FCNHead on layer3) and return AUX_LOGITS.
      backbone_width: ResNet stem width (64 = torchvision).
      dtype, axis_name, in_channels: the model contract's.
    """

    num_classes: int
    depth: int = 50
    output_stride: int = 8
    aux_loss: bool = False
    backbone_width: int = 64
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    def _backbone(self, **kwargs: Any) -> ResNet:
        return ResNet(depth=self.depth, output_stride=self.output_stride, width=self.backbone_width, dtype=self.dtype,
                      axis_name=self.axis_name, in_channels=self.in_channels, **kwargs)

    def validate(self) -> None:
        """Raises ValueError naming an unsupported depth, output stride or width."""
        self._backbone(parent=None).validate()

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        def head(feats, train):
            return FCNHead(self.num_classes, dtype=self.dtype, axis_name=self.axis_name,
                           name="classifier")(feats["layer4"], train)

        return resnet_segmenter(self, images, train, head, depth=self.depth,
                                label=f"fcn_resnet{self.depth}")


def _fcn_vgg16_factory(final_stride: int):
    def factory(
        *, num_classes: int, learnable_upsampling: bool = True, backbone_width: int = 64, fc_dim: int = 4096,
        dropout_rate: float = 0.5, dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
    ) -> FCNVGG16:
        model = FCNVGG16(
            num_classes=num_classes, final_stride=final_stride, learnable_upsampling=learnable_upsampling,
            backbone_width=backbone_width, fc_dim=fc_dim, dropout_rate=dropout_rate, dtype=dtype,
            axis_name=axis_name, in_channels=in_channels,
        )
        model.validate()  # fail in create_model, not at the first init
        return model

    factory.__doc__ = f"FCN-{final_stride}s on VGG-16 (`FCNVGG16(final_stride={final_stride})`)."
    return factory


fcn32s_vgg16 = register("fcn32s_vgg16")(_fcn_vgg16_factory(32))
fcn16s_vgg16 = register("fcn16s_vgg16")(_fcn_vgg16_factory(16))
fcn8s_vgg16 = register("fcn8s_vgg16")(_fcn_vgg16_factory(8))


def _fcn_resnet_factory(depth: int):
    def factory(
        *, num_classes: int, output_stride: int = 8, aux_loss: bool = False, backbone_width: int = 64,
        dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
    ) -> FCNResNet:
        model = FCNResNet(
            num_classes=num_classes, depth=depth, output_stride=output_stride, aux_loss=aux_loss,
            backbone_width=backbone_width, dtype=dtype, axis_name=axis_name, in_channels=in_channels,
        )
        model.validate()
        return model

    factory.__doc__ = f"torchvision's fcn_resnet{depth} (`FCNResNet(depth={depth})`)."
    return factory


fcn_resnet18 = register("fcn_resnet18")(_fcn_resnet_factory(18))
fcn_resnet50 = register("fcn_resnet50")(_fcn_resnet_factory(50))
fcn_resnet101 = register("fcn_resnet101")(_fcn_resnet_factory(101))
