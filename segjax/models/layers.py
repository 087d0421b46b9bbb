"""Thin Flax layers over `segjax.ops` with PyTorch semantics and HWIO `kernel` (+ `bias`) params.

* `AtrousConv`: a stride-1 dilated conv with SAME padding (`segjax.ops.atrous_conv2d`, which drops
  kernel taps that can only read padding — exact, and much cheaper at rates near the map size).
* `ConvTranspose`: `torch.nn.ConvTranspose2d` semantics (`segjax.ops.conv_transpose2d`). Its kernel
  is stored `[kh, kw, features, in_features]`: the HWIO kernel of the *forward* conv whose adjoint
  this layer is (features -> in_features). A torch `ConvTranspose2d.weight` `[in, out, kh, kw]`
  converts with `weight.transpose(2, 3, 1, 0)`.
* `Dropout`: dropout whose mask of each example is drawn from the dropout key folded with the
  example's *global* position in the batch, so 1 device and N devices (pmap or mesh) drop the
  same units.
* `L2Normalize`: ParseNet's / SSD's Caffe `Normalize` layer (`across_spatial: false`,
  `channel_shared: false`): each position's channel vector divided by its L2 norm, times a learned
  per-channel scale.
* `bilinear_upsample_kernel` / `bilinear_init`: the FCN paper's fixed bilinear interpolation kernel
  for a transposed conv with kernel 2f - f % 2, stride f, padding f // 2 (output exactly f x the
  input; equal to `resize(..., "bilinear", align_corners=False)` away from the border).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.ops import atrous_conv2d, conv_transpose2d
from segjax.ops._args import positive_pair

Initializer = Callable[..., jax.Array]


def check_images(images: jax.Array, in_channels: int, model: str) -> None:
    """Raises ValueError naming `model` unless `images` is `[N, H, W, in_channels]`."""
    if images.ndim != 4 or images.shape[-1] != in_channels:
        raise ValueError(f"{model} expects images [N, H, W, {in_channels}], got shape {tuple(images.shape)}")


def conv_general_dilated_impl():
    """The convolution primitive `square_conv` hands to `nn.Conv` (None: lax's own).

    `SEGJAX_CONV_IMPL=segjax` uses `segjax.ops.conv_general_dilated` (stride-1 dilated convs tap
    by tap over the region that reads real input, strided 1×1 convs as subsample + matmul; exact),
    `lax` uses XLA's convolution, and the default `auto` picks segjax's on the CPU backend, where
    it made DeepLabV3-R50 (batch 4, 256²) 1.35× faster in eval and 1.37× in training
    (BENCHMARKS.md), and lax elsewhere (not yet measured on accelerators). Read when a model is
    traced; parameters are identical either way.
    """
    import os

    choice = os.environ.get("SEGJAX_CONV_IMPL", "auto")
    if choice not in ("auto", "lax", "segjax"):
        raise ValueError(f"SEGJAX_CONV_IMPL must be auto, lax or segjax, got {choice!r}")
    if choice == "segjax" or (choice == "auto" and jax.default_backend() == "cpu"):
        from segjax.ops import conv_general_dilated

        return conv_general_dilated
    return None


def conv_impl_kwargs() -> dict[str, Any]:
    """`nn.Conv` keyword arguments that select `conv_general_dilated_impl()` ({} for lax's)."""
    impl = conv_general_dilated_impl()
    return {} if impl is None else {"conv_general_dilated": impl}


def square_conv(
    features: int,
    kernel: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    use_bias: bool = False,
    dtype: Any = jnp.float32,
    name: str | None = None,
    kernel_init: Any = nn.initializers.lecun_normal(),
    bias_init: Any = nn.initializers.zeros,
) -> nn.Conv:
    """`nn.Conv` with a square kernel and torch's symmetric padding `dilation * (kernel - 1) // 2`.

    lax's "SAME" pads stride-2 convs asymmetrically; torch pads both sides equally, which is what
    converted torchvision weights expect. float32 parameters, compute in `dtype`. The convolution
    itself is `conv_general_dilated_impl()` (segjax's explicit form on CPU by default).
    """
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        **conv_impl_kwargs(),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        bias_init=bias_init,
        name=name,
    )


class Dropout(nn.Module):
    """Inverted dropout keyed by each example's global position in the batch.

    `flax.linen.Dropout` draws one mask for the array it sees, so under pmap each device's
    mask depends on how the batch was split (and on the device index when the key is folded
    with it). Here row `i` of the leading (batch) axis uses `fold_in(key, offset + i)`, where
    `key` is this layer's "dropout" key (the same on every device) and `offset` the global
    position of this device's first example: `axis_index(axis_name) * rows` under pmap, 0
    under jit (the batch is then global). The result is the same on any device count.

    Attributes:
      rate: probability of dropping a unit.
      axis_name: the pmap axis the batch is split over (the model's BatchNorm axis), or None.

    `__call__(x [B, ...], deterministic)` -> x with dropped units zeroed and the kept ones
    scaled by 1 / (1 - rate).
    """

    rate: float
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        key = self.make_rng("dropout")
        rows = x.shape[0]
        offset = 0 if self.axis_name is None else lax.axis_index(self.axis_name) * rows
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(rows))
        keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - self.rate, x.shape[1:]))(keys)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


