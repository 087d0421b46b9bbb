"""Segmentation heads and decoders consuming backbone feature maps (NHWC).

All heads return logits at the resolution of their input feature map; the model upsamples them
to the image size. Layouts follow torchvision where torchvision has the head (FCNHead,
DeepLabHead/ASPP), with readable child names (`conv`, `bn`, `cls`, `aspp`, ...) that
`segjax.models.torchvision_import` maps from torchvision's Sequential indices.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.models.layers import AtrousConv, Dropout, square_conv
from segjax.models.norm import BatchNorm
from segjax.ops import resize


def _conv(
    features: int,
    kernel: int,
    *,
    dilation: int = 1,
    use_bias: bool = False,
    dtype: Any,
    name: str,
    hw: tuple[int, int] | None = None,
    kernel_init: Any = nn.initializers.lecun_normal(),
):
    """A square stride-1 conv with torch's symmetric padding (same output size for odd kernels).

    Dilated convs whose rate is large for the map (`3 * dilation >= min(hw)`: several kernel taps
    read mostly padding) use `segjax.models.layers.AtrousConv`, which computes each tap only where
    it overlaps the input: exact, and on this CPU 2.5-40x faster forward+backward at ASPP rates
    18-36 on 33x33 maps, but ~1.5-3x slower at small rates, where XLA's dilated conv is kept.
    Both have the same `kernel`/`bias` parameters.
    """
    if dilation > 1 and hw is not None and 3 * dilation >= min(hw):
        return AtrousConv(features, kernel, dilation, use_bias=use_bias, dtype=dtype, name=name,
                          kernel_init=kernel_init)
    return square_conv(features, kernel, dilation=dilation, use_bias=use_bias, dtype=dtype,
                       name=name, kernel_init=kernel_init)


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
        x = Dropout(self.dropout_rate, self.axis_name)(x, not train)
        x = _conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="cls")(x)
        return x.astype(jnp.float32)


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` averaging matrix of torch's adaptive average pooling along one axis.

    Bin `i` averages inputs `floor(i * n_in / n_out)` to `ceil((i + 1) * n_in / n_out) - 1`:
    bins overlap or differ in size when `n_out` does not divide `n_in` (e.g. 7 -> 3 gives
    [0, 3), [2, 5), [4, 7)).
    """
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, output_size: int | tuple[int, int]) -> jax.Array:
    """`torch.nn.functional.adaptive_avg_pool2d` on NHWC: `[N, H, W, C] -> [N, oh, ow, C]`."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    if x.ndim != 4 or min(oh, ow) < 1:
        raise ValueError(f"adaptive_avg_pool needs x [N, H, W, C] and a positive size, got {x.shape}, {output_size}")
    mh = jnp.asarray(adaptive_pool_matrix(x.shape[1], oh), jnp.float32)
    mw = jnp.asarray(adaptive_pool_matrix(x.shape[2], ow), jnp.float32)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    y = jnp.einsum("oh,nhwc->nowc", mh, x, precision=lax.Precision.HIGHEST, preferred_element_type=acc)
    y = jnp.einsum("pw,nowc->nopc", mw, y, precision=lax.Precision.HIGHEST, preferred_element_type=acc)
    return y.astype(x.dtype)


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BN -> ReLU; children `conv`, `bn`.

    With `separable=True` and `kernel > 1` the conv is depthwise-separable as in DeepLab v3+:
    depthwise `kernel`x`kernel` (dilated) conv -> BN -> ReLU (children `depthwise`,
    `depthwise_bn`) followed by the 1x1 pointwise `conv` -> `bn` -> ReLU.
    """

    features: int
    kernel: int = 1
    dilation: int = 1
    separable: bool = False
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bn = lambda name: BatchNorm(not train, self.axis_name, dtype=self.dtype, name=name)  # noqa: E731
        if self.separable and self.kernel > 1:
            pad = self.dilation * (self.kernel - 1) // 2
            x = nn.Conv(
                x.shape[-1], (self.kernel, self.kernel), padding=((pad, pad), (pad, pad)),
                kernel_dilation=(self.dilation, self.dilation), feature_group_count=x.shape[-1],
                use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name="depthwise",
            )(x)
            x = nn.relu(bn("depthwise_bn")(x))
            x = _conv(self.features, 1, dtype=self.dtype, name="conv")(x)
        else:
            x = _conv(self.features, self.kernel, dilation=self.dilation, dtype=self.dtype, name="conv",
                      hw=x.shape[1:3])(x)
        return nn.relu(bn("bn")(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling, torchvision's `ASPP` layout (DeepLab v3).

    Branches, each conv -> BN -> ReLU with `channels` outputs: `conv1x1`; `atrous_i` (3x3,
    dilation `atrous_rates[i]`); `pooling` (global average -> 1x1 conv -> BN -> ReLU, broadcast
    back, which equals torch's bilinear upsampling of a 1x1 map) when `image_pooling`. Their
    concatenation is projected by `project` (1x1 conv -> BN -> ReLU) and Dropout(`dropout_rate`).

    `__call__(x [N, h, w, C], train)` -> `[N, h, w, channels]`.
    """

    atrous_rates: Sequence[int] = (12, 24, 36)
    channels: int = 256
    image_pooling: bool = True
    dropout_rate: float = 0.5
    separable: bool = False
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, axis_name=self.axis_name)
        branches = [ConvBNReLU(self.channels, 1, name="conv1x1", **kw)(x, train)]
        for i, rate in enumerate(self.atrous_rates):
            branches.append(
                ConvBNReLU(self.channels, 3, rate, self.separable, name=f"atrous_{i}", **kw)(x, train)
            )
        if self.image_pooling:
            pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
            pooled = ConvBNReLU(self.channels, 1, name="pooling", **kw)(pooled, train)
            branches.append(jnp.broadcast_to(pooled, branches[0].shape))
        y = ConvBNReLU(self.channels, 1, name="project", **kw)(jnp.concatenate(branches, -1), train)
        return Dropout(self.dropout_rate, self.axis_name)(y, not train)


class DeepLabV3Head(nn.Module):
    """torchvision's DeepLabHead: `aspp` -> 3x3 `conv` (no bias) -> `bn` -> ReLU -> 1x1 `cls`.

    `__call__(x [N, h, w, C], train)` -> logits `[N, h, w, num_classes]` float32.
    """

    num_classes: int
    atrous_rates: Sequence[int] = (12, 24, 36)
    image_pooling: bool = True
    channels: int = 256
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = ASPP(self.atrous_rates, self.channels, self.image_pooling, dtype=self.dtype,
                 axis_name=self.axis_name, name="aspp")(x, train)
        x = _conv(self.channels, 3, dtype=self.dtype, name="conv")(x)
        x = nn.relu(BatchNorm(not train, self.axis_name, dtype=self.dtype, name="bn")(x))
        return _conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="cls")(x).astype(jnp.float32)


class DeepLabV2ASPP(nn.Module):
    """DeepLab v2 ASPP: the sum of 3x3 atrous classifiers (with bias), one per rate.

    Children `atrous_i`; `__call__(x [N, h, w, C])` -> logits `[N, h, w, num_classes]` float32.
    Classifier weights start at N(0, 0.01), biases at 0, as in the reference Caffe model.
    """

    num_classes: int
    atrous_rates: Sequence[int] = (6, 12, 18, 24)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no BN or dropout
        out = 0.0
        for i, rate in enumerate(self.atrous_rates):
            out = out + _conv(
                self.num_classes, 3, dilation=rate, use_bias=True, dtype=self.dtype, name=f"atrous_{i}",
                hw=x.shape[1:3], kernel_init=nn.initializers.normal(0.01),
            )(x).astype(jnp.float32)
        return out


class DeepLabV3PlusHead(nn.Module):
    """DeepLab v3+ decoder (Chen et al. 2018, Sec. 3.1).

    ASPP on the high-level features; the stride-4 low-level features are projected by
    `low_level` (1x1 conv -> BN -> ReLU, `low_level_channels` = 48); the ASPP output is upsampled
    bilinearly (align_corners=False) to the low-level size, concatenated [aspp, low], refined by
    two 3x3 ConvBNReLU (`refine_0`, `refine_1`, `channels` = 256; depthwise-separable with
    `separable`) and classified by a 1x1 conv `cls` (bias).

    `__call__(high [N, h, w, C], low [N, h4, w4, C4], train)` -> logits `[N, h4, w4, num_classes]`.
    """

    num_classes: int
    atrous_rates: Sequence[int] = (6, 12, 18)
    image_pooling: bool = True
    channels: int = 256
    low_level_channels: int = 48
    separable: bool = False
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, high: jax.Array, low: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, axis_name=self.axis_name)
        x = ASPP(self.atrous_rates, self.channels, self.image_pooling, separable=self.separable,
                 name="aspp", **kw)(high, train)
        low = ConvBNReLU(self.low_level_channels, 1, name="low_level", **kw)(low, train)
        x = resize(x, low.shape[1:3], "bilinear", align_corners=False)
        x = jnp.concatenate([x, low.astype(x.dtype)], axis=-1)
        for i in range(2):
            x = ConvBNReLU(self.channels, 3, separable=self.separable, name=f"refine_{i}", **kw)(x, train)
        return _conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="cls")(x).astype(jnp.float32)


class PyramidPoolingHead(nn.Module):
    """PSPNet head: pyramid pooling module + 3x3 conv 512 -> BN -> ReLU -> Dropout -> 1x1 `cls`.

    For each bin size `b` in `bins` (1, 2, 3, 6): adaptive average pooling to b x b (torch's
    uneven bins), 1x1 ConvBNReLU to C / len(bins) channels (`pool_i`), bilinear upsampling back
    (align_corners=True, as the reference PSPNet/Caffe interpolation). The input and the four
    maps are concatenated and fused by `bottleneck` (3x3 ConvBNReLU, `channels` = 512).

    `__call__(x [N, h, w, C], train)` -> logits `[N, h, w, num_classes]` float32; with
    `num_classes=None` the pyramid pooling module alone: the fused `[N, h, w, channels]` features
    in the compute dtype (no dropout, no `cls`; ICNet's low-resolution branch).
    """

    num_classes: int | None
    bins: Sequence[int] = (1, 2, 3, 6)
    channels: int = 512
    dropout_rate: float = 0.1
    align_corners: bool = True
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, axis_name=self.axis_name)
        reduced = x.shape[-1] // len(self.bins)
        maps = [x]
        for i, b in enumerate(self.bins):
            y = ConvBNReLU(reduced, 1, name=f"pool_{i}", **kw)(adaptive_avg_pool(x, b), train)
            maps.append(resize(y, x.shape[1:3], "bilinear", align_corners=self.align_corners))
        x = ConvBNReLU(self.channels, 3, name="bottleneck", **kw)(jnp.concatenate(maps, -1), train)
        if self.num_classes is None:
            return x
        x = Dropout(self.dropout_rate, self.axis_name)(x, not train)
        return _conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="cls")(x).astype(jnp.float32)
