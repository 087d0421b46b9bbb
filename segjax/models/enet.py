"""ENet (Paszke, Chaurasia, Kim, Culurciello 2016): a real-time encoder-decoder of 0.37 M parameters.

The paper's Table 1, with its defaults:

* initial block: a 3x3 stride-2 convolution to 13 channels beside a 2x2 max pool of the 3 input
  channels, concatenated (16), BatchNorm, PReLU;
* bottlenecks (internal width = output / 4, every convolution followed by BatchNorm and PReLU,
  the 1x1 expansion by BatchNorm only, spatial dropout 0.01 in stage 1 and 0.1 after, then the
  sum with the shortcut and a PReLU):
  - downsampling (1.0, 2.0): a 2x2 stride-2 projection instead of the 1x1; the shortcut is a 2x2
    max pool whose indices are kept, zero-padded to the output channels;
  - regular, dilated (rate 2, 4, 8, 16) and asymmetric (5x1 then 1x5) 3x3 stages, identity
    shortcut: stage 1 has 4 regular, stage 2 (after 2.0) and stage 3 the sequence regular,
    dilated 2, asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5, dilated 16;
  - upsampling (4.0, 5.0): a 3x3 stride-2 transposed convolution in the main branch; the shortcut
    is a 1x1 convolution + BatchNorm, max-unpooled with the indices of the matching downsampling
    (`segjax.ops.max_unpool`);
  - stage 4: 4.0 (to 64) and two regular; stage 5: 5.0 (to 16) and one regular;
* a final 2x2 stride-2 transposed convolution to the classes ("fullconv").

PReLU slopes are per channel (Torch7's `nn.PReLU(n)` of the authors' code), initialised at 0.25;
convolutions have no bias before BatchNorm. The input is zero-padded to a multiple of 8 and the
logits cropped back, so any H x W works. Registered as `enet`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax import ops
from segjax.models.norm import BatchNorm
from segjax.models.outputs import LOGITS
from segjax.models.registry import register

# (name, kind, output channels, dilation) after the initial block; kinds: down, regular,
# dilated, asym, up.
_STAGE23 = (("regular", 1), ("dilated", 2), ("asym", 1), ("dilated", 4), ("regular", 1),
            ("dilated", 8), ("asym", 1), ("dilated", 16))
LAYOUT = (
    (("b1_0", "down", 64, 1),) + tuple((f"b1_{i}", "regular", 64, 1) for i in range(1, 5))
    + (("b2_0", "down", 128, 1),) + tuple((f"b2_{i + 1}", k, 128, d) for i, (k, d) in enumerate(_STAGE23))
    + tuple((f"b3_{i + 1}", k, 128, d) for i, (k, d) in enumerate(_STAGE23))
    + (("b4_0", "up", 64, 1), ("b4_1", "regular", 64, 1), ("b4_2", "regular", 64, 1),
       ("b5_0", "up", 16, 1), ("b5_1", "regular", 16, 1))
)


class PReLU(nn.Module):
    """max(x, 0) + a * min(x, 0) with one slope per channel (initialised at 0.25)."""

    @nn.compact
    def __call__(self, x):
        a = self.param("slope", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
        return jnp.where(x >= 0, x, a.astype(x.dtype) * x)


class Bottleneck(nn.Module):
    kind: str
    features: int
    dilation: int = 1
    dropout: float = 0.1
    dtype: Any = jnp.float32
    axis_name: str | None = None

    def _conv(self, x, features, kernel, name, stride=1, padding=((0, 0), (0, 0)), dilation=1):
        return nn.Conv(features, kernel, strides=stride, padding=padding, kernel_dilation=dilation, use_bias=False,
                       dtype=self.dtype, param_dtype=jnp.float32, name=name)(x)

    @nn.compact
    def __call__(self, x, train: bool, indices=None, shortcut_hw=None):
        bn = lambda name: BatchNorm(use_running_average=not train, axis_name=self.axis_name,  # noqa: E731
                                    dtype=self.dtype, name=name)
        inner = self.features // 4
        if self.kind == "down":
            y = self._conv(x, inner, (2, 2), "reduce", stride=2)
        else:
            y = self._conv(x, inner, (1, 1), "reduce")
        y = PReLU(name="reduce_prelu")(bn("reduce_bn")(y))
        if self.kind == "up":
            w = self.param("conv", nn.initializers.lecun_normal(), (3, 3, inner, inner), jnp.float32)
            y = ops.conv_transpose2d(y, w.astype(self.dtype), stride=2, padding=1, output_padding=1)
        elif self.kind == "asym":
            y = self._conv(y, inner, (5, 1), "conv", padding=((2, 2), (0, 0)))
            y = PReLU(name="conv_prelu_a")(bn("conv_bn_a")(y))
            y = self._conv(y, inner, (1, 5), "conv_b", padding=((0, 0), (2, 2)))
        else:
            d = self.dilation
            y = self._conv(y, inner, (3, 3), "conv", padding=((d, d), (d, d)), dilation=d)
        y = PReLU(name="conv_prelu")(bn("conv_bn")(y))
        y = bn("expand_bn")(self._conv(y, self.features, (1, 1), "expand"))
        y = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(y)

        new_indices = None
        if self.kind == "down":
            s, new_indices = ops.max_pool_with_argmax(x, 2, 2)
            s = jnp.pad(s, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
        elif self.kind == "up":
            s = bn("shortcut_bn")(self._conv(x, self.features, (1, 1), "shortcut"))
            s = ops.max_unpool(s, indices, shortcut_hw)
        else:
            s = x
        return PReLU(name="out_prelu")(y + s), new_indices


class ENet(nn.Module):
    """ENet (see the module docstring); `__call__(images [N, H, W, 3], train)` -> {"logits"}."""

    num_classes: int
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if images.ndim != 4 or images.shape[-1] != self.in_channels:
            raise ValueError(f"ENet needs images [N, H, W, {self.in_channels}], got {images.shape}")
        n, h, w, _ = images.shape
        ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
        x = jnp.pad(images.astype(self.dtype), ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
        conv = nn.Conv(16 - self.in_channels, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False,
                       dtype=self.dtype, param_dtype=jnp.float32, name="initial_conv")(x)
        x = jnp.concatenate([conv, ops.max_pool(x, 2, 2)], axis=-1)
        x = PReLU(name="initial_prelu")(BatchNorm(use_running_average=not train, axis_name=self.axis_name,
                                                  dtype=self.dtype, name="initial_bn")(x))
        saved = []  # (indices, input size) of each downsampling, for the matching upsampling
        for name, kind, features, dilation in LAYOUT:
            block = Bottleneck(kind, features, dilation, 0.01 if name.startswith("b1") else 0.1, self.dtype,
                               self.axis_name, name=name)
            if kind == "up":
                indices, hw = saved.pop()
                x, _ = block(x, train, indices, hw)
            else:
                hw = x.shape[1:3]
                x, indices = block(x, train)
                if kind == "down":
                    saved.append((indices, hw))
        w_full = self.param("fullconv", nn.initializers.lecun_normal(), (2, 2, self.num_classes, 16), jnp.float32)
        b_full = self.param("fullconv_bias", nn.initializers.zeros, (self.num_classes,), jnp.float32)
        logits = ops.conv_transpose2d(x, w_full.astype(self.dtype), stride=2) + b_full.astype(self.dtype)
        return {LOGITS: logits[:, :h, :w].astype(jnp.float32)}


@register("enet")
def enet(*, num_classes: int, dtype: Any = jnp.float32, axis_name: str | None = None,
         in_channels: int = 3) -> ENet:
    """ENet (`ENet`), the paper's sizes (no width options: it is already 0.37 M parameters)."""
    return ENet(num_classes=num_classes, dtype=dtype, axis_name=axis_name, in_channels=in_channels)
