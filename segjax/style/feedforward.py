"""Training and applying the feed-forward stylisers of `python -m experiments.style`.

* "fast" (Johnson, Alahi & Fei-Fei, ECCV 2016; pytorch/examples `fast_neural_style`): one
  `TransformerNet` per style image, trained with the perceptual loss (Sec. 3: VGG-16 relu2_2
  content, relu1_2/2_2/3_3/4_3 Gram style; weights 1e5 and 1e10) by Adam, lr 1e-3, batch 4.
  The network works on [0, 255] images as the reference's does (`net(x * 255) / 255` here), so
  the reference's published models, converted by `from_torch_transformer_net`, apply unchanged.
* "adain" (Huang & Belongie, ICCV 2017; naoto0804/pytorch-AdaIN): the decoder g trained with
  L_c + 10 L_s (Eq. 11-13) through a fixed `AdaINEncoder`, Adam lr 1e-4 decayed as the
  reference's `adjust_learning_rate`, lr / (1 + 5e-5 t), batch 8; applied with the content-style
  trade-off alpha (Sec. 7.2).

The references train on COCO (and WikiArt for AdaIN's styles) for 2 epochs / 160k iterations. Here
the content set is random crops, flipped at random, of scikit-image's bundled photographs
(`CONTENT_PHOTOS`) and AdaIN's style set the bundled textures (`STYLE_TEXTURES`): a CPU-sized
stand-in, enough to show the losses fall, not to generalise to new photographs.

Variables are saved as flax msgpack (`save_variables`, `load_variables`); every image is
NHWC RGB in [0, 1].
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from segjax.style.adain import AdaINDecoder, adain, adain_blend, adain_content_loss, adain_style_loss
from segjax.style.adain_encoder import AdaINEncoder
from segjax.style.images import load_image
from segjax.style.losses import (JOHNSON_CONTENT_WEIGHT, JOHNSON_LAYERS, JOHNSON_STYLE_WEIGHT,
                                 gram_matrix, perceptual_loss)
from segjax.style.transformer_net import TransformerNet
from segjax.style.vgg import VGGFeatures, imagenet_normalize

CONTENT_PHOTOS = ("astronaut", "chelsea", "coffee")
STYLE_TEXTURES = ("brick", "grass", "gravel")
FAST_LR, FAST_BATCH = 1e-3, 4  # pytorch/examples --lr, --batch-size
ADAIN_LR, ADAIN_LR_DECAY, ADAIN_BATCH = 1e-4, 5e-5, 8  # naoto0804 train.py defaults
ADAIN_STYLE_WEIGHT = 10.0


def crop_pool(names: Sequence[str], size: int) -> list[np.ndarray]:
    """The pictures `names` [1, h, w, 3], scaled so that their longer side is 2 `size` (their
    shorter side at least `size`), to draw `random_crops` from."""
    pool = []
    for name in names:
        image = load_image(name, 2 * size)
        h, w = image.shape[1:3]
        if min(h, w) < size:
            image = load_image(name, math.ceil(size * max(h, w) / min(h, w)))
        pool.append(image)
    return pool


def random_crops(pool: Sequence[np.ndarray], size: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """`batch` crops [batch, size, size, 3] of random pictures of `pool` at random places, each
    flipped left-right with probability 1/2."""
    crops = []
    for _ in range(batch):
        image = pool[rng.integers(len(pool))][0]
        y = rng.integers(image.shape[0] - size + 1)
        x = rng.integers(image.shape[1] - size + 1)
        crop = image[y:y + size, x:x + size]
        crops.append(crop[:, ::-1] if rng.integers(2) else crop)
    return np.stack(crops).astype(np.float32)


def fast_stylize(net: TransformerNet, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
    """The TransformerNet on [0, 1] images [N, H, W, 3] -> [N, H, W, 3] (unclipped), through the
    reference's [0, 255] range; cropped back to H, W where they are not multiples of 4."""
    h, w = images.shape[1:3]
    return net.apply(variables, images * 255.0)[:, :h, :w] / 255.0


