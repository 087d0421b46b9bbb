"""Style-transfer losses on VGG features: Gram matrices, content, style, total variation, perceptual.

All take NHWC arrays and return float32 scalars; weights are left to the caller except in
`perceptual_loss`, which is Johnson et al.'s objective with pytorch/examples' weights.

Example (Johnson et al.'s perceptual loss of a batch `y` of generated images for content `x`):
  >>> vgg = VGGFeatures(depth=16, layers=JOHNSON_LAYERS)
  >>> style_grams = {k: gram_matrix(f) for k, f in vgg.apply(variables, style_image).items()}
  >>> losses = perceptual_loss(vgg.apply(variables, y), vgg.apply(variables, x), style_grams)
  >>> losses["total"], losses["content"], losses["style"]
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

# Johnson et al. (2016), section 3 / pytorch/examples fast_neural_style: VGG-16 features.
JOHNSON_CONTENT_LAYER = "relu2_2"
JOHNSON_STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
JOHNSON_LAYERS = JOHNSON_STYLE_LAYERS  # the content layer is one of them
JOHNSON_CONTENT_WEIGHT = 1e5  # pytorch/examples fast_neural_style --content-weight
JOHNSON_STYLE_WEIGHT = 1e10  # --style-weight


def gram_matrix(features: jax.Array) -> jax.Array:
    """Gram matrix `[N, C, C]` of `features` `[N, H, W, C]`: `FᵀF / (C·H·W)` with `F` = [H·W, C].

    The normalisation of pytorch/examples fast_neural_style (`utils.gram_matrix`), so the style
    weights of that code apply unchanged; Gatys et al. (2016, eq. 3) use the unnormalised FᵀF.
    Computed in float32.
    """
    if features.ndim != 4:
        raise ValueError(f"gram_matrix expects features [N, H, W, C], got shape {tuple(features.shape)}")
    n, h, w, c = features.shape
    f = features.astype(jnp.float32).reshape(n, h * w, c)
    return jnp.einsum("npc,npd->ncd", f, f) / (c * h * w)


def _mse(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared difference of `features` and `target` ([N, H, W, C] each; `target` may have
    batch 1): `torch.nn.functional.mse_loss`, as pytorch/examples' content term. Gatys et al.'s
    eq. 1 is ½·Σ instead of the mean: the two differ by the constant N·H·W·C/2."""
    if target.ndim != 4 or target.shape[1:] != features.shape[1:]:
        raise ValueError(f"content target {tuple(target.shape)} does not match features {tuple(features.shape)}")
    return _mse(features, jnp.broadcast_to(target, features.shape))


def style_loss(features: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array],
               weights: Mapping[str, float] | None = None) -> jax.Array:
    """`Σ_l w_l · mean((gram_matrix(features[l]) - target_grams[l])²)` over the layers of `target_grams`.

    Args:
      features: layer name -> [N, H, W, C] activations of the images being scored.
      target_grams: layer name -> [N or 1, C, C] Gram matrices of the style image(s) (broadcast
        over the batch, like pytorch/examples' `gm_s[:n_batch]`).
      weights: layer name -> weight (default 1 for every layer: pytorch/examples' plain sum;
        Gatys et al. use w_l = 1/5 over their five layers, eq. 5).
    """
    if not target_grams:
        raise ValueError("style_loss needs at least one layer in target_grams")
    missing = sorted(set(target_grams) - set(features))
    if missing:
        raise ValueError(f"style layers {missing} are not among the features ({sorted(features)})")
    if weights is not None and set(weights) != set(target_grams):
        raise ValueError(f"weights are for layers {sorted(weights)}, the targets for {sorted(target_grams)}")
    total = jnp.zeros((), jnp.float32)
    for name, target in target_grams.items():
        gram = gram_matrix(features[name])
        if target.ndim != 3 or target.shape[1:] != gram.shape[1:]:
            raise ValueError(f"style target {name} has shape {tuple(target.shape)}, expected [N or 1, "
                             f"{gram.shape[1]}, {gram.shape[2]}]")
        total += (1.0 if weights is None else weights[name]) * _mse(gram, jnp.broadcast_to(target, gram.shape))
    return total


def total_variation_loss(images: jax.Array, *, kind: str = "squared") -> jax.Array:
    """Total-variation regulariser of `images` [N, H, W, C], summed over the batch.

    kind="squared": `½ Σ_{i<H-1, j<W-1} (x[i,j] - x[i,j+1])² + (x[i,j] - x[i+1,j])²` — the energy
    whose gradient the TV module of Johnson et al.'s code applies (jcjohnson/neural-style
    `TVLoss`, fast-neural-style `TotalVariation`, strength 1e-6 on [0, 255] images there; the
    last row and column only enter through their neighbours). pytorch/examples fast_neural_style
    has no TV term.
    kind="absolute": `Σ |x[i,j+1] - x[i,j]| + Σ |x[i+1,j] - x[i,j]|` over all neighbour pairs,
    the anisotropic TV of `tf.image.total_variation` (Rudin, Osher & Fatemi 1992).
    """
    if images.ndim != 4:
        raise ValueError(f"total_variation_loss expects images [N, H, W, C], got shape {tuple(images.shape)}")
    x = images.astype(jnp.float32)
    if kind == "squared":
        core = x[:, :-1, :-1]
        return 0.5 * (jnp.sum(jnp.square(core - x[:, :-1, 1:])) + jnp.sum(jnp.square(core - x[:, 1:, :-1])))
    if kind == "absolute":
        return jnp.sum(jnp.abs(jnp.diff(x, axis=1))) + jnp.sum(jnp.abs(jnp.diff(x, axis=2)))
    raise ValueError(f"kind must be 'squared' or 'absolute', got {kind!r}")


def perceptual_loss(features: Mapping[str, jax.Array], content_features: Mapping[str, jax.Array],
                    style_grams: Mapping[str, jax.Array], *,
                    content_layer: str = JOHNSON_CONTENT_LAYER,
                    style_layers: Sequence[str] = JOHNSON_STYLE_LAYERS,
                    content_weight: float = JOHNSON_CONTENT_WEIGHT,
                    style_weight: float = JOHNSON_STYLE_WEIGHT) -> dict[str, jax.Array]:
    """Johnson et al. (2016) perceptual loss, as pytorch/examples fast_neural_style trains with.

    `content_weight · content_loss(features[relu2_2], content_features[relu2_2]) + style_weight ·
    Σ_{relu1_2, relu2_2, relu3_3, relu4_3} mse(gram(features[l]), style_grams[l])`, with the features
    of `VGGFeatures(depth=16, layers=JOHNSON_LAYERS)` on [0, 1] images (pytorch/examples feeds
    [0, 255] images through `normalize_batch`, which divides by 255 first: the same VGG input).

    Args:
      features: VGG features of the generated images ŷ.
      content_features: VGG features of the content images x (same batch).
      style_grams: `gram_matrix` of the style image's features, [1 or N, C, C] per style layer.

    Returns:
      `{"total", "content", "style"}` scalars, `content` and `style` already weighted.
    """
    content = content_weight * content_loss(features[content_layer], content_features[content_layer])
    style = style_weight * style_loss(features, {k: style_grams[k] for k in style_layers})
    return {"total": content + style, "content": content, "style": style}