def bilinear_upsample_kernel(factor, channels: int) -> np.ndarray:
    """FCN bilinear upsampling kernel `[k_h, k_w, channels, channels]`, k = 2f - f % 2.

    Per-channel (diagonal over the two channel axes) separable tent filter
    `(1 - |i - c| / f_)` with f_ = (k + 1) // 2 and centre c = f_ - 1 (k odd) or f_ - 0.5 (k even).
    Use with `ConvTranspose(channels, (k_h, k_w), stride=f, padding=f // 2)`.
    `factor` is an int or (f_h, f_w) pair >= 1.
    """
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    taps = []
    for f in positive_pair(factor, "factor"):
        k = 2 * f - f % 2
        half = (k + 1) // 2
        centre = half - 1 if k % 2 == 1 else half - 0.5
        taps.append(1.0 - np.abs(np.arange(k) - centre) / half)
    filt = np.outer(*taps).astype(np.float32)
    kernel = np.zeros((*filt.shape, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = filt[:, :, None]
    return kernel


def bilinear_init(factor) -> Initializer:
    """Kernel initializer `(key, shape, dtype)` giving `bilinear_upsample_kernel(factor, C)`.

    `shape` must be `[2f - f % 2, 2f - f % 2, C, C]` (a ConvTranspose with features == in_features).
    """
    def init(key, shape, dtype=jnp.float32):
        del key
        kernel = bilinear_upsample_kernel(factor, int(shape[-1]))
        if tuple(shape) != kernel.shape:
            raise ValueError(f"bilinear_init({factor!r}) needs kernel shape {kernel.shape}, "
                             f"got {tuple(shape)}")
        return jnp.asarray(kernel, dtype)

    return init


class AtrousConv(nn.Module):
    """Atrous (dilated) conv, stride 1, SAME padding: [N, H, W, C] -> [N, H, W, features].

    Attributes:
      features: output channels.
      kernel_size: int or (kh, kw).
      rate: dilation, int or pair.
      use_bias: add a `bias` [features].
      dtype: compute dtype (None: the input's); param_dtype: parameter dtype.
      kernel_init, bias_init: initializers of `kernel` [kh, kw, C, features] and `bias`.
    """

    features: int
    kernel_size: Any = 3
    rate: Any = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = positive_pair(self.kernel_size, "kernel_size")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features),
                            self.param_dtype)
        dtype = self.dtype or x.dtype
        y = atrous_conv2d(x.astype(dtype), kernel.astype(dtype), self.rate)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(dtype)
        return y


class ConvTranspose(nn.Module):
    """Transposed conv like `torch.nn.ConvTranspose2d`: [N, H, W, C] -> [N, H', W', features].

    H' = (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1.
    The `kernel` param is `[kh, kw, features, C]` (the forward conv features -> C whose adjoint
    this is); the default init (lecun normal over axis -2) therefore uses fan-in
    kh * kw * features, which is also what torch uses for ConvTranspose2d weights.

    Attributes:
      features: output channels.
      kernel_size: int or (kh, kw).
      stride, padding, output_padding, dilation: int or pair, torch semantics.
      use_bias: add a `bias` [features].
      dtype: compute dtype (None: the input's); param_dtype: parameter dtype.
      kernel_init, bias_init: initializers (e.g. `bilinear_init(f)` for FCN upsampling).
    """

    features: int
    kernel_size: Any = 2
    stride: Any = 1
    padding: Any = 0
    output_padding: Any = 0
    dilation: Any = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = positive_pair(self.kernel_size, "kernel_size")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, self.features, x.shape[-1]),
                            self.param_dtype)
        dtype = self.dtype or x.dtype
        y = conv_transpose2d(x.astype(dtype), kernel.astype(dtype), stride=self.stride,
                             padding=self.padding, output_padding=self.output_padding,
                             dilation=self.dilation)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(dtype)
        return y


class L2Normalize(nn.Module):
    """`y = scale * x / sqrt(sum_c x_c^2 + eps)` per position over the last (channel) axis.

    Liu, Rabinovich & Berg (ParseNet, 2015), Sec. 3.3: features of different layers differ in
    scale by orders of magnitude, so each is L2-normalised per position and rescaled by a learned
    per-channel `scale` [C] (float32) before they are combined. The authors' Caffe `Normalize`
    layer (weiliu89/caffe, also SSD's) has `across_spatial: false`, `channel_shared: false`, eps
    1e-10 inside the square root; ParseNet initialises the scale to 10 for fc7 and its pooled
    global feature (SSD uses 20 for conv4_3). The norm is taken in float32 whatever the input's
    dtype; the output has the input's dtype.

    Attributes:
      scale_init: initial value of every `scale` entry.
      eps: added to the squared norm (keeps an all-zero vector finite, gradient included).

    `__call__(x [..., C])` -> [..., C].
    """

    scale_init: float = 10.0
    eps: float = 1e-10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.constant(self.scale_init), (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        inv = lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * inv * scale).astype(x.dtype)


__all__ = ["AtrousConv", "ConvTranspose", "L2Normalize", "bilinear_init", "bilinear_upsample_kernel",
           "check_images", "square_conv"]
