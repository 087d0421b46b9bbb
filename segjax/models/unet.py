"""U-Net (Ronneberger, Fischer & Brox, 2015) with padded convolutions: output size = input size.

Encoder: `depth` levels of a double 3x3 conv (pad 1) + BatchNorm + ReLU with `base_features *
2**level` channels, each followed by a 2x2 max pool (ceil mode, so odd sizes lose no pixel), then
a double conv with `base_features * 2**depth` channels at the bottom. Decoder, from the coarsest
level up: upsample x2 to `base_features * 2**level` channels, crop at the bottom/right to the skip's
size (ceil-mode pooling maps h rows to exactly 2h >= skip rows on the same grid), concatenate
`[skip, upsampled]` and apply a double conv. A final 1x1 conv scores the classes.

Upsampling (`upsampling`): "transposed" is the paper's learned 2x2 stride-2 transposed conv
(halving the channels); "bilinear" (`segjax.ops.resize`, align_corners=False), "nearest" and
"bed_of_nails" (`segjax.ops` unpoolings) upsample x2 without parameters and are followed by a 1x1
conv halving the channels, for ablations of the upsampling operator.

Parameter names: `enc{l}_conv{1,2}` / `enc{l}_bn{1,2}` (level l = 0 is the finest),
`bottom_conv{1,2}` / `bottom_bn{1,2}`, `up{l}` (the upsampling's conv), `dec{l}_conv{1,2}` /
`dec{l}_bn{1,2}`, `classifier`.

`embedding_dim` > 0 adds a second 1x1 conv head, `embedding`, on the same last decoder features:
per-pixel instance embeddings for proposal-free instance segmentation (De Brabandere, Neven & Van
Gool 2017, who put an embedding branch next to the semantic one). The model then also returns
`"embeddings"` [N, H, W, embedding_dim] float32 (registered as `unet_embedding`, output kind
"embedding"; trained by `segjax.tasks.embedding`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax import ops
from segjax.models.backbones.vgg import conv_relu_stack, max_pool_2x2
from segjax.models.layers import ConvTranspose, check_images
from segjax.models.outputs import EMBEDDINGS, LOGITS
from segjax.models.registry import register

UPSAMPLING = ("transposed", "bilinear", "nearest", "bed_of_nails")


class UNet(nn.Module):
    """U-Net with same-size outputs (see the module docstring).

    Attributes:
      num_classes: output classes.
      base_features: channels at the finest level (64 in the paper).
      depth: number of pooling levels (4 in the paper).
      upsampling: "transposed" | "bilinear" | "nearest" | "bed_of_nails".
      dtype: compute dtype; logits are float32.
      axis_name: pmap axis for synchronised BatchNorm.
      in_channels: channels of the input images.
      embedding_dim: channels of the embedding head (0: none).
    """

    num_classes: int
    base_features: int = 64
    depth: int = 4
    upsampling: str = "transposed"
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3
    embedding_dim: int = 0

    def validate(self) -> None:
        """Raises ValueError naming an unsupported upsampling, depth or base_features."""
        if self.upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling={self.upsampling!r} is not supported; allowed: {UPSAMPLING}")
        if not (isinstance(self.depth, int) and self.depth >= 1):
            raise ValueError(f"depth must be a positive int, got {self.depth!r}")
        if not (isinstance(self.base_features, int) and self.base_features >= 1):
            raise ValueError(f"base_features must be a positive int, got {self.base_features!r}")
        if not (isinstance(self.embedding_dim, int) and self.embedding_dim >= 0):
            raise ValueError(f"embedding_dim must be an int >= 0, got {self.embedding_dim!r}")

    def _check(self, images: jax.Array) -> None:
        self.validate()
        check_images(images, self.in_channels, "unet")

    def _upsample(self, x: jax.Array, features: int, name: str) -> jax.Array:
        """x [N, h, w, C] -> [N, 2h, 2w, features]."""
        if self.upsampling == "transposed":
            return ConvTranspose(features, (2, 2), stride=2, dtype=self.dtype, name=name)(x)
        h, w = x.shape[1:3]
        if self.upsampling == "bilinear":
            x = ops.resize(x, (2 * h, 2 * w), "bilinear", align_corners=False)
        elif self.upsampling == "nearest":
            x = ops.nearest_unpool(x, 2)
        else:
            x = ops.bed_of_nails_unpool(x, 2)
        return nn.Conv(features, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name=name)(x)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        self._check(images)

        def double_conv(x: jax.Array, features: int, prefix: str) -> jax.Array:
            return conv_relu_stack(
                x, [features, features], [f"{prefix}_conv1", f"{prefix}_conv2"], train=train,
                batch_norm=True, dtype=self.dtype, axis_name=self.axis_name,
            )

        x = images.astype(self.dtype)
        skips = []
        for level in range(self.depth):
            x = double_conv(x, self.base_features * 2**level, f"enc{level}")
            skips.append(x)
            x = max_pool_2x2(x, ceil_mode=True)
        x = double_conv(x, self.base_features * 2**self.depth, "bottom")
        for level in reversed(range(self.depth)):
            skip = skips[level]
            features = self.base_features * 2**level
            x = self._upsample(x, features, f"up{level}")[:, : skip.shape[1], : skip.shape[2]]
            x = double_conv(jnp.concatenate([skip, x], axis=-1), features, f"dec{level}")
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                         name="classifier")(x)
        out = {LOGITS: logits.astype(jnp.float32)}
        if self.embedding_dim:
            e = nn.Conv(self.embedding_dim, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                        name="embedding")(x)
            out[EMBEDDINGS] = e.astype(jnp.float32)
        return out


@register("unet")
def unet(
    *, num_classes: int, base_features: int = 64, depth: int = 4, upsampling: str = "transposed",
    dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
) -> UNet:
    """U-Net (`UNet`); `base_features`, `depth` and `upsampling` are the supported overrides."""
    model = UNet(
        num_classes=num_classes, base_features=base_features, depth=depth, upsampling=upsampling, dtype=dtype,
        axis_name=axis_name, in_channels=in_channels,
    )
    model.validate()  # fail in create_model, not at the first init
    return model


@register("unet_embedding", output="dense_embeddings")
def unet_embedding(
    *, num_classes: int, embedding_dim: int = 8, base_features: int = 64, depth: int = 4,
    upsampling: str = "transposed", dtype: Any = jnp.float32, axis_name: str | None = None,
    in_channels: int = 3,
) -> UNet:
    """U-Net with a semantic head and an `embedding_dim`-channel instance-embedding head."""
    if not (isinstance(embedding_dim, int) and embedding_dim >= 1):
        raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
    model = UNet(
        num_classes=num_classes, base_features=base_features, depth=depth, upsampling=upsampling,
        dtype=dtype, axis_name=axis_name, in_channels=in_channels, embedding_dim=embedding_dim,
    )
    model.validate()
    return model
