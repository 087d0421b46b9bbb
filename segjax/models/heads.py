"""Segmentation heads and decoders consuming backbone feature maps (NHWC).

All heads return logits at the resolution of their input feature map; the model upsamples them
to the image size. Layouts follow torchvision where torchvision has the head (FCNHead,
DeepLabHead/ASPP), with readable child names (`conv`, `bn`, `cls`, `aspp`, ...) that
`segjax.models.torchvision_import` maps from torchvision's Sequential indices.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.norm import BatchNorm


def _conv(features: int, kernel: int, *, dilation: int = 1, use_bias: bool = False, dtype: Any, name: str):
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class FCNHead(nn.Module):
    """torchvision's FCNHead: 3x3 conv (no bias) -> BN -> ReLU -> Dropout -> 1x1 conv (bias).

    Attributes:
      num_classes: output channels.
      channels: hidden channels (None: input channels // 4, as torchvision).
      dropout_rate: dropout before the classifier (0.1 in torchvision).
      dtype: compute dtype; logits are returned in float32.
      axis_name: pmap axis for synchronised BatchNorm.

    `__call__(x [N, h, w, C], train)` -> logits `[N, h, w, num_classes]` float32.
    Children: `conv`, `bn`, `cls` (torchvision `0`, `1`, `4`).
    """

    num_classes: int
    channels: int | None = None
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        channels = self.channels or x.shape[-1] // 4
        x = _conv(channels, 3, dtype=self.dtype, name="conv")(x)
        x = nn.relu(BatchNorm(not train, self.axis_name, dtype=self.dtype, name="bn")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = _conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="cls")(x)
        return x.astype(jnp.float32)
