"""Layers shared by the feed-forward style networks (the AdaIN decoder, Johnson's TransformerNet).

Both networks pad with reflection instead of zeros ("to avoid border artifacts", Huang & Belongie
2017, Sec. 6; pytorch/examples `fast_neural_style` `ConvLayer`) and upsample by nearest-neighbour
repetition followed by a convolution, not by a transposed convolution.

* `reflect_pad(x, pad)`: `torch.nn.ReflectionPad2d(pad)` on NHWC (the edge is not repeated).
* `upsample_nearest(x, factor)`: `F.interpolate(x, scale_factor=factor, mode="nearest")`.
* `ReflectConv`: reflection padding of `kernel_size // 2`, then a VALID conv (`ConvLayer`).
* `InstanceNorm`: `torch.nn.InstanceNorm2d(C, affine=True)`: per sample and channel over H, W,
  biased variance, eps = 1e-5.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.ops._args import check_rank


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """Reflection padding of `pad` pixels on each side of H and W: [N, H, W, C] -> [N, H+2p, W+2p, C].

    Equal to `torch.nn.ReflectionPad2d(pad)`; like it, needs `pad < H` and `pad < W`.
    """
    check_rank(x, 4, "x", "N, H, W, C")
    if pad < 0:
        raise ValueError(f"pad must be non-negative, got {pad}")
    if pad >= min(x.shape[1], x.shape[2]):
        raise ValueError(f"reflection padding of {pad} needs H and W > {pad}, got input shape "
                         f"{x.shape}; use a larger image")
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling by an integer factor: [N, H, W, C] -> [N, fH, fW, C]."""
    check_rank(x, 4, "x", "N, H, W, C")
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class ReflectConv(nn.Module):
    """Reflection padding of `kernel_size // 2`, then a `kernel_size` conv with `stride`, no padding.

    pytorch/examples' `ConvLayer` and each `ReflectionPad2d(1)` + `Conv2d(.., (3, 3))` pair of
    the AdaIN decoder. Output size floor((H + 2 (k // 2) - k) / stride) + 1. Parameters:
    `conv/kernel` [k, k, in, features] (HWIO) and `conv/bias` [features].
    """

    features: int
    kernel_size: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = reflect_pad(x, self.kernel_size // 2)
        return nn.Conv(self.features, (self.kernel_size, self.kernel_size), (self.stride, self.stride),
                       padding="VALID", name="conv")(x)


class InstanceNorm(nn.Module):
    """Instance normalisation with a per-channel affine map (Ulyanov et al. 2016).

    y = (x - mean) / sqrt(var + eps) * scale + bias, mean and the biased variance over H, W of
    each sample and channel: `torch.nn.InstanceNorm2d(C, affine=True)` (eps 1e-5, scale = 1 and
    bias = 0 at init). [N, H, W, C] -> [N, H, W, C].
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
