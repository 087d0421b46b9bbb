"""Adaptive instance normalisation (Huang & Belongie, ICCV 2017, "Arbitrary Style Transfer in
Real-time with Adaptive Instance Normalization"), as in naoto0804/pytorch-AdaIN.

* `feature_mean_std(f)`: per sample and channel mean and std over H, W with the UNBIASED variance
  (Bessel's correction, `torch.var`'s default) plus eps inside the square root: the reference's
  `calc_mean_std`.
* `adain(content, style)`: Eq. 8, AdaIN(x, y) = sigma(y) (x - mu(x)) / sigma(x) + mu(y).
* `adain_blend(content, style, alpha)`: the content-style trade-off of Sec. 7 (runtime control),
  t = alpha AdaIN(f_c, f_s) + (1 - alpha) f_c (the reference's `style_transfer(..., alpha)`).
* `AdaINDecoder`: the decoder g, the mirror of VGG-19 up to relu4_1 (Sec. 6): reflection padding,
  3x3 convs, ReLU, nearest x2 upsampling, no normalisation layers (the reference's `net.decoder`).
* `adain_content_loss`, `adain_style_loss`: Eq. 12 and 13 (L_c = ||f(g(t)) - t||, L_s = sum_i
  ||mu(phi_i(g(t))) - mu(phi_i(s))|| + ||sigma(...) - sigma(...)|| over relu1_1 .. relu4_1) as
  the reference computes them: mean squared errors (`nn.MSELoss`), targets held constant. They take
  dicts of feature maps by layer name, so any encoder that names its ReLU outputs plugs in.

Training minimises L_c + lambda L_s with lambda = 10 in the reference (`--style_weight 10`); only
the decoder is trained, the encoder is a fixed, "normalised" VGG-19 with reflection padding.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.ops._args import check_rank
from segjax.style.layers import ReflectConv, upsample_nearest

ADAIN_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
ADAIN_CONTENT_LAYER = "relu4_1"


def feature_mean_std(features: jax.Array, eps: float = 1e-5) -> tuple[jax.Array, jax.Array]:
    """Mean and std of each sample's channels over H, W: [N, H, W, C] -> ([N, 1, 1, C], [N, 1, 1, C]).

    std = sqrt(var + eps) with var the unbiased variance (divides by H W - 1), as the reference's
    `calc_mean_std`; a single-pixel map (H W = 1) has no unbiased variance and raises ValueError.
    """
    check_rank(features, 4, "features", "N, H, W, C")
    hw = features.shape[1] * features.shape[2]
    if hw < 2:
        raise ValueError(f"features need at least 2 pixels for the unbiased variance, got shape "
                         f"{features.shape}")
    mean = jnp.mean(features, axis=(1, 2), keepdims=True)
    var = jnp.sum(jnp.square(features - mean), axis=(1, 2), keepdims=True) / (hw - 1)
    return mean, jnp.sqrt(var + eps)


def adain(content: jax.Array, style: jax.Array, eps: float = 1e-5) -> jax.Array:
    """AdaIN (Eq. 8): the content features re-normalised to the style's channel statistics.

    Args:
      content: [N, H, W, C] features of the content images.
      style: [N, H', W', C] features of the style images (any spatial size).
      eps: added to the unbiased variances before the square root.
    Returns:
      [N, H, W, C]: sigma(style) * (content - mu(content)) / sigma(content) + mu(style).
    """
    check_rank(content, 4, "content", "N, H, W, C")
    check_rank(style, 4, "style", "N, H', W', C")
    if content.shape[0] != style.shape[0] or content.shape[3] != style.shape[3]:
        raise ValueError(f"content and style must agree in N and C, got {content.shape} and "
                         f"{style.shape}")
    c_mean, c_std = feature_mean_std(content, eps)
    s_mean, s_std = feature_mean_std(style, eps)
    return (content - c_mean) / c_std * s_std + s_mean


def adain_blend(content: jax.Array, style: jax.Array, alpha=1.0, eps: float = 1e-5) -> jax.Array:
    """The decoder's target t = alpha AdaIN(content, style) + (1 - alpha) content (Sec. 7).

    alpha = 1 is full stylisation, alpha = 0 reconstructs the content; shapes as `adain`.
    `alpha` is a float or one value per example, [N] (style randomisation draws them; checked
    to lie in [0, 1] where concrete, not under jit).
    """
    if np.ndim(alpha) and np.shape(alpha) != (content.shape[0],):
        raise ValueError(f"alpha must be a float or one value per example [N={content.shape[0]}], "
                         f"got shape {np.shape(alpha)}")
    if not isinstance(alpha, jax.core.Tracer) and not np.all((np.asarray(alpha) >= 0) & (np.asarray(alpha) <= 1)):
        raise ValueError(f"alpha must be in [0, 1] (0: content only, 1: full style), got {alpha}")
    if np.ndim(alpha):
        alpha = jnp.reshape(alpha, (-1, 1, 1, 1))
    return alpha * adain(content, style, eps) + (1.0 - alpha) * content


class AdaINDecoder(nn.Module):
    """The AdaIN decoder: relu4_1-like features [N, h, w, C] -> images [N, 8h, 8w, out_channels].

    The reference's `net.decoder` with `width` = 64: nine (reflection pad 1, 3x3 conv) layers with
    output channels 4w, [x2] 4w, 4w, 4w, 2w, [x2] 2w, w, [x2] w, out_channels, each but the last
    followed by ReLU; [x2] is nearest upsampling before the conv. The input has 8w channels in the
    reference (512) but any C is accepted. Children `conv0` .. `conv8` (`ReflectConv`), in order;
    `from_torch_decoder` loads the reference's `decoder.pth`.

    Attributes:
      width: w, the channels of the last hidden layers (64 in the paper; small for tests).
      out_channels: 3 (RGB).
    """

    width: int = 64
    out_channels: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_rank(x, 4, "x", "N, h, w, C")
        w = self.width
        plan = [(4 * w, False), (4 * w, True), (4 * w, False), (4 * w, False), (2 * w, False),
                (2 * w, True), (w, False), (w, True), (self.out_channels, False)]
        for i, (features, upsample) in enumerate(plan):
            if upsample:
                x = upsample_nearest(x, 2)
            x = ReflectConv(features, 3, name=f"conv{i}")(x)
            if i < len(plan) - 1:
                x = nn.relu(x)
        return x


# Positions of the nine Conv2d layers in the reference's `decoder` nn.Sequential.
_TORCH_DECODER_CONVS = (1, 5, 8, 11, 14, 18, 21, 25, 28)


def from_torch_decoder(state_dict: Mapping[str, np.ndarray]) -> dict:
    """naoto0804/pytorch-AdaIN `decoder.pth` (names to NumPy arrays) -> `AdaINDecoder` variables.

    Keys `{i}.weight` [out, in, 3, 3] and `{i}.bias` for i in 1, 5, 8, 11, 14, 18, 21, 25, 28;
    a missing key raises ValueError naming it. The width is read from the weights' shapes.
    """
    params = {}
    for j, i in enumerate(_TORCH_DECODER_CONVS):
        try:
            weight, bias = state_dict[f"{i}.weight"], state_dict[f"{i}.bias"]
        except KeyError as e:
            raise ValueError(f"decoder state dict has no {e.args[0]!r}: expected the nn.Sequential "
                             "of naoto0804/pytorch-AdaIN net.decoder") from None
        params[f"conv{j}"] = {"conv": {"kernel": jnp.asarray(np.transpose(weight, (2, 3, 1, 0))),
                                       "bias": jnp.asarray(bias)}}
    return {"params": params}


def _mse(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(a - b))


def adain_content_loss(output_features: Mapping[str, jax.Array], target: jax.Array,
                       layer: str = ADAIN_CONTENT_LAYER) -> jax.Array:
    """L_c (Eq. 12): mean squared error between the decoded image's `layer` features and t.

    Args:
      output_features: the encoder's features of g(t), by layer name; `layer` is [N, h, w, C].
      target: t [N, h, w, C] (`adain_blend`'s output), held constant (no gradient flows into it).
      layer: the content layer, relu4_1 in the paper.
    Returns:
      scalar float, mean over all N h w C elements.
    """
    if layer not in output_features:
        raise ValueError(f"output_features has no layer {layer!r}; it has {sorted(output_features)}")
    return _mse(output_features[layer], jax.lax.stop_gradient(target))


def adain_style_loss(output_features: Mapping[str, jax.Array], style_features: Mapping[str, jax.Array],
                     layers: Sequence[str] = ADAIN_STYLE_LAYERS, eps: float = 1e-5) -> jax.Array:
    """L_s (Eq. 13): sum over `layers` of MSE(mu(out), mu(style)) + MSE(sigma(out), sigma(style)).

    mu and sigma are `feature_mean_std` ([N, C] each, unbiased variance + eps); the style's
    statistics are held constant. Each layer's maps may differ in size between the two dicts.
    Returns a scalar float.
    """
    total = jnp.zeros((), jnp.float32)
    for layer in layers:
        for name, feats in (("output_features", output_features), ("style_features", style_features)):
            if layer not in feats:
                raise ValueError(f"{name} has no layer {layer!r}; it has {sorted(feats)}")
        o_mean, o_std = feature_mean_std(output_features[layer], eps)
        s_mean, s_std = feature_mean_std(jax.lax.stop_gradient(style_features[layer]), eps)
        total = total + _mse(o_mean, s_mean) + _mse(o_std, s_std)
    return total
