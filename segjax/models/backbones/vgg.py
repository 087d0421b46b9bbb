"""VGG-16 backbone (torchvision conv layout) with a convolutionalised classifier and output stride.

Layout: five stages of 3x3 convs (pad = dilation, ReLU; optional BatchNorm after each conv),
channels `(1, 2, 4, 8, 8) * width` with `(2, 2, 3, 3, 3)` convs, each stage followed by a max
pool `pool1..pool5`; then, when `include_fc`, `fc6` (a `fc6_kernel` x `fc6_kernel` conv with
dilation `fc6_dilation` and "same" padding) and `fc7` (1x1), each with ReLU + dropout: the fully
connected layers of the classifier written as convolutions (Long et al., FCN).

Pooling: 2x2 stride-2 max pools in *ceil mode* by default (Caffe's convention, used by the
original FCN, DeconvNet, SegNet and DeepLab v1; a pooled map has `ceil(H / 2)` rows and every
input pixel is in exactly one window, so any H, W >= 1 works); `ceil_mode=False` is torchvision's
floor mode. Output stride 16 makes pool5, output stride 8 pool4 and pool5, 3x3 stride-1 pad-1 max
pools (DeepLab v1); at output stride 8 conv5 uses dilation 2. `fc6_dilation` is used as given
(DeepLab v1 LargeFOV passes `fc6_kernel=3, fc6_dilation=12, fc_dim=1024`).

Parameter names and torchvision's `vgg16` / `vgg16_bn` state dicts (`vgg16_variables_from_torch`
does the conversion):

  conv{s}_{i}/kernel, bias   <- features.{k}.weight (O, I, 3, 3 -> 3, 3, I, O), .bias
  bn{s}_{i}/scale, bias      <- features.{k+1}.weight, .bias            (vgg16_bn only)
  bn{s}_{i} (batch_stats) mean, var <- features.{k+1}.running_mean, .running_var
  fc6/kernel, bias           <- classifier.0.weight (4096, 25088 -> 4096, 512, 7, 7 -> 7, 7, 512, 4096)
  fc7/kernel, bias           <- classifier.3.weight (4096, 4096 -> 1, 1, 4096, 4096)

with conv index k = 0 2 5 7 10 12 14 17 19 21 24 26 28 (vgg16) and
0 3 7 10 14 17 20 24 27 30 34 37 40 (vgg16_bn) for conv1_1 ... conv5_3. torchvision's
classifier.6 (the 1000-way ImageNet classifier) has no counterpart.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.layers import Dropout, check_images, conv_impl_kwargs
from segjax.models.norm import BatchNorm
from segjax.ops.pool import max_pool

# (number of 3x3 convs, channel multiplier of `width`) per stage.
VGG16_STAGES = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))
VGG19_STAGES = ((2, 1), (2, 2), (4, 4), (4, 8), (4, 8))  # torchvision `vgg19` (for segjax.style)
_OUTPUT_STRIDES = (8, 16, 32)


def max_pool_2x2(x: jax.Array, *, ceil_mode: bool = True) -> jax.Array:
    """2x2 stride-2 max pool of `x` [N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C] (floor if not ceil_mode).

    Ceil mode pads the bottom/right with -inf, so a window is never all padding.
    """
    ph, pw = (x.shape[1] % 2, x.shape[2] % 2) if ceil_mode else (0, 0)
    return max_pool(x, 2, 2, ((0, ph), (0, pw)))


def pad_to_even(x: jax.Array) -> jax.Array:
    """Pads `x` [N, H, W, C] at the bottom/right with -inf to even H and W (ceil-mode pooling)."""
    ph, pw = x.shape[1] % 2, x.shape[2] % 2
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-jnp.inf)
    return x


def conv_relu_stack(
    x: jax.Array,
    features: Sequence[int],
    names: Sequence[str],
    *,
    train: bool,
    batch_norm: bool,
    dilation: int = 1,
    dtype: Any = jnp.float32,
    axis_name: str | None = None,
    bn_names: Sequence[str] | None = None,
) -> jax.Array:
    """3x3 conv (pad = dilation, bias) [+ BatchNorm] + ReLU for each entry of `features`.

    Must be called inside a compact method: the convs become children of the caller, named
    `names[i]` (and `bn_names[i]`, default `names[i]` with "conv" replaced by "bn").
    """
    for i, (f, name) in enumerate(zip(features, names, strict=True)):
        x = nn.Conv(
            f,
            (3, 3),
            padding=((dilation, dilation), (dilation, dilation)),
            kernel_dilation=(dilation, dilation),
            dtype=dtype,
            param_dtype=jnp.float32,
            name=name,
            **conv_impl_kwargs(),
        )(x)
        if batch_norm:
            bn_name = bn_names[i] if bn_names is not None else name.replace("conv", "bn", 1)
            x = BatchNorm(not train, axis_name, dtype=dtype, name=bn_name)(x)
        x = nn.relu(x)
    return x


class VGG16(nn.Module):
    """VGG-16 feature extractor (see the module docstring for layout, pooling and names).

    Attributes:
      output_stride: 32, 16 or 8 (stride of pool5/fc7 w.r.t. the input).
      fc6_kernel: odd kernel size of fc6 (7 as torchvision's classifier; 3 for DeepLab v1).
      fc6_dilation: dilation of fc6 (used as given; padding keeps the spatial size).
      fc_dim: channels of fc6 and fc7.
      include_fc: compute fc6/fc7 (else the output has no "fc7").
      dropout_rate: dropout after fc6 and fc7 (train mode, "dropout" rng).
      batch_norm: BatchNorm after every conv (vgg16_bn; not after fc6/fc7).
      width: channels of stage 1 (64 is VGG-16; smaller for tiny test/demo models).
      ceil_mode: ceil-mode 2x2 pools (Caffe) instead of floor mode (torchvision).
      keep_pool_indices: also return the argmax of every 2x2 pool (SegNet/DeconvNet decoders;
        output stride 32 only).
      dtype: compute dtype; parameters are float32.
      axis_name: pmap axis for synchronised BatchNorm.
      in_channels: channels of the input images.

    `__call__(images [N, H, W, in_channels], train)` returns a dict with `conv1..conv5` (stage
    outputs before pooling), `pool1..pool5` and, with `include_fc`, `fc7`, in the compute dtype;
    strides and channels are in `feature_strides` / `feature_channels`. With
    `keep_pool_indices`, `pool{s}_indices` [N, h, w, C] int32 holds for each pooled value the flat
    position `r * W' + c` of its maximum in the -inf-padded stage output `[N, 2h, 2w, C]`
    (`W' = 2w`; padding only when ceil_mode meets an odd size), ready for
    `segjax.ops.max_unpool(x, indices, (2h, 2w))` followed by a crop to `conv{s}`'s size.
    """

    output_stride: int = 32
    fc6_kernel: int = 7
    fc6_dilation: int = 1
    fc_dim: int = 4096
    include_fc: bool = True
    dropout_rate: float = 0.5
    batch_norm: bool = False
    width: int = 64
    ceil_mode: bool = True
    keep_pool_indices: bool = False
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    def validate(self) -> None:
        """Raises ValueError naming an unsupported output stride, fc6 kernel, width or pooling option."""
        if self.output_stride not in _OUTPUT_STRIDES:
            raise ValueError(f"VGG16 output_stride={self.output_stride!r} is not supported; allowed: {_OUTPUT_STRIDES}")
        if not (isinstance(self.fc6_kernel, int) and self.fc6_kernel >= 1 and self.fc6_kernel % 2 == 1):
            raise ValueError(f"fc6_kernel must be a positive odd int, got {self.fc6_kernel!r}")
        if not (isinstance(self.width, int) and self.width > 0):
            raise ValueError(f"width must be a positive int, got {self.width!r}")
        if self.keep_pool_indices and self.output_stride != 32:
            raise ValueError(f"keep_pool_indices needs output_stride=32, got {self.output_stride!r}")

    @property
    def feature_strides(self) -> dict[str, int]:
        """Stride of every returned feature map w.r.t. the input."""
        s4 = 8 if self.output_stride == 8 else 16
        strides = {"conv1": 1, "conv2": 2, "conv3": 4, "conv4": 8, "conv5": s4}
        strides.update(pool1=2, pool2=4, pool3=8, pool4=s4, pool5=self.output_stride)
        if self.include_fc:
            strides["fc7"] = self.output_stride
        return strides

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channels of every returned feature map."""
        channels = {}
        for s, (_, mult) in enumerate(VGG16_STAGES, start=1):
            channels[f"conv{s}"] = channels[f"pool{s}"] = mult * self.width
        if self.include_fc:
            channels["fc7"] = self.fc_dim
        return channels

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        self.validate()
        check_images(images, self.in_channels, "VGG16")
        x = images.astype(self.dtype)
        out: dict[str, jax.Array] = {}
        for s, (num_convs, mult) in enumerate(VGG16_STAGES, start=1):
            dilation = 2 if (s == 5 and self.output_stride == 8) else 1
            names = [f"conv{s}_{i}" for i in range(1, num_convs + 1)]
            x = conv_relu_stack(
                x, [mult * self.width] * num_convs, names, train=train, batch_norm=self.batch_norm,
                dilation=dilation, dtype=self.dtype, axis_name=self.axis_name,
            )
            out[f"conv{s}"] = x
            strided = not ((s == 5 and self.output_stride <= 16) or (s == 4 and self.output_stride == 8))
            if not strided:
                x = max_pool(x, 3, 1, 1)
            elif self.keep_pool_indices:
                from segjax.ops import max_pool_with_argmax  # noqa: PLC0415 (ops only needed here)

                x, out[f"pool{s}_indices"] = max_pool_with_argmax(pad_to_even(x) if self.ceil_mode else x, 2, 2)
            else:
                x = max_pool_2x2(x, ceil_mode=self.ceil_mode)
            out[f"pool{s}"] = x
        if self.include_fc:
            k, d = self.fc6_kernel, self.fc6_dilation
            pad = d * (k - 1) // 2
            for name, kernel, dil, padding in (("fc6", k, d, pad), ("fc7", 1, 1, 0)):
                x = nn.Conv(
                    self.fc_dim, (kernel, kernel), padding=((padding, padding), (padding, padding)),
                    kernel_dilation=(dil, dil), dtype=self.dtype, param_dtype=jnp.float32, name=name,
                    **conv_impl_kwargs(),
                )(x)
                x = Dropout(self.dropout_rate, self.axis_name)(nn.relu(x), not train)
            out["fc7"] = x
        return out


def torchvision_conv_indices(batch_norm: bool, stages=VGG16_STAGES) -> list[int]:
    """torchvision `features` indices of conv1_1 ... (conv5_3 for VGG-16, conv5_4 for `VGG19_STAGES`)."""
    idx, k = [], 0
    for num_convs, _ in stages:
        for _ in range(num_convs):
            idx.append(k)
            k += 3 if batch_norm else 2
        k += 1  # the pool
    return idx


def vgg16_variables_from_torch(
    state_dict: Mapping[str, Any], *, batch_norm: bool = False, include_fc: bool = True
) -> dict[str, dict[str, np.ndarray]]:
    """Maps a torchvision `vgg16` / `vgg16_bn` state dict (names -> arrays) onto `VGG16` variables.

    Returns `{"params": ..., "batch_stats": ...}` (numpy float32) for `VGG16(batch_norm=...,
    include_fc=...)` at width 64 with the default fc6 (7x7, 4096). Raises ValueError naming a
    missing key.
    """

    def get(key: str) -> np.ndarray:
        if key not in state_dict:
            raise ValueError(f"state dict has no {key!r} (is it a torchvision vgg16{'_bn' if batch_norm else ''}?)")
        return np.asarray(state_dict[key], dtype=np.float32)

    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    names = [f"conv{s}_{i}" for s, (n, _) in enumerate(VGG16_STAGES, start=1) for i in range(1, n + 1)]
    for name, k in zip(names, torchvision_conv_indices(batch_norm)):
        params[name] = {"kernel": get(f"features.{k}.weight").transpose(2, 3, 1, 0), "bias": get(f"features.{k}.bias")}
        if batch_norm:
            bn = name.replace("conv", "bn", 1)
            params[bn] = {"scale": get(f"features.{k + 1}.weight"), "bias": get(f"features.{k + 1}.bias")}
            stats[bn] = {"mean": get(f"features.{k + 1}.running_mean"), "var": get(f"features.{k + 1}.running_var")}
    if include_fc:
        w6 = get("classifier.0.weight")
        c = int(round(math.sqrt(w6.shape[1] / 512)))
        kernel6 = w6.reshape(w6.shape[0], 512, c, c).transpose(2, 3, 1, 0)
        params["fc6"] = {"kernel": kernel6, "bias": get("classifier.0.bias")}
        params["fc7"] = {"kernel": get("classifier.3.weight").T[None, None], "bias": get("classifier.3.bias")}
    return {"params": params, "batch_stats": stats}
