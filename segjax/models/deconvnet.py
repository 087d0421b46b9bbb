"""Encoder-decoders with pooling switches: SegNet (Badrinarayanan et al.) and DeconvNet (Noh et al.).

Both encode with VGG-16-BN (`segjax.models.backbones.vgg.VGG16(batch_norm=True)`, child
`encoder`) whose five 2x2 pools keep their argmax indices, and decode coarse-to-fine by
unpooling each stage to the size of the encoder stage it mirrors:

* SegNet: pool5 -> [unpool, 3x3 conv+BN+ReLU x (3, 3, 3, 2, 1)] per stage -> 3x3 conv to the
  classes. No fc layers; the decoder's channels mirror the encoder's (512 512 512 | 512 512 256 |
  256 256 128 | 128 64 | 64, times width/64). Names `conv{s}_{i}_D` / `bn{s}_{i}_D` (Caffe's),
  `classifier`.
* DeconvNet: the encoder keeps fc6 (7x7) and fc7 (1x1) with ReLU + dropout (here with "same"
  padding, so any input size works; the paper's 224x224 crops give a 1x1 fc7), then `deconv6`, a
  7x7 transposed conv (pad 3) back to 512 channels + BN + ReLU, then per stage [unpool,
  3x3 transposed convs (stride 1, pad 1) + BN + ReLU with the same channel pattern as SegNet's
  but two convs in stage 1], then a 1x1 conv (`score`). Names `deconv{s}_{i}` / `debn{s}_{i}`.

Unpooling (`unpooling`): "max" puts each value at its encoder argmax (the paper's switches,
`segjax.ops.max_unpool`); "nearest" and "bed_of_nails" ignore the indices (ablations). The
encoder pools in ceil mode, so stage s's pooled map has exactly half the (padded) size and
unpooling doubles it before a bottom/right crop to the encoder stage's size: any H, W >= 1 works.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax import ops
from segjax.models.backbones.vgg import VGG16, conv_relu_stack
from segjax.models.layers import ConvTranspose, check_images
from segjax.models.norm import BatchNorm
from segjax.models.outputs import LOGITS
from segjax.models.registry import register

UNPOOLING = ("max", "nearest", "bed_of_nails")
# Decoder channels per stage (multiples of width), coarsest stage first.
_DECODER = {5: (8, 8, 8), 4: (8, 8, 4), 3: (4, 4, 2), 2: (2, 1), 1: (1,)}


def unpool(x: jax.Array, feats: dict[str, jax.Array], stage: int, mode: str) -> jax.Array:
    """Unpools `x` [N, h, w, C] x2 and crops to encoder stage `stage`'s size (feats["conv{stage}"]).

    `mode` "max" scatters to `feats["pool{stage}_indices"]` (positions in the [2h, 2w] plane).
    """
    h, w = x.shape[1:3]
    if mode == "max":
        x = ops.max_unpool(x, feats[f"pool{stage}_indices"], (2 * h, 2 * w))
    elif mode == "nearest":
        x = ops.nearest_unpool(x, 2)
    else:
        x = ops.bed_of_nails_unpool(x, 2)
    target = feats[f"conv{stage}"].shape
    return x[:, : target[1], : target[2]]


class _EncoderDecoder(nn.Module):
    """Shared checks and encoder of SegNet and DeconvNet."""

    num_classes: int
    width: int = 64
    unpooling: str = "max"
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    def _encoder(self, **kwargs: Any) -> VGG16:
        return VGG16(
            batch_norm=True, width=self.width, keep_pool_indices=self.unpooling == "max", dtype=self.dtype,
            axis_name=self.axis_name, in_channels=self.in_channels, **self._encoder_options(), **kwargs,
        )

    def _encoder_options(self) -> dict[str, Any]:
        return {"include_fc": False}

    def validate(self) -> None:
        """Raises ValueError naming an unsupported unpooling or width."""
        if self.unpooling not in UNPOOLING:
            raise ValueError(f"unpooling={self.unpooling!r} is not supported; allowed: {UNPOOLING}")
        self._encoder(parent=None).validate()

    def _encode(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
        self.validate()
        check_images(images, self.in_channels, type(self).__name__)
        return self._encoder(name="encoder")(images, train)


class SegNet(_EncoderDecoder):
    """SegNet (see the module docstring). Attributes: num_classes, width (64: the paper),
    unpooling, dtype (compute; logits float32), axis_name (sync BN), in_channels."""

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        feats = self._encode(images, train)
        x = feats["pool5"]
        for stage in (5, 4, 3, 2, 1):
            x = unpool(x, feats, stage, self.unpooling)
            mults = _DECODER[stage]
            names = [f"conv{stage}_{len(mults) + (stage == 1) - i}_D" for i in range(len(mults))]
            x = conv_relu_stack(
                x, [m * self.width for m in mults], names, train=train, batch_norm=True, dtype=self.dtype,
                axis_name=self.axis_name,
            )
        x = nn.Conv(self.num_classes, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    param_dtype=jnp.float32, name="classifier")(x)
        return {LOGITS: x.astype(jnp.float32)}


class DeconvNet(_EncoderDecoder):
    """DeconvNet (see the module docstring). Attributes as SegNet's plus fc_dim (4096: the paper)
    and dropout_rate (after fc6/fc7)."""

    fc_dim: int = 4096
    dropout_rate: float = 0.5

    def _encoder_options(self) -> dict[str, Any]:
        return {"include_fc": True, "fc6_kernel": 7, "fc_dim": self.fc_dim, "dropout_rate": self.dropout_rate}

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        feats = self._encode(images, train)

        def deconv_bn_relu(x: jax.Array, features: int, kernel: int, name: str, bn_name: str) -> jax.Array:
            x = ConvTranspose(features, (kernel, kernel), stride=1, padding=kernel // 2, dtype=self.dtype, name=name)(x)
            return nn.relu(BatchNorm(not train, self.axis_name, dtype=self.dtype, name=bn_name)(x))

        x = deconv_bn_relu(feats["fc7"], 8 * self.width, 7, "deconv6", "debn6")
        for stage in (5, 4, 3, 2, 1):
            x = unpool(x, feats, stage, self.unpooling)
            mults = _DECODER[stage] + ((1,) if stage == 1 else ())
            for i, m in enumerate(mults, start=1):
                x = deconv_bn_relu(x, m * self.width, 3, f"deconv{stage}_{i}", f"debn{stage}_{i}")
        x = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="score")(x)
        return {LOGITS: x.astype(jnp.float32)}


@register("segnet")
def segnet(
    *, num_classes: int, width: int = 64, unpooling: str = "max", dtype: Any = jnp.float32,
    axis_name: str | None = None, in_channels: int = 3,
) -> SegNet:
    """SegNet (`SegNet`); `width` scales every channel count (64: the paper)."""
    model = SegNet(num_classes=num_classes, width=width, unpooling=unpooling, dtype=dtype, axis_name=axis_name,
                   in_channels=in_channels)
    model.validate()  # fail in create_model, not at the first init
    return model


@register("deconvnet")
def deconvnet(
    *, num_classes: int, width: int = 64, fc_dim: int = 4096, dropout_rate: float = 0.5, unpooling: str = "max",
    dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
) -> DeconvNet:
    """DeconvNet (`DeconvNet`); `width` scales the conv channels, `fc_dim` those of fc6/fc7."""
    model = DeconvNet(num_classes=num_classes, width=width, unpooling=unpooling, dtype=dtype, axis_name=axis_name,
                      in_channels=in_channels, fc_dim=fc_dim, dropout_rate=dropout_rate)
    model.validate()
    return model