def fast_losses(net: TransformerNet, vgg: VGGFeatures, net_variables: Mapping[str, Any],
                vgg_variables: Mapping[str, Any], content: jax.Array, style_grams: Mapping[str, jax.Array],
                content_weight: float = JOHNSON_CONTENT_WEIGHT,
                style_weight: float = JOHNSON_STYLE_WEIGHT) -> dict[str, jax.Array]:
    """Johnson et al.'s training objective on a batch `content` [N, H, W, 3]:
    `perceptual_loss(vgg(net(x)), vgg(x), style_grams)`; `{"total", "content", "style"}`."""
    n = content.shape[0]
    y = fast_stylize(net, net_variables, content)
    # One VGG pass over [y; x] instead of two: the same features, half the program to compile.
    features = vgg.apply(vgg_variables, jnp.concatenate([y, content]))
    return perceptual_loss({k: f[:n] for k, f in features.items()}, {k: f[n:] for k, f in features.items()},
                           style_grams, content_weight=content_weight, style_weight=style_weight)


@functools.lru_cache(maxsize=None)
def fast_train_step(net: TransformerNet, vgg: VGGFeatures, lr: float = FAST_LR,
                    content_weight: float = JOHNSON_CONTENT_WEIGHT,
                    style_weight: float = JOHNSON_STYLE_WEIGHT) -> tuple[optax.GradientTransformation, Callable]:
    """(optax Adam, jitted step): `step(net_variables, opt_state, vgg_variables, style_grams, batch)`
    -> (new variables, new opt_state, losses of `batch` before the update). Cached per
    configuration, so tests and repeated runs share one compile."""
    opt = optax.adam(lr)

    @jax.jit
    def step(variables, opt_state, vgg_variables, style_grams, batch):
        def total(v):
            losses = fast_losses(net, vgg, v, vgg_variables, batch, style_grams, content_weight, style_weight)
            return losses["total"], losses

        grads, losses = jax.grad(total, has_aux=True)(variables)
        updates, opt_state = opt.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state, losses

    return opt, step


