"""Gatys et al. (2016), "Image Style Transfer Using Convolutional Neural Networks": optimise the pixels.

The image x minimises (eq. 7) `α · L_content(x) + β · L_style(x) [+ γ · TV(x)]` on VGG-19 features:

* content: `content_loss` (MSE) of `relu4_2`. The paper names `conv4_2`, but its Caffe VGG
  applies the ReLU in place, so the `conv4_2` blob it read *is* the rectified response:
  `relu4_2` here (jcjohnson/neural-style's choice too). `VGGFeatures` can return the
  pre-ReLU `conv4_2` if wanted (`content_layer="conv4_2"`).
* style: `style_loss` over `relu1_1, relu2_1, relu3_1, relu4_1, relu5_1` (the paper's conv{s}_1,
  same in-place ReLU), Gram matrices normalised as DESIGN's `gram_matrix` (FᵀF / CHW) and layer
  weights 1 by default. With these normalisations α = 1, β = 1e6 (the PyTorch neural-style
  tutorial's weights, which use the same Gram and MSE) play the role of the paper's α/β = 1e-3.
* optimiser: L-BFGS (as the paper, section 2), `optax.lbfgs` with its zoom line search, one
  jitted step per iteration; `optax.value_and_grad_from_state` reuses the line search's value and
  gradient so each iteration costs one forward/backward unless the line search needs more.
* start: the content image (`init="content"`) or white noise, uniform in [0, 1] (`"noise"`, the
  paper's figures; seeded).
* pixel range: the optimisation is unconstrained (as jcjohnson/neural-style; the PyTorch
  tutorial clamps every closure, which would leave optax's cached value and gradient stale);
  the returned image is clipped to [0, 1].

Example:
  >>> vgg = VGGFeatures(depth=19)
  >>> variables = vgg.init(jax.random.key(0), content)        # or load_vgg_weights(...)
  >>> result = gatys(vgg, variables, content, style, steps=100)   # content, style: [1, H, W, 3]
  >>> result.image, result.history[-1]["loss"]
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from segjax.style.losses import content_loss, gram_matrix, style_loss, total_variation_loss
from segjax.style.vgg import GATYS_CONTENT_LAYER, GATYS_STYLE_LAYERS, VGGFeatures

INITS = ("content", "noise")
DEFAULT_CONTENT_WEIGHT = 1.0  # α
DEFAULT_STYLE_WEIGHT = 1e6  # β


class GatysResult(NamedTuple):
    """`image` [1, H, W, 3] in [0, 1] (clipped); `history`: one dict per step with `step` and
    `loss` (the objective after that step; step 0 is the start) and, at the start, every
    `log_every` steps and at the last one, the weighted `content`, `style` and `tv` terms."""

    image: jax.Array
    history: list[dict[str, float]]


def gatys_objective(vgg: VGGFeatures, variables: Mapping[str, Any], content: jax.Array,
                    style: jax.Array, *, content_layer: str = GATYS_CONTENT_LAYER,
                    style_layers: Sequence[str] = GATYS_STYLE_LAYERS,
                    content_weight: float = DEFAULT_CONTENT_WEIGHT,
                    style_weight: float = DEFAULT_STYLE_WEIGHT,
                    layer_weights: Mapping[str, float] | None = None, tv_weight: float = 0.0
                    ) -> tuple[Callable[..., dict[str, jax.Array]], dict[str, Any]]:
    """The objective as `(terms, targets)`: `terms(image [1, H, W, 3], variables, targets)` returns
    the weighted scalars `{"total", "content", "style", "tv"}`.

    `targets` holds the `content` features of `content` [1, H, W, 3], the Gram matrices of
    `style` [1, H', W', 3] (both in [0, 1]), computed once here, and the weights (α, β, γ and
    the per-layer w_l, default 1). `vgg` is cloned to return exactly `content_layer` and
    `style_layers`. `terms` is pure and the same function for the same network and layers, so
    jitted steps built on it compile once for any images, weights and VGG variables.
    """
    for name, value in (("content_weight", content_weight), ("style_weight", style_weight),
                        ("tv_weight", tv_weight), *(layer_weights or {}).items()):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    style_layers = tuple(style_layers)
    if layer_weights is not None and set(layer_weights) != set(style_layers):
        raise ValueError(f"layer_weights are for {sorted(layer_weights)}, style_layers are {sorted(style_layers)}")
    net = vgg.clone(layers=tuple(dict.fromkeys((content_layer, *style_layers))))
    features = jax.jit(net.apply)
    targets = {
        "content": features(variables, content)[content_layer],
        "grams": {k: gram_matrix(v) for k, v in features(variables, style).items() if k in style_layers},
        "weights": jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), {
            "content": content_weight, "style": style_weight, "tv": tv_weight,
            "layers": {k: (layer_weights or {}).get(k, 1.0) for k in style_layers}}),
    }
    return _terms(net, content_layer, style_layers), targets


@functools.lru_cache(maxsize=None)
def _terms(net: VGGFeatures, content_layer: str, style_layers: tuple[str, ...]) -> Callable[..., Any]:
    """`terms(image, variables, targets)` of `gatys_objective`, one function per configuration."""

    def terms(image: jax.Array, variables: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, jax.Array]:
        f = net.apply(variables, image)
        w = targets["weights"]
        out = {"content": w["content"] * content_loss(f[content_layer], targets["content"]),
               "style": w["style"] * style_loss(f, targets["grams"], w["layers"]),
               "tv": w["tv"] * total_variation_loss(image)}
        out["total"] = out["content"] + out["style"] + out["tv"]
        return out

    return terms


@functools.lru_cache(maxsize=None)
def _compiled(terms: Callable[..., Any], memory_size: int) -> tuple[optax.GradientTransformation, Callable, Callable]:
    """optax's L-BFGS, its jitted iteration `step(image, state, variables, targets) -> (image,
    state, objective at the new image)` and the jitted `terms`, built once per configuration."""
    opt = optax.lbfgs(memory_size=memory_size)

    @jax.jit
    def step(image, state, variables, targets):
        def total(x):
            return terms(x, variables, targets)["total"]

        value, grad = optax.value_and_grad_from_state(total)(image, state=state)
        updates, state = opt.update(grad, state, image, value=value, grad=grad, value_fn=total)
        image = optax.apply_updates(image, updates)
        return image, state, otu.tree_get(state, "value")

    return opt, step, jax.jit(terms)


def gatys(vgg: VGGFeatures, variables: Mapping[str, Any], content: jax.Array, style: jax.Array, *,
          steps: int = 100, init: str = "content", seed: int = 0, memory_size: int = 10,
          log_every: int = 10, progress: Callable[[dict[str, float]], None] | None = None,
          **objective: Any) -> GatysResult:
    """Stylises `content` [1, H, W, 3] with `style` [1, H', W', 3] (RGB in [0, 1]) by L-BFGS.

    Args:
      vgg, variables: the feature network (`VGGFeatures`, its `layers` are replaced) and its
        variables (`load_vgg_weights` or `vgg.init`).
      steps: L-BFGS iterations (each one line search).
      init: "content" or "noise" (white noise in [0, 1] from `seed`).
      memory_size: L-BFGS history length.
      log_every: every so many steps (and at the last) the history holds the separate terms and
        `progress(entry)` is called with it.
      **objective: `gatys_objective`'s keywords (`content_layer`, `style_layers`,
        `content_weight`, `style_weight`, `layer_weights`, `tv_weight`).

    Raises:
      ValueError: a bad argument (named), or a loss that is not finite (names the step).
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not (isinstance(memory_size, int) and memory_size >= 1):
        raise ValueError(f"memory_size must be a positive int, got {memory_size!r}")
    if not (isinstance(log_every, int) and log_every >= 1):
        raise ValueError(f"log_every must be a positive int, got {log_every!r}")
    for name, image in (("content", content), ("style", style)):
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[-1] != 3:
            raise ValueError(f"{name} must be one RGB image [1, H, W, 3], got shape {tuple(image.shape)}")
    content, style = jnp.asarray(content, jnp.float32), jnp.asarray(style, jnp.float32)
    for name, image in (("content", content), ("style", style)):
        if not bool(jnp.all(jnp.isfinite(image))):
            raise ValueError(f"{name} image has NaN or inf pixels")
    terms, targets = gatys_objective(vgg, variables, content, style, **objective)
    opt, step, parts = _compiled(terms, memory_size)
    image = content if init == "content" else jax.random.uniform(jax.random.key(seed), content.shape)
    state = opt.init(image)
    start = {k: float(v) for k, v in parts(image, variables, targets).items()}
    history = [{"step": 0, "loss": start.pop("total"), **start}]
    for i in range(1, steps + 1):
        image, state, value = step(image, state, variables, targets)
        entry = {"step": i, "loss": float(value)}
        if not math.isfinite(entry["loss"]):
            raise ValueError(f"Gatys loss is {entry['loss']} at step {i}: lower the style/content "
                             "weights or check the images' range ([0, 1])")
        if i % log_every == 0 or i == steps:
            entry.update({k: float(v) for k, v in parts(image, variables, targets).items() if k != "total"})
            if progress is not None:
                progress(entry)
        history.append(entry)
    return GatysResult(jnp.clip(image, 0.0, 1.0), history)
