"""The fast style-transfer network of Johnson, Alahi & Fei-Fei (ECCV 2016, "Perceptual Losses for
Real-Time Style Transfer and Super-Resolution"), as pytorch/examples
`fast_neural_style/neural_style/transformer_net.py` builds it.

Images [N, H, W, 3] -> stylised images. Layers (`width` w = 32 in the reference):

* `conv1` 9x9 w, `conv2` 3x3 stride 2 to 2w, `conv3` 3x3 stride 2 to 4w, each followed by
  InstanceNorm (`in1` .. `in3`) and ReLU — instance norm instead of the paper's batch norm
  (Ulyanov et al. 2016), as the reference;
* `res1` .. `res5`: residual blocks x + IN(conv(ReLU(IN(conv(x))))) with 3x3 convs (no ReLU
  after the sum, the reference's `ResidualBlock`);
* `deconv1`, `deconv2`: nearest x2 upsampling then a 3x3 conv (`UpsampleConvLayer`, instead of
  the paper's fractionally-strided convs) to 2w and w, each with InstanceNorm (`in4`, `in5`) and
  ReLU; `deconv3`: 9x9 conv to 3 channels, no normalisation or activation (the reference returns
  the raw output; its images are in [0, 255]).

Every conv pads by reflection (`ReflectConv`). Output size: each stride-2 conv maps s to
ceil(s / 2) and each upsampling doubles, so H -> 4 ceil(ceil(H / 2) / 2): the input size when H
and W are multiples of 4 (the reference's training crops are 256), larger otherwise — the
reference does not crop back either. The 9x9 convs need H, W >= 5.
"""

from __future__ import annotations

import re
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.ops._args import check_rank
from segjax.style.layers import InstanceNorm, ReflectConv, upsample_nearest

TRANSFORMER_NET_WIDTH = 32  # pytorch/examples' channels of the first layer
NUM_RESIDUAL_BLOCKS = 5


class ResidualBlock(nn.Module):
    """x + in2(conv2(relu(in1(conv1(x))))), 3x3 reflection-padded convs: [N, H, W, C] -> same."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        y = nn.relu(InstanceNorm(name="in1")(ReflectConv(c, 3, name="conv1")(x)))
        return x + InstanceNorm(name="in2")(ReflectConv(c, 3, name="conv2")(y))


class UpsampleConv(nn.Module):
    """Nearest upsampling by `upsample` then a reflection-padded conv (`UpsampleConvLayer`)."""

    features: int
    kernel_size: int = 3
    upsample: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ReflectConv(self.features, self.kernel_size, name="conv")(upsample_nearest(x, self.upsample))


class TransformerNet(nn.Module):
    """Johnson et al.'s image transformation network (see the module docstring).

    `__call__(images [N, H, W, C_in])` -> [N, 4 ceil(ceil(H/2)/2), 4 ceil(ceil(W/2)/2), out_channels].

    Attributes:
      width: channels of the first layer, 32 in the reference (2w and 4w below); small for tests.
      out_channels: 3.
    """

    width: int = TRANSFORMER_NET_WIDTH
    out_channels: int = 3

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        check_rank(images, 4, "images", "N, H, W, C")
        if min(images.shape[1:3]) < 5:
            raise ValueError(f"TransformerNet's 9x9 reflection-padded convs need H, W >= 5, got "
                             f"images of shape {images.shape}")
        w = self.width
        y = images
        for i, (features, kernel, stride) in enumerate([(w, 9, 1), (2 * w, 3, 2), (4 * w, 3, 2)], 1):
            y = ReflectConv(features, kernel, stride, name=f"conv{i}")(y)
            y = nn.relu(InstanceNorm(name=f"in{i}")(y))
        for i in range(1, NUM_RESIDUAL_BLOCKS + 1):
            y = ResidualBlock(name=f"res{i}")(y)
        y = nn.relu(InstanceNorm(name="in4")(UpsampleConv(2 * w, name="deconv1")(y)))
        y = nn.relu(InstanceNorm(name="in5")(UpsampleConv(w, name="deconv2")(y)))
        return ReflectConv(self.out_channels, 9, name="deconv3")(y)


_TORCH_CONV = re.compile(r"^(.*)\.conv2d\.(weight|bias)$")
_TORCH_NORM = re.compile(r"^(.*)\.(weight|bias)$")
_UPSAMPLE_CONVS = ("deconv1", "deconv2")
_TORCH_STALE = re.compile(r"in\d+\.running_(mean|var)$")  # in old .pth files; the reference drops them


def from_torch_transformer_net(state_dict: Mapping[str, np.ndarray]) -> dict:
    """pytorch/examples TransformerNet state dict (names to NumPy arrays) -> `TransformerNet` variables.

    `conv1.conv2d.weight` [out, in, k, k] -> `params/conv1/conv/kernel` [k, k, in, out];
    `deconv1.conv2d.*` -> `params/deconv1/conv/conv/*`; `in1.weight`/`bias` -> `scale`/`bias`;
    the stale `in*.running_mean/var` of the published .pth files are dropped, as the reference's
    `neural_style.py stylize` does. An unknown key raises ValueError naming it.
    """
    params: dict = {}

    def put(path, value):
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = jnp.asarray(value)

    for key, value in state_dict.items():
        if _TORCH_STALE.search(key):
            continue
        conv, norm = _TORCH_CONV.match(key), _TORCH_NORM.match(key)
        if conv:
            # deconv1/2 are `UpsampleConv`s, whose `ReflectConv` is one level further down.
            path = conv.group(1).split(".") + (["conv"] if conv.group(1) in _UPSAMPLE_CONVS else [])
            leaf = "kernel" if conv.group(2) == "weight" else "bias"
            put(path + ["conv", leaf], np.transpose(value, (2, 3, 1, 0)) if leaf == "kernel" else value)
        elif norm and re.fullmatch(r"(res\d\.)?in\d", norm.group(1)):
            put(norm.group(1).split(".") + ["scale" if norm.group(2) == "weight" else "bias"], value)
        else:
            raise ValueError(f"unexpected key {key!r} in the TransformerNet state dict (expected the "
                             "names of pytorch/examples fast_neural_style transformer_net.py)")
    return {"params": params}
