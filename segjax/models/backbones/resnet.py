"""ResNet backbones (torchvision layout) with a controllable output stride.

Parameter names follow torchvision's state dict (`conv1`, `bn1`, `layer3/5/conv2`,
`layer1/0/downsample/0` ...), so converting its weights is a renaming of leaves only
(`segjax.models.torchvision_import`).

Output stride (DeepLab): `output_stride=16` replaces the stride of layer4 by dilation 2,
`output_stride=8` those of layer3 and layer4 by dilations 2 and 4 — exactly torchvision's
`replace_stride_with_dilation`: the first block of a dilated stage keeps the previous stage's
dilation, the following blocks use the new one. The parameter tree does not depend on the output
stride.

Multi-grid (DeepLab v3, Sec. 3.2): with `multi_grid=(r1, r2, r3)` block `i` of layer4 uses
dilation `rate * r_i`, where `rate` is layer4's dilation (1, 2 or 4 at output stride 32, 16, 8),
for every block including the first (the paper's definition: OS 16 with (1, 2, 4) gives rates
(2, 4, 8)). `multi_grid=None` is torchvision's scheme.

BasicBlock (ResNet-18/34) supports dilation here (torchvision raises): both of its 3x3 convs use
the block's dilation, with padding equal to the dilation.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import check_images, square_conv
from segjax.models.norm import BatchNorm
from segjax.ops.pool import max_pool

# depth -> (block kind, blocks per stage)
_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# output stride -> (layer3 stride replaced by dilation, layer4 stride replaced by dilation)
_DILATE = {32: (False, False), 16: (False, True), 8: (True, True)}
FEATURE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")

# torchvision's ResNet init: kaiming normal, fan_out, relu gain.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# A square conv with torch's padding and torchvision's ResNet init (override by keyword).
conv = functools.partial(square_conv, kernel_init=conv_kernel_init)


class _Downsample(nn.Module):
    """1x1 conv (stride) + BN on the shortcut; children `0`, `1` as torchvision's Sequential."""

    features: int
    stride: int
    dtype: Any
    axis_name: str | None

    @nn.compact
    def __call__(self, x, train: bool):
        x = conv(self.features, 1, stride=self.stride, dtype=self.dtype, name="0")(x)
        return BatchNorm(not train, self.axis_name, dtype=self.dtype, name="1")(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) + identity/projection shortcut; expansion 1."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    axis_name: str | None = None

    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = lambda name: BatchNorm(not train, self.axis_name, dtype=self.dtype, name=name)  # noqa: E731
        y = conv(self.planes, 3, stride=self.stride, dilation=self.dilation, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = conv(self.planes, 3, dilation=self.dilation, dtype=self.dtype, name="conv2")(y)
        y = bn("bn2")(y)
        if self.downsample:
            x = _Downsample(self.planes, self.stride, self.dtype, self.axis_name, name="downsample")(x, train)
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4 channels) + shortcut (torchvision "v1.5")."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    axis_name: str | None = None

    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = lambda name: BatchNorm(not train, self.axis_name, dtype=self.dtype, name=name)  # noqa: E731
        y = conv(self.planes, 1, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = conv(self.planes, 3, stride=self.stride, dilation=self.dilation, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(bn("bn2")(y))
        y = conv(self.planes * 4, 1, dtype=self.dtype, name="conv3")(y)
        y = bn("bn3")(y)
        if self.downsample:
            x = _Downsample(self.planes * 4, self.stride, self.dtype, self.axis_name, name="downsample")(x, train)
        return nn.relu(y + x)


class _Stage(nn.Module):
    """A sequence of residual blocks named `0`, `1`, ... (torchvision's `layerK`)."""

    block: Any
    planes: int
    stride: int
    dilations: Sequence[int]
    downsample: bool
    dtype: Any
    axis_name: str | None

    @nn.compact
    def __call__(self, x, train: bool):
        for i, d in enumerate(self.dilations):
            x = self.block(
                self.planes,
                stride=self.stride if i == 0 else 1,
                dilation=d,
                downsample=self.downsample and i == 0,
                dtype=self.dtype,
                axis_name=self.axis_name,
                name=str(i),
            )(x, train)
        return x


class ResNet(nn.Module):
    """ResNet-18/34/50/101/152 feature extractor (no pooling/fc head).

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      output_stride: 8, 16 or 32; stride of `layer4` w.r.t. the input (see module docstring).
      multi_grid: None (torchvision) or one unit rate per layer4 block (DeepLab v3 multi-grid).
      width: channels of the stem (64 = torchvision); all stages scale with it.
      dtype: compute dtype; parameters are float32.
      axis_name: pmap axis for synchronised BatchNorm.
      in_channels: channels of the input images.
      frozen_stages: how many leading stages of (stem, layer1, ..., layer4) get no gradient
        (0-5; their outputs pass through `stop_gradient`, so backpropagation stops there and no
        input gradient is computed below them, as torchvision's `requires_grad=False` layers).
        Their parameters must also be kept out of the optimizer (`frozen_parameters`).

    `__call__(x [N, H, W, in_channels], train)` returns `{"stem", "layer1", ..., "layer4"}`
    feature maps `[N, ceil(H / s), ceil(W / s), C]` with `s, C` from `feature_strides` and
    `feature_channels` (exactly torch's sizes for any H, W).

    `__call__(x, train, start=..., stop=...)` runs only the stages `start` to `stop` (names of
    `FEATURE_NAMES`) and returns their maps; when `start` is not "stem", `x` is that stage's input
    (the previous stage's channels). The stages are the same submodules whichever part runs, so
    calling one `ResNet` twice on two parts shares its weights (ICNet feeds layer3 a resized
    layer2 map).
    """

    depth: int = 50
    output_stride: int = 32
    multi_grid: Sequence[int] | None = None
    width: int = 64
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3
    frozen_stages: int = 0

    def validate(self) -> None:
        """Raises ValueError naming an unsupported depth, output_stride, width or multi_grid."""
        if self.depth not in _DEPTHS:
            raise ValueError(f"ResNet depth={self.depth!r} is not supported; allowed: {sorted(_DEPTHS)}")
        if self.output_stride not in _DILATE:
            raise ValueError(
                f"output_stride={self.output_stride!r} is not supported; allowed: {sorted(_DILATE)}"
            )
        if not isinstance(self.width, int) or self.width <= 0:
            raise ValueError(f"width must be a positive int, got {self.width!r}")
        if self.frozen_stages not in range(6):
            raise ValueError(f"frozen_stages must be in 0..5 (stem, layer1..layer4), got {self.frozen_stages!r}")
        if self.multi_grid is not None:
            n4 = _DEPTHS[self.depth][1][3]
            mg = tuple(self.multi_grid)
            if len(mg) != n4 or any(not isinstance(r, int) or r < 1 for r in mg):
                raise ValueError(
                    f"multi_grid={self.multi_grid!r} must hold {n4} positive ints "
                    f"(one per layer4 block of ResNet-{self.depth}) or be None"
                )

    @property
    def feature_strides(self) -> dict[str, int]:
        """Stride of each returned feature map w.r.t. the input."""
        self.validate()
        d3, d4 = _DILATE[self.output_stride]
        s3 = 8 if d3 else 16
        return {"stem": 4, "layer1": 4, "layer2": 8, "layer3": s3, "layer4": s3 if d4 else 2 * s3}

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channels of each returned feature map."""
        self.validate()
        exp = 4 if _DEPTHS[self.depth][0] == "bottleneck" else 1
        w = self.width
        return {"stem": w, "layer1": w * exp, "layer2": 2 * w * exp, "layer3": 4 * w * exp, "layer4": 8 * w * exp}

    def stage_dilations(self) -> dict[str, tuple[int, ...]]:
        """Dilation of the 3x3 conv(s) of every block, per stage (a pure function of the fields)."""
        self.validate()
        kind, blocks = _DEPTHS[self.depth]
        dilate = (False, False) + _DILATE[self.output_stride]
        out, dilation = {}, 1
        for k, (n, dil) in enumerate(zip(blocks, dilate)):
            previous = dilation
            if dil:
                dilation *= 2  # the stage's stride (2) becomes dilation
            rates = (previous,) + (dilation,) * (n - 1)
            if k == 3 and self.multi_grid is not None:
                rates = tuple(dilation * r for r in self.multi_grid)
            out[f"layer{k + 1}"] = rates
        return out

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, *, start: str = "stem",
                 stop: str = "layer4") -> dict[str, jax.Array]:
        self.validate()
        if start not in FEATURE_NAMES or stop not in FEATURE_NAMES[FEATURE_NAMES.index(start):]:
            raise ValueError(f"start={start!r}, stop={stop!r} must be names of {FEATURE_NAMES}, "
                             "start not after stop")
        first, last = FEATURE_NAMES.index(start), FEATURE_NAMES.index(stop)
        kind, blocks = _DEPTHS[self.depth]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        features = {}
        if first == 0:
            check_images(x, self.in_channels, "ResNet")
            x = x.astype(self.dtype)
            x = conv(self.width, 7, stride=2, dtype=self.dtype, name="conv1")(x)
            x = BatchNorm(not train, self.axis_name, dtype=self.dtype, name="bn1")(x)
            x = nn.relu(x)
            x = max_pool(x, 3, 2, 1)
            if self.frozen_stages >= 1:
                x = jax.lax.stop_gradient(x)
            features["stem"] = x
        else:
            channels = self.feature_channels[FEATURE_NAMES[first - 1]]
            if x.ndim != 4 or x.shape[-1] != channels:
                raise ValueError(f"ResNet stage {start} expects [N, h, w, {channels}], got shape {tuple(x.shape)}")
            x = x.astype(self.dtype)
        dilate = (False, False) + _DILATE[self.output_stride]
        in_ch = self.width
        for k, rates in enumerate(self.stage_dilations().values()):
            if not first <= k + 1 <= last:
                in_ch = self.width * 2**k * block.expansion
                continue
            planes = self.width * 2**k
            stride = 1 if k == 0 or dilate[k] else 2
            x = _Stage(
                block,
                planes,
                stride,
                rates,
                downsample=stride != 1 or in_ch != planes * block.expansion,
                dtype=self.dtype,
                axis_name=self.axis_name,
                name=f"layer{k + 1}",
            )(x, train)
            if self.frozen_stages >= k + 2:
                x = jax.lax.stop_gradient(x)
            in_ch = planes * block.expansion
            features[f"layer{k + 1}"] = x
        return features
