"""3D U-Net (Çiçek, Abdulkadir, Lienkamp, Brox & Ronneberger, MICCAI 2016), padded: output size = input size.

Sec. 2 and Fig. 1 of the paper, on NDHWC volumes. Analysis path: at level l = 0 .. depth - 1 two
3x3x3 convolutions, each followed by BatchNorm and ReLU, the first with `base_features * 2**l`
channels and the second doubling them (the paper's 32/64, 64/128, 128/256: doubling *before*
pooling avoids bottlenecks, after Szegedy et al.), then a 2x2x2 max pool of stride 2; at the bottom
(level `depth`) the same pair with `base_features * 2**depth` / `* 2**(depth + 1)` channels (256/512).
Synthesis path, from the coarsest level up: a 2x2x2 up-convolution of stride 2 that keeps the
channel count (Fig. 1: 512 -> 512), concatenation `[skip, upsampled]` with the analysis path's
level-l output, and two 3x3x3 conv + BN + ReLU with `base_features * 2**(l + 1)` channels (256,
128, 64). A final 1x1x1 conv scores the classes. With the defaults (32 features, depth 3, 3 input
channels) the model has 19,075,523 parameters for 3 classes (BatchNorm scales and biases included,
running statistics not).

Differences from the paper, as in segjax's 2-D `unet`: the 3x3x3 convolutions are padded ("same"),
so the output has the input's size instead of the paper's valid-convolution 44x44x28 tile of a
132x132x116 input; odd sizes follow the 2-D convention (ceil-mode pooling pads the far end with
-inf, and the up-convolution's output, which then covers exactly the skip's grid, is cropped at the
far end to the skip's size). The weighted softmax loss over labelled voxels (Sec. 2) is the task's
business: the model returns logits.

Parameter names: `enc{l}_conv{1,2}` / `enc{l}_bn{1,2}` (l = 0 is the finest), `bottom_conv{1,2}` /
`bottom_bn{1,2}`, `up{l}` (the up-convolution into level l), `dec{l}_conv{1,2}` / `dec{l}_bn{1,2}`,
`classifier`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers3d import UpConv2x, check_volumes, max_pool_2x2x2
from segjax.models.norm import BatchNorm
from segjax.models.outputs import LOGITS
from segjax.models.registry import register


class UNet3D(nn.Module):
    """3D U-Net with same-size outputs (see the module docstring).

    `__call__(images [N, D, H, W, in_channels], train=False)` -> `{"logits": [N, D, H, W, num_classes]}`
    (float32 whatever `dtype`).

    Attributes:
      num_classes: output classes.
      base_features: channels of the first convolution (32 in the paper).
      depth: number of pooling levels (3 in the paper).
      dtype: compute dtype; parameters and logits are float32.
      axis_name: pmap axis for synchronised BatchNorm.
      in_channels: channels of the input volumes (3 in the paper).
    """

    num_classes: int
    base_features: int = 32
    depth: int = 3
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    def validate(self) -> None:
        """Raises ValueError naming a bad depth, base_features or in_channels."""
        for field, value in (("depth", self.depth), ("base_features", self.base_features),
                             ("in_channels", self.in_channels)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"unet3d: {field} must be a positive int, got {value!r}")

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        self.validate()
        check_volumes(images, self.in_channels, "unet3d")

        def conv_bn_relu_pair(x: jax.Array, features: tuple[int, int], prefix: str) -> jax.Array:
            for i, f in enumerate(features, start=1):
                x = nn.Conv(f, (3, 3, 3), padding=((1, 1),) * 3, dtype=self.dtype, param_dtype=jnp.float32,
                            name=f"{prefix}_conv{i}")(x)
                x = BatchNorm(not train, self.axis_name, dtype=self.dtype, name=f"{prefix}_bn{i}")(x)
                x = nn.relu(x)
            return x

        b = self.base_features
        x = images.astype(self.dtype)
        skips = []
        for level in range(self.depth):
            x = conv_bn_relu_pair(x, (b * 2**level, b * 2 ** (level + 1)), f"enc{level}")
            skips.append(x)
            x = max_pool_2x2x2(x)
        x = conv_bn_relu_pair(x, (b * 2**self.depth, b * 2 ** (self.depth + 1)), "bottom")
        for level in reversed(range(self.depth)):
            skip = skips[level]
            x = UpConv2x(x.shape[-1], dtype=self.dtype, name=f"up{level}")(x)
            x = x[:, : skip.shape[1], : skip.shape[2], : skip.shape[3]]
            features = b * 2 ** (level + 1)
            x = conv_bn_relu_pair(jnp.concatenate([skip, x], axis=-1), (features, features), f"dec{level}")
        logits = nn.Conv(self.num_classes, (1, 1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                         name="classifier")(x)
        return {LOGITS: logits.astype(jnp.float32)}


@register("unet3d", output="dense3d")
def unet3d(
    *, num_classes: int, base_features: int = 32, depth: int = 3, dtype: Any = jnp.float32,
    axis_name: str | None = None, in_channels: int = 3,
) -> UNet3D:
    """3D U-Net (`UNet3D`) on NDHWC volumes; `base_features`, `depth`, `in_channels` are the overrides."""
    model = UNet3D(num_classes=num_classes, base_features=base_features, depth=depth, dtype=dtype,
                   axis_name=axis_name, in_channels=in_channels)
    model.validate()  # fail in create_model, not at the first init
    return model