def adain_encode(encoder: AdaINEncoder, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    """The encoder's {relu1_1, ..., relu4_1} of [0, 1] images; ImageNet-normalised first unless the
    encoder has `vgg_normalised.pth`'s own preprocessing conv."""
    return encoder.apply(variables, images if encoder.preprocess else imagenet_normalize(images))


def adain_apply(encoder: AdaINEncoder, decoder: AdaINDecoder, encoder_variables: Mapping[str, Any],
                decoder_variables: Mapping[str, Any], content: jax.Array, style: jax.Array,
                alpha: float = 1.0) -> jax.Array:
    """g(alpha AdaIN(f(c), f(s)) + (1 - alpha) f(c)): content [N, H, W, 3], style [N, H', W', 3]
    -> [N, 8 ceil(H/8), 8 ceil(W/8), 3], unclipped (the reference's `style_transfer`)."""
    fc = adain_encode(encoder, encoder_variables, content)["relu4_1"]
    fs = adain_encode(encoder, encoder_variables, style)["relu4_1"]
    return decoder.apply(decoder_variables, adain_blend(fc, fs, alpha))


def adain_losses(encoder: AdaINEncoder, decoder: AdaINDecoder, encoder_variables: Mapping[str, Any],
                 decoder_variables: Mapping[str, Any], content: jax.Array, style: jax.Array,
                 style_weight: float = ADAIN_STYLE_WEIGHT) -> dict[str, jax.Array]:
    """The reference's `Net.forward` loss on a batch of (content, style) pairs [N, H, W, 3]:
    t = AdaIN(f(c), f(s)), L_c(f(g(t)), t) + style_weight L_s(f(g(t)), f(s));
    `{"total", "content", "style"}` with `style` already weighted."""
    fc = adain_encode(encoder, encoder_variables, content)
    fs = adain_encode(encoder, encoder_variables, style)
    t = adain(fc["relu4_1"], fs["relu4_1"])
    fg = adain_encode(encoder, encoder_variables, decoder.apply(decoder_variables, t))
    lc = adain_content_loss(fg, t)
    ls = style_weight * adain_style_loss(fg, fs)
    return {"total": lc + ls, "content": lc, "style": ls}


@functools.lru_cache(maxsize=None)
def adain_train_step(encoder: AdaINEncoder, decoder: AdaINDecoder, lr: float = ADAIN_LR,
                     lr_decay: float = ADAIN_LR_DECAY, style_weight: float = ADAIN_STYLE_WEIGHT
                     ) -> tuple[optax.GradientTransformation, Callable]:
    """(optax Adam with lr / (1 + lr_decay t), jitted step): `step(decoder_variables, opt_state,
    encoder_variables, content, style)` -> (new variables, new opt_state, losses before the update).
    Only the decoder is trained."""
    opt = optax.adam(lambda t: lr / (1.0 + lr_decay * t))

    @jax.jit
    def step(variables, opt_state, encoder_variables, content, style):
        def total(v):
            losses = adain_losses(encoder, decoder, encoder_variables, v, content, style, style_weight)
            return losses["total"], losses

        grads, losses = jax.grad(total, has_aux=True)(variables)
        updates, opt_state = opt.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state, losses

    return opt, step


def train(step: Callable, opt: optax.GradientTransformation, variables: Any, batches: Callable[[int], tuple],
          steps: int, *, log_every: int = 10, progress: Callable[[dict], None] | None = None
          ) -> tuple[Any, list[dict[str, float]]]:
    """Runs `step(variables, opt_state, *batches(i))` for i = 1 .. `steps`; returns the trained
    variables and the history `[{"step", "loss", "content", "style"}]` (each batch's losses before
    its update). `progress` sees every `log_every`-th entry and the last. A non-finite loss raises
    ValueError naming the step."""
    opt_state = opt.init(variables)
    history = []
    for i in range(1, steps + 1):
        variables, opt_state, losses = step(variables, opt_state, *batches(i))
        entry = {"step": i, "loss": float(losses["total"]), "content": float(losses["content"]),
                 "style": float(losses["style"])}
        if not math.isfinite(entry["loss"]):
            raise ValueError(f"the training loss is {entry['loss']} at step {i}: lower the learning "
                             "rate or check the images' range ([0, 1])")
        history.append(entry)
        if progress is not None and (i % log_every == 0 or i in (1, steps)):
            progress(entry)
    return variables, history


def style_grams(vgg: VGGFeatures, variables: Mapping[str, Any], style: jax.Array) -> dict[str, jax.Array]:
    """Gram matrices [1, C, C] of the style image's Johnson layers (the fixed style targets)."""
    return {k: gram_matrix(f) for k, f in vgg.apply(variables, style).items() if k in JOHNSON_LAYERS}


def save_variables(variables: Mapping[str, Any], path: str) -> None:
    """`variables` as flax msgpack at `path`, written whole (temporary name, then renamed)."""
    data = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, flax.core.unfreeze(variables)))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def load_variables(path: str, filename: str, flag: str, expected: Callable[[dict], Mapping[str, Any]]) -> dict:
    """Variables from a msgpack file, or `filename` in a directory (a previous run's --workdir),
    checked against `expected(tree)`, a tree of shapes (e.g. `jax.eval_shape(module.init, ...)` of
    the module whose width is read from `tree`).

    Raises FileNotFoundError / ValueError naming `flag` and the file."""
    file = os.path.join(path, filename) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{flag}={path}: no such file (a {filename} or the --workdir of a "
                                "run that trained one)")
    try:
        with open(file, "rb") as f:
            tree = flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises its own kinds
        raise ValueError(f"{flag}={path}: cannot read {file}: {type(e).__name__}: {e}") from None
    got = ({k: tuple(np.shape(v)) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}
           if isinstance(tree, dict) else {})
    try:
        want = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(expected(tree), sep="/").items()}
    except (KeyError, IndexError, TypeError, AttributeError):
        want = None
    if got != want:
        diff = sorted(set((want or {}).items()) ^ set(got.items()))[:4]
        raise ValueError(f"{flag}={path}: {file} does not fit the network (differences: {diff}); "
                         "was it trained with another --net_width or VGG width?")
    return jax.tree.map(jnp.asarray, tree)


def adain_encoder_variables(vgg_variables: Mapping[str, Any]) -> dict:
    """`VGGFeatures(depth=19)` variables (random, or `load_vgg_weights`' torchvision VGG-19) ->
    `AdaINEncoder(preprocess=False)` variables: conv1_1 .. conv4_1, the rest dropped."""
    names = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4", "conv4_1")
    return {"params": {n: {"conv": dict(vgg_variables["params"][n])} for n in names}}
