"""The fully convolutional discriminator of output-space adversarial adaptation.

Tsai et al., "Learning to Adapt Structured Output Space for Semantic Segmentation", CVPR 2018
(AdaptSegNet), Sec. 3.3: five 4x4 convolutions of stride 2 with 64, 128, 256, 512 and 1
channels, each but the last followed by a leaky ReLU of slope 0.2; no normalisation. It reads a
segmenter's softmax output `[N, H, W, K]` and returns a map of logits, "source" against
"target": each layer halves the size (rounding down; padding 1 as in the authors'
`FCDiscriminator`), so `[N, 2, 2, 1]` for 64x64 inputs and `[N, 16, 32, 1]` for 512x1024.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class FCDiscriminator(nn.Module):
    """AdaptSegNet's discriminator (see the module docstring).

    Attributes:
      features: channels of the first layer (64 in the paper); layer i has features * 2**i.
      num_layers: convolutions in all, the last giving one channel (5 in the paper).
      negative_slope: of the leaky ReLUs (0.2).
    """

    features: int = 64
    num_layers: int = 5
    negative_slope: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, probs: jnp.ndarray) -> jnp.ndarray:
        if self.num_layers < 2:
            raise ValueError(f"num_layers must be >= 2, got {self.num_layers}")
        x = probs.astype(self.dtype)
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.Conv(1 if last else self.features * 2 ** i, (4, 4), strides=(2, 2),
                        padding=((1, 1), (1, 1)), dtype=self.dtype, name=f"conv{i + 1}")(x)
            if not last:
                x = nn.leaky_relu(x, self.negative_slope)
        return x.astype(jnp.float32)
