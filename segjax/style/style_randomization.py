"""Style randomisation for domain adaptation: each source image re-rendered in the style of a
target image with AdaIN (Huang & Belongie, ICCV 2017, "Arbitrary Style Transfer in Real-time with
Adaptive Instance Normalization"), at a random content-style trade-off.

Re-rendering source images in the style of randomly paired target-domain images and learning
them against the source labels is Dundar et al.'s "domain stylization" (arXiv 1807.09384, 2018;
they stylise with FastPhotoStyle, here AdaIN); the trade-off alpha of AdaIN's Sec. 7.2,
t = alpha AdaIN(f(c), f(s)) + (1 - alpha) f(c), is drawn per example, so the segmenter sees the
whole range from the source's own look to the target's.

Two stylisers, both on pixels in 0..255 (NHWC RGB), returning 0..255:

* `pixel_adain(source, target, alpha)`: AdaIN on the pixels themselves (identity encoder and
  decoder): each channel of each source image takes the target image's channel mean and
  standard deviation (`segjax.style.adain`'s unbiased variance and eps), blended with alpha and
  clipped to 0..255. It moves colour statistics (mean colour, contrast per channel), not
  texture; it needs no weights.
* `AdaINStyliser`, loaded by `load_adain_styliser(workdir)` from a trained
  `python -m experiments.style --method=adain` run: the real AdaIN, the run's fixed VGG-19
  encoder to relu4_1, AdaIN on its features, the run's trained decoder
  (`segjax.style.feedforward.adain_apply`), clipped to 0..1 and scaled to 0..255.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from segjax.style.adain import AdaINDecoder, adain_blend
from segjax.style.adain_encoder import AdaINEncoder


def draw_alphas(keys: jax.Array, alpha_min: float) -> jax.Array:
    """One trade-off per example, uniform in [alpha_min, 1): keys [N] -> [N] float32."""
    return jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32, alpha_min, 1.0))(keys)


def pixel_adain(source: jax.Array, target: jax.Array, alpha=1.0, eps: float = 1e-5) -> jax.Array:
    """AdaIN on pixels: clip(alpha AdaIN(source, target) + (1 - alpha) source, 0, 255).

    Args:
      source: [N, H, W, C] images in 0..255 (the content).
      target: [N, H', W', C] images in 0..255 (their styles, paired by position).
      alpha: a float or [N], in [0, 1] (1: the target's channel statistics, 0: the source).
      eps: added to the unbiased variances (`segjax.style.adain.feature_mean_std`).
    Returns:
      [N, H, W, C] in 0..255.
    """
    return jnp.clip(adain_blend(source, target, alpha, eps), 0.0, 255.0)


@dataclasses.dataclass(frozen=True, eq=False)
class AdaINStyliser:
    """A trained AdaIN network: `styliser(source, target, alpha)` on 0..255 images [N, H, W, 3]
    (target [N, H', W', 3], alpha a float or [N]) -> [N, H, W, 3] in 0..255: the decoder's output
    for alpha AdaIN(f(c), f(s)) + (1 - alpha) f(c), cropped to H, W and clipped."""

    encoder: AdaINEncoder
    decoder: AdaINDecoder
    encoder_variables: Mapping[str, Any]
    decoder_variables: Mapping[str, Any]

    def __call__(self, source: jax.Array, target: jax.Array, alpha=1.0) -> jax.Array:
        from segjax.style.feedforward import adain_apply

        h, w = source.shape[1:3]
        out = adain_apply(self.encoder, self.decoder, self.encoder_variables, self.decoder_variables,
                          source / 255.0, target / 255.0, alpha)[:, :h, :w]
        return jnp.clip(out, 0.0, 1.0) * 255.0


def load_adain_styliser(workdir: str, flag: str = "config.uda.adain_model",
                        out: Callable[[str], None] = print) -> AdaINStyliser:
    """The AdaIN network of a `python -m experiments.style --method=adain --workdir=DIR` run: its
    `decoder.msgpack` and the encoder its run.json records (the converted VGG-19 `weights` it was
    given, or the random VGG-19 of its `seed`). Errors are ValueError / FileNotFoundError naming
    `flag` and the file."""
    from segjax.style.run_feedforward import adain_encoder, load_adain_decoder

    summary_file = os.path.join(workdir, "run.json")
    if not os.path.isfile(summary_file):
        raise FileNotFoundError(f"{flag}={workdir}: no {summary_file}; give the --workdir of a "
                                "`python -m experiments.style --method=adain` run")
    with open(summary_file) as f:
        try:
            summary = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{flag}={workdir}: {summary_file} is not JSON: {e}") from None
    if summary.get("method") != "adain":
        raise ValueError(f"{flag}={workdir}: the run's method is {summary.get('method')!r}, not "
                         "'adain': give the --workdir of a --method=adain run")
    if "encoder_weights" in summary:
        weights = summary["encoder_weights"]
    elif str(summary.get("encoder", "")).startswith("random VGG-19"):
        weights = None
    else:
        raise ValueError(f"{flag}={workdir}: {summary_file} does not record its encoder's weights "
                         "file (a run of an older segjax): run the style command again")
    encoder, make_encoder, _ = adain_encoder(weights, int(summary.get("seed", 0)), out)
    decoder_variables, width = load_adain_decoder(workdir, flag, 8 * encoder.width)
    return AdaINStyliser(encoder, AdaINDecoder(width=width), make_encoder(), decoder_variables)
