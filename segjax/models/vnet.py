"""V-Net (Milletari, Navab & Ahmadi, 3DV 2016), Sec. 2 and Fig. 2 of the paper, on NDHWC volumes.

Every convolution is followed by a per-channel PReLU (ENet's `PReLU`, slopes initialised to 0.25
like Caffe's and `torch.nn.PReLU(C)`); there is no BatchNorm (the paper has none). Left
(compression) path, stage s = 0 .. 4 with `base_features * 2**s` channels (16, 32, 64, 128, 256) and
1, 2, 3, 3, 3 convolutions of 5x5x5 (padding 2): each stage learns a residual function, its input
added to the output of its last convolution and the sum passed through a PReLU. The first stage's
input is the volume broadcast to `base_features` channels (channel j is input channel j mod C: the
paper's 16 copies of its one-channel MRI), so the sum is defined. Between stages a 2x2x2 convolution
of stride 2 ("down-convolution") doubles the channels and halves the resolution. Right
(decompression) path, stage s = 3 .. 0: a 2x2x2 transposed convolution of stride 2
("de-convolution") to `base_features * 2**s` channels, concatenated `[upsampled, skip]` with the
left stage-s output (giving `base_features * 2**(s + 1)` channels: 256, 128, 64, 32), then 3, 3, 2,
1 residual 5x5x5 convolutions at that width (the stage's input, the concatenation, is the residual).
A final 1x1x1 conv scores the classes (the paper's two channels, turned into probabilities by a
softmax outside the model). With the defaults (16 features, 1 input channel) the model has
65,176,290 parameters for 2 classes.

Odd sizes, as in segjax's 2-D `unet`: a down-convolution zero-pads the far end of an odd axis (the
convolutional analogue of ceil mode, so no voxel is dropped), and the de-convolution's output is
cropped at the far end to the skip's size. The paper's fixed 128x128x64 input has no odd sizes.

Parameter names: `enc{s}_conv{i}` / `enc{s}_act{i}` (convolution i of left stage s, its PReLU),
`enc{s}_act` (the PReLU after the residual sum), `down{s}` / `down{s}_act` (into stage s), `up{s}` /
`up{s}_act` (into right stage s), `dec{s}_conv{i}` / `dec{s}_act{i}` / `dec{s}_act`, `classifier`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.enet import PReLU
from segjax.models.layers3d import UpConv2x, check_volumes, pad_to_even
from segjax.models.outputs import LOGITS
from segjax.models.registry import register

DOWN_CONVS = (1, 2, 3, 3, 3)  # 5x5x5 convolutions per left stage, finest first (Fig. 2)
UP_CONVS = (1, 2, 3, 3)  # per right stage, finest first (3, 3, 2, 1 on the way up)


class VNet(nn.Module):
    """V-Net (see the module docstring).

    `__call__(images [N, D, H, W, in_channels], train=False)` -> `{"logits": [N, D, H, W, num_classes]}`
    (float32 whatever `dtype`). `train` is accepted for the common model signature; V-Net has no
    layer that behaves differently in training.

    Attributes:
      num_classes: output classes (2 in the paper).
      base_features: channels of the first stage (16 in the paper); stage s has `base_features * 2**s`.
      depth: number of down-convolutions, 1 .. 4 (4 in the paper); stage s keeps the paper's
        convolution count, so a shallower V-Net is the paper's with its coarsest stages removed
        (for small volumes and cheap tests).
      dtype: compute dtype; parameters and logits are float32.
      in_channels: channels of the input volumes (1 in the paper).
      axis_name: accepted so that pmap training can set it; V-Net has no BatchNorm to synchronise.
    """

    num_classes: int
    base_features: int = 16
    dtype: Any = jnp.float32
    in_channels: int = 1
    depth: int = 4
    axis_name: str | None = None

    def validate(self) -> None:
        """Raises ValueError naming a bad base_features, in_channels or depth."""
        for field, value in (("base_features", self.base_features), ("in_channels", self.in_channels)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"vnet: {field} must be a positive int, got {value!r}")
        if not (isinstance(self.depth, int) and 1 <= self.depth < len(DOWN_CONVS)):
            raise ValueError(f"vnet: depth must be 1 .. {len(DOWN_CONVS) - 1} (the paper's stages), "
                             f"got {self.depth!r}")

    def _conv(self, features: int, kernel: int, name: str, stride: int = 1) -> nn.Conv:
        pad = (kernel - 1) // 2 if stride == 1 else 0
        return nn.Conv(features, (kernel,) * 3, strides=stride, padding=((pad, pad),) * 3, dtype=self.dtype,
                       param_dtype=jnp.float32, name=name)

    def _residual_stage(self, x: jax.Array, num_convs: int, prefix: str, residual: jax.Array) -> jax.Array:
        """`num_convs` 5x5x5 conv + PReLU at the residual's width; PReLU(last output + residual)."""
        y = x
        for i in range(1, num_convs + 1):
            y = PReLU(name=f"{prefix}_act{i}")(self._conv(residual.shape[-1], 5, f"{prefix}_conv{i}")(y))
        return PReLU(name=f"{prefix}_act")(y + residual)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        del train
        self.validate()
        check_volumes(images, self.in_channels, "vnet")
        b = self.base_features
        x = images.astype(self.dtype)
        copies, rest = divmod(b, self.in_channels)
        broadcast = jnp.concatenate([x] * copies + [x[..., :rest]], axis=-1)  # channel j = x's channel j mod C
        x = self._residual_stage(x, DOWN_CONVS[0], "enc0", broadcast)
        skips = [x]
        for s in range(1, self.depth + 1):
            x = self._conv(b * 2**s, 2, f"down{s}", stride=2)(pad_to_even(x))
            x = PReLU(name=f"down{s}_act")(x)
            x = self._residual_stage(x, DOWN_CONVS[s], f"enc{s}", x)
            if s < self.depth:
                skips.append(x)
        for s in reversed(range(self.depth)):
            skip = skips[s]
            x = PReLU(name=f"up{s}_act")(UpConv2x(b * 2**s, dtype=self.dtype, name=f"up{s}")(x))
            x = jnp.concatenate([x[:, : skip.shape[1], : skip.shape[2], : skip.shape[3]], skip], axis=-1)
            x = self._residual_stage(x, UP_CONVS[s], f"dec{s}", x)
        logits = self._conv(self.num_classes, 1, "classifier")(x)
        return {LOGITS: logits.astype(jnp.float32)}


@register("vnet", output="dense3d")
def vnet(
    *, num_classes: int, base_features: int = 16, depth: int = 4, dtype: Any = jnp.float32,
    in_channels: int = 1, axis_name: str | None = None,
) -> VNet:
    """V-Net (`VNet`) on NDHWC volumes; `base_features`, `depth` and `in_channels` are the overrides."""
    model = VNet(num_classes=num_classes, base_features=base_features, depth=depth, dtype=dtype,
                 in_channels=in_channels, axis_name=axis_name)
    model.validate()
    return model
