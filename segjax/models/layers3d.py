"""Layers shared by the volumetric models (`unet3d`, `vnet`): NDHWC volumes, DHWIO kernels.

* `check_volumes`: the input check (`[N, D, H, W, in_channels]`), failing by the model's name.
* `max_pool_2x2x2`: 2x2x2 stride-2 max pooling in ceil mode (`torch.nn.MaxPool3d(2,
  ceil_mode=True)`), so an odd size loses no voxel.
* `pad_to_even`: zero padding at the far end of D, H, W to even sizes, for a 2x2x2 stride-2
  convolution (V-Net's down-convolution) to see every voxel, the convolutional analogue of ceil mode.
* `UpConv2x`: the 2x2x2 stride-2 transposed convolution of both papers (`torch.nn.ConvTranspose3d(C,
  features, 2, stride=2)`). With kernel = stride its output blocks do not overlap, so it is written
  out as one matrix product and a reshape: out[n, 2d+a, 2h+b, 2w+c, o] = bias[o] + sum_i
  x[n, d, h, w, i] * kernel[a, b, c, o, i].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def check_volumes(images: jax.Array, in_channels: int, model: str) -> None:
    """Raises ValueError naming `model` unless `images` is `[N, D, H, W, in_channels]`."""
    if images.ndim != 5 or images.shape[-1] != in_channels:
        raise ValueError(f"{model} expects volumes [N, D, H, W, {in_channels}] (NDHWC), got shape "
                         f"{tuple(images.shape)}")


def max_pool_2x2x2(x: jax.Array) -> jax.Array:
    """Ceil-mode 2x2x2 stride-2 max pool: [N, D, H, W, C] -> [N, ceil(D/2), ceil(H/2), ceil(W/2), C].

    The far end of an odd axis is padded with -inf, so no window is all padding. The windows do not
    overlap, so this is a reshape and a max (whose gradient compiles several times faster on CPU
    than `lax.reduce_window`'s select-and-scatter). The gradient goes to the first maximum of each
    window (row-major over d, h, w), as torch's, chosen by an argmax over the window's 8 inputs in
    the backward pass itself. Not by `jnp.max`'s own gradient: that one splits the cotangent among
    the inputs equal to the forward's output and divides by their count, and XLA may recompute the
    input for the backward in another fusion, rounded differently (BatchNorm's affine map), so a
    window can have no equal input: 0 / 0. Measured: a 3-D U-Net's second SGD step had a NaN
    gradient when compiled at LLVM optimisation level 0."""
    pads = ((0, 0),) + tuple((0, s % 2) for s in x.shape[1:4]) + ((0, 0),)
    return _max_pool_2x2x2_even(jnp.pad(x, pads, constant_values=-jnp.inf))


def _windows(x: jax.Array) -> jax.Array:
    """[N, D, H, W, C] (even D, H, W) -> [N, D/2, H/2, W/2, C, 8], the window's inputs row-major."""
    n, d, h, w, c = x.shape
    return (x.reshape(n, d // 2, 2, h // 2, 2, w // 2, 2, c)
            .transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(n, d // 2, h // 2, w // 2, c, 8))


@jax.custom_vjp
def _max_pool_2x2x2_even(x: jax.Array) -> jax.Array:
    n, d, h, w, c = x.shape
    return jnp.max(x.reshape(n, d // 2, 2, h // 2, 2, w // 2, 2, c), axis=(2, 4, 6))


def _max_pool_fwd(x):
    return _max_pool_2x2x2_even(x), x


def _max_pool_bwd(x, g):
    n, d, h, w, c = x.shape
    first = jnp.argmax(_windows(x), axis=-1)  # the first maximum (a NaN wins: numpy's argmax)
    taps = jax.nn.one_hot(first, 8, dtype=g.dtype) * g[..., None]
    taps = taps.reshape(n, d // 2, h // 2, w // 2, c, 2, 2, 2).transpose(0, 1, 5, 2, 6, 3, 7, 4)
    return (taps.reshape(x.shape),)


_max_pool_2x2x2_even.defvjp(_max_pool_fwd, _max_pool_bwd)


def pad_to_even(x: jax.Array) -> jax.Array:
    """Zero-pads `x` [N, D, H, W, C] at the far end of D, H, W to even sizes."""
    pads = ((0, 0),) + tuple((0, s % 2) for s in x.shape[1:4]) + ((0, 0),)
    return jnp.pad(x, pads) if any(p[1] for p in pads) else x


class UpConv2x(nn.Module):
    """2x2x2 stride-2 transposed conv: [N, D, H, W, C] -> [N, 2D, 2H, 2W, features].

    The `kernel` param is `[2, 2, 2, features, C]`, the DHWIO kernel of the forward stride-2 conv
    features -> C whose adjoint this is (the convention of `segjax.models.layers.ConvTranspose`);
    a torch `ConvTranspose3d.weight` `[C, features, 2, 2, 2]` converts with
    `weight.transpose(2, 3, 4, 1, 0)`. Default init: lecun normal with fan-in 8 * features, like
    torch's for ConvTranspose3d weights.

    Attributes:
      features: output channels.
      dtype: compute dtype (None: the input's); parameters are float32.
    """

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=-2, out_axis=-1),
                            (2, 2, 2, self.features, x.shape[-1]), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        dtype = self.dtype or x.dtype
        n, d, h, w, _ = x.shape
        y = jnp.einsum("ndhwi,abcoi->ndahbwco", x.astype(dtype), kernel.astype(dtype))
        return y.reshape(n, 2 * d, 2 * h, 2 * w, self.features) + bias.astype(dtype)

