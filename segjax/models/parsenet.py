"""ParseNet (Liu, Rabinovich & Berg, 2015, "ParseNet: Looking Wider to See Better").

An FCN whose classifier sees, at every position, the local feature *and* the image's global
feature (the paper's Fig. 1e, "context module"):

1. global average pooling of the feature map `x` [N, h, w, C] -> [N, 1, 1, C];
2. L2 normalisation per position over channels of both the local map and the pooled vector, each
   followed by a learned per-channel scale (`segjax.models.layers.L2Normalize`, the authors'
   Caffe `Normalize` layer; scale initialised to 10, ParseNet's value for fc7-sized features);
3. "unpool": the global vector broadcast to every position, concatenated to the local features
   [N, h, w, 2C];
4. the classifier (1x1 conv `score`) on the concatenation, then fixed bilinear upsampling to the
   image (`segjax.models.fcn.upsample`, exact factor = output stride, then a crop).

`context=False` is the paper's baseline: the same network with the 1x1 classifier directly on the
un-normalised map (no pooling, no normalisation).

- `parsenet_vgg16` (`ParseNetVGG16`): the module on fc7 of segjax's ceil-mode VGG-16. Defaults
  follow the reduced VGG-16 of DeepLab-LargeFOV that ParseNet's VOC 2012 model is built on:
  output stride 8, fc6 a 3x3 conv of 1024 channels at dilation 12 (scaled like DeepLab v1's with
  the output stride), fc7 1x1 1024. `fc6_kernel=7, fc_dim=4096, output_stride=32` is the FCN-32s
  form. Reported: 69.8% mIoU on VOC 2012 test with the context module (also what public
  benchmark indexes list for the paper) against 67.0% for the same network without it (the
  baseline as cited in segjax issue 27's brief; not re-read from the paper here).
- `parsenet_resnet18` (`ParseNetResNet`, any `depth`): the module on layer4 of a dilated ResNet
  (output stride 8), composed like segjax's other ResNet segmenters (`resnet_segmenter`: logits
  bilinearly resized to the image, optional FCN aux head on layer3). Not in the paper: the
  CPU-sized variant (with a small `backbone_width`) for the synthetic-shapes preset.

Global pooling averages over every cell of the map, so padding inside a padded evaluation batch
enters the global feature (as DeepLab v3's image pooling); the ceil-mode VGG map itself has no
padded cells.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet
from segjax.models.backbones.vgg import VGG16
from segjax.models.compose import resnet_segmenter
from segjax.models.fcn import upsample
from segjax.models.layers import L2Normalize, check_images
from segjax.models.outputs import LOGITS
from segjax.models.registry import register

_OUTPUT_STRIDES = (8, 16, 32)
PARSENET_SCALE_INIT = 10.0  # ParseNet's initial L2-normalisation scale for fc7 and its global feature


class ParseNetContextHead(nn.Module):
    """Global context module + 1x1 classifier: [N, h, w, C] -> class scores [N, h, w, K].

    Attributes:
      num_classes: K.
      context: add the pooled, normalised global feature (False: the baseline, a 1x1 classifier
        on the raw map).
      scale_init: initial scale of both L2 normalisations.
      dtype: compute dtype (the pooling and the norms accumulate in float32).

    Children: `local_norm`, `global_norm` (`L2Normalize`, with `context`) and `score` (1x1 conv).
    """

    num_classes: int
    context: bool = True
    scale_init: float = PARSENET_SCALE_INIT
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.context:
            pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
            local = L2Normalize(self.scale_init, name="local_norm")(x)
            pooled = L2Normalize(self.scale_init, name="global_norm")(pooled)
            x = jnp.concatenate([local, jnp.broadcast_to(pooled, local.shape)], axis=-1)
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                       name="score")(x)


class ParseNetVGG16(nn.Module):
    """ParseNet on VGG-16 (see the module docstring).

    Attributes:
      num_classes: output classes.
      output_stride: 8 (default), 16 or 32: stride of fc7.
      fc6_kernel: odd kernel of fc6 (3, LargeFOV; 7 for the FCN form).
      fc6_dilation: dilation of fc6; None: 12 * 8 / output_stride for a 3x3 fc6, else 1.
      fc_dim: channels of fc6 and fc7 (1024).
      context: the global context module (False: the paper's baseline).
      scale_init: initial L2-normalisation scale (10).
      backbone_width, dropout_rate: VGG-16's stage-1 width and fc dropout (64, 0.5).
      dtype, axis_name, in_channels: the model contract's.

    Children: `backbone` (VGG16), `classifier` (`ParseNetContextHead`).
    """

    num_classes: int
    output_stride: int = 8
    fc6_kernel: int = 3
    fc6_dilation: int | None = None
    fc_dim: int = 1024
    context: bool = True
    scale_init: float = PARSENET_SCALE_INIT
    backbone_width: int = 64
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    def _backbone(self, **kwargs: Any) -> VGG16:
        if self.fc6_dilation is not None:
            dilation = self.fc6_dilation
        else:
            dilation = max(1, 12 * 8 // self.output_stride) if self.fc6_kernel == 3 else 1
        return VGG16(output_stride=self.output_stride, fc6_kernel=self.fc6_kernel, fc6_dilation=dilation,
                     fc_dim=self.fc_dim, dropout_rate=self.dropout_rate, width=self.backbone_width,
                     dtype=self.dtype, axis_name=self.axis_name, in_channels=self.in_channels, **kwargs)

    def validate(self) -> None:
        """Raises ValueError naming an unsupported output stride, fc6 kernel, width or scale."""
        if self.output_stride not in _OUTPUT_STRIDES:
            raise ValueError(f"output_stride={self.output_stride!r} is not supported; allowed: {_OUTPUT_STRIDES}")
        if not self.scale_init > 0:
            raise ValueError(f"scale_init must be > 0, got {self.scale_init!r}")
        self._backbone(parent=None).validate()

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        self.validate()
        check_images(images, self.in_channels, "parsenet_vgg16")
        fc7 = self._backbone(name="backbone")(images, train)["fc7"]
        scores = ParseNetContextHead(self.num_classes, self.context, self.scale_init, dtype=self.dtype,
                                     name="classifier")(fc7)
        logits = upsample(scores.astype(jnp.float32), self.output_stride, images.shape[1:3], learnable=False,
                          dtype=jnp.float32, name="upsample")
        return {LOGITS: logits}


class ParseNetResNet(nn.Module):
    """ParseNet's context module on layer4 of a dilated ResNet (see the module docstring).

    Attributes:
      num_classes, depth, output_stride (8), aux_loss (FCN head on layer3), backbone_width: as
        `segjax.models.fcn.FCNResNet`.
      context, scale_init: as `ParseNetVGG16`.
      dtype, axis_name, in_channels: the model contract's.
    """

    num_classes: int
    depth: int = 50
    output_stride: int = 8
    aux_loss: bool = False
    context: bool = True
    scale_init: float = PARSENET_SCALE_INIT
    backbone_width: int = 64
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    def validate(self) -> None:
        """Raises ValueError naming an unsupported depth, output stride, width or scale."""
        if not self.scale_init > 0:
            raise ValueError(f"scale_init must be > 0, got {self.scale_init!r}")
        ResNet(depth=self.depth, output_stride=self.output_stride, width=self.backbone_width, parent=None).validate()

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        def head(feats, train):
            del train
            return ParseNetContextHead(self.num_classes, self.context, self.scale_init, dtype=self.dtype,
                                       name="classifier")(feats["layer4"])

        return resnet_segmenter(self, images, train, head, depth=self.depth, label=f"parsenet_resnet{self.depth}")


@register("parsenet_vgg16")
def parsenet_vgg16(
    *, num_classes: int, output_stride: int = 8, fc6_kernel: int = 3, fc6_dilation: int | None = None,
    fc_dim: int = 1024, context: bool = True, scale_init: float = PARSENET_SCALE_INIT, backbone_width: int = 64,
    dropout_rate: float = 0.5, dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
) -> ParseNetVGG16:
    """ParseNet on VGG-16 (LargeFOV-reduced fc6/fc7 at OS 8): global context module on fc7."""
    model = ParseNetVGG16(
        num_classes=num_classes, output_stride=output_stride, fc6_kernel=fc6_kernel, fc6_dilation=fc6_dilation,
        fc_dim=fc_dim, context=context, scale_init=scale_init, backbone_width=backbone_width,
        dropout_rate=dropout_rate, dtype=dtype, axis_name=axis_name, in_channels=in_channels,
    )
    model.validate()  # fail in create_model, not at the first init
    return model


def _parsenet_resnet_factory(depth: int):
    def factory(
        *, num_classes: int, output_stride: int = 8, aux_loss: bool = False, context: bool = True,
        scale_init: float = PARSENET_SCALE_INIT, backbone_width: int = 64, dtype: Any = jnp.float32,
        axis_name: str | None = None, in_channels: int = 3,
    ) -> ParseNetResNet:
        model = ParseNetResNet(
            num_classes=num_classes, depth=depth, output_stride=output_stride, aux_loss=aux_loss, context=context,
            scale_init=scale_init, backbone_width=backbone_width, dtype=dtype, axis_name=axis_name,
            in_channels=in_channels,
        )
        model.validate()
        return model

    factory.__doc__ = f"ParseNet's context module on a dilated ResNet-{depth} (OS 8)."
    return factory


# Only the CPU-sized ResNet variant is registered: deeper ones differ in block count alone, and each
# registered dense model costs the registry sweep (tests/models/test_registry.py) a compile.
parsenet_resnet18 = register("parsenet_resnet18")(_parsenet_resnet_factory(18))
