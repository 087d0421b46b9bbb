"""`python -m experiments.style --method=fast|adain`: train (or load) the feed-forward network, apply it.

`feedforward_command(...)` writes into `workdir`, besides gatys' content.png, style.png,
result.png, panel.png, metrics.jsonl (`{"step", "loss", "content", "style"}` per training step,
each batch's losses before its update) and run.json:

* fast: `transformer_net.msgpack`, the trained TransformerNet's variables (`--model=DIR_OR_FILE`
  applies it later without training);
* adain: `decoder.msgpack`, the trained decoder (`--decoder=DIR_OR_FILE`).

Every input (pictures, weights, models, flags) is read and checked before training starts and
nothing is created before that. See `segjax.style.feedforward` for the training set and the
references' settings.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from segjax.style import feedforward as ff
from segjax.style.adain import AdaINDecoder
from segjax.style.adain_encoder import AdaINEncoder
from segjax.style.images import load_image
from segjax.style.losses import JOHNSON_LAYERS
from segjax.style.transformer_net import TRANSFORMER_NET_WIDTH, TransformerNet
from segjax.style.vgg import VGGFeatures, load_vgg_weights

ADAIN_DECODER_WIDTH = 64


def _init_key(seed: int) -> jax.Array:
    """The key the networks and random VGGs are initialised from: JAX's "rbg" generator, still
    stateless and seeded, because compiling threefry for the ~40 parameter tensors of a
    TransformerNet or decoder takes longer than compiling the train step itself (14 s vs 3 s)."""
    return jax.random.key(seed, impl="rbg")
RANDOM_NOTE = ("no --weights: the {net} is randomly initialised. The losses fall and the result "
               "takes on the style's colours and local statistics, but random features carry no "
               "learned semantics; use converted ImageNet weights for the papers' results.")


def _vgg(weights: str | None, depth: int, seed: int, out: Callable[[str], None]
         ) -> tuple[Callable[[], dict], int, str]:
    """(VGGFeatures variables, made when called; width; note): converted weights, read and
    checked now, or a seeded random VGG-`depth`, initialised only when asked for (after every
    other input has been checked)."""
    if weights:
        variables, width = load_vgg_weights(weights, depth=depth)
        return lambda: variables, width, f"VGG-{depth} weights from {os.path.abspath(weights)}"

    def init() -> dict:
        out("note: " + RANDOM_NOTE.format(net=f"VGG-{depth}"))
        return jax.jit(VGGFeatures(depth=depth, layers=("relu4_3" if depth == 16 else "relu4_1",)).init)(
            _init_key(seed), jnp.zeros((1, 32, 32, 3)))

    return init, 64, f"random VGG-{depth} (seed {seed})"


def _net_width(net_width: int | None, default: int) -> int:
    if net_width is None:
        return default
    if not (isinstance(net_width, int) and net_width >= 1):
        raise ValueError(f"--net_width={net_width} must be a positive int")
    return net_width


def feedforward_command(method: str, content: str, style: str, workdir: str, *, size: int, steps: int,
                        weights: str | None, seed: int, model: str | None, decoder: str | None,
                        alpha: float, batch_size: int | None, net_width: int | None,
                        log_every: int, out: Callable[[str], None]) -> dict[str, Any]:
    """The fast / adain half of `segjax.style.run.stylize` (module docstring); returns run.json."""
    from segjax.style.run import write_workdir

    if method == "fast" and decoder:
        raise ValueError("--decoder is AdaIN's; --method=fast takes --model")
    if method == "adain" and model:
        raise ValueError("--model is fast style's; --method=adain takes --decoder")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"--alpha={alpha} must be in [0, 1] (0: the content, 1: full style)")
    if method == "fast" and alpha != 1.0:
        raise ValueError(f"--alpha={alpha} is AdaIN's content-style trade-off; --method=fast has none")
    batch = ff.FAST_BATCH if method == "fast" else ff.ADAIN_BATCH
    if batch_size is not None:
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"--batch_size={batch_size} must be a positive int")
        batch = batch_size
    content_image = load_image(content, size)
    style_image = load_image(style, size)
    for flag, image in (("--content", content_image), ("--style", style_image)):
        if min(image.shape[1:3]) < 16:
            raise ValueError(f"{flag} is {image.shape[2]}x{image.shape[1]} at --size={size}; its "
                             "shorter side must be at least 16 pixels: raise --size")
    pretrained = model or decoder
    summary: dict[str, Any] = {"method": method, "content": content, "style": style, "size": size,
                               "seed": seed}
    rng = np.random.default_rng(seed)
    progress = lambda e: out(f"step {e['step']:4d}  loss {e['loss']:.4g}  content {e['content']:.4g}  "
                             f"style {e['style']:.4g}")
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    if method == "fast":
        width = _net_width(net_width, TRANSFORMER_NET_WIDTH)
        if model:
            variables = ff.load_variables(model, "transformer_net.msgpack", "--model", lambda tree: jax.eval_shape(
                TransformerNet(width=int(np.shape(tree["params"]["conv1"]["conv"]["kernel"])[-1])).init,
                jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
            width = int(variables["params"]["conv1"]["conv"]["kernel"].shape[-1])
            net = TransformerNet(width=width)
            summary.update(model=os.path.abspath(model), net_width=width)
            out(f"fast: applying the TransformerNet (width {width}) of {model}, no training")
        else:
            make_vgg, vgg_width, note = _vgg(weights, 16, seed, out)
            vgg_variables = make_vgg()
            vgg = VGGFeatures(depth=16, layers=JOHNSON_LAYERS, width=vgg_width)
            net = TransformerNet(width=width)
            pool = ff.crop_pool(ff.CONTENT_PHOTOS, size)
            variables = jax.jit(net.init)(_init_key(seed), jnp.zeros((1, size, size, 3)))
            opt, step = ff.fast_train_step(net, vgg)
            grams = jax.jit(ff.style_grams, static_argnums=0)(vgg, vgg_variables, jnp.asarray(style_image))
            out(f"fast: training a TransformerNet (width {width}) on {style} for {steps} Adam steps of "
                f"{batch} {size}x{size} crops of {', '.join(ff.CONTENT_PHOTOS)}; {note}")
            variables, history = ff.train(step, opt, variables, lambda i: (
                vgg_variables, grams, jnp.asarray(ff.random_crops(pool, size, batch, rng))),
                steps, log_every=log_every, progress=progress)
            summary.update(net_width=width, weights=note, steps=steps, batch_size=batch,
                           lr=ff.FAST_LR, content_set=list(ff.CONTENT_PHOTOS))
        result = np.asarray(jax.jit(ff.fast_stylize, static_argnums=0)(net, variables, jnp.asarray(content_image)))
        file = "transformer_net.msgpack"
    else:
        width = _net_width(net_width, ADAIN_DECODER_WIDTH)
        encoder, make_encoder, note = adain_encoder(weights, seed, out)
        channels = 8 * encoder.width
        if decoder:
            variables, width = load_adain_decoder(decoder, "--decoder", channels)
            summary.update(decoder=os.path.abspath(decoder))
            out(f"adain: applying the decoder (width {width}) of {decoder}, no training; {note}")
        dec = AdaINDecoder(width=width)
        encoder_variables = make_encoder()
        if not decoder:
            content_pool = ff.crop_pool(ff.CONTENT_PHOTOS, size)
            style_pool = ff.crop_pool(ff.STYLE_TEXTURES, size)
            variables = jax.jit(dec.init)(_init_key(seed), jnp.zeros((1, 2, 2, channels)))
            opt, step = ff.adain_train_step(encoder, dec)
            out(f"adain: training the decoder (width {width}) for {steps} Adam steps of {batch} "
                f"{size}x{size} crops of {', '.join(ff.CONTENT_PHOTOS)} (content) and "
                f"{', '.join(ff.STYLE_TEXTURES)} (style); {note}")
            variables, history = ff.train(step, opt, variables, lambda i: (
                encoder_variables, jnp.asarray(ff.random_crops(content_pool, size, batch, rng)),
                jnp.asarray(ff.random_crops(style_pool, size, batch, rng))),
                steps, log_every=log_every, progress=progress)
            summary.update(steps=steps, batch_size=batch, lr=ff.ADAIN_LR, lr_decay=ff.ADAIN_LR_DECAY,
                           style_weight=ff.ADAIN_STYLE_WEIGHT, content_set=list(ff.CONTENT_PHOTOS),
                           style_set=list(ff.STYLE_TEXTURES))
        h, w = content_image.shape[1:3]
        result = np.asarray(jax.jit(ff.adain_apply, static_argnums=(0, 1, 6))(
            encoder, dec, encoder_variables, variables, jnp.asarray(content_image), jnp.asarray(style_image),
            float(alpha)))[:, :h, :w]
        summary.update(net_width=width, encoder=note, alpha=alpha,
                       encoder_weights=os.path.abspath(weights) if weights else None)
        file = "decoder.msgpack"
    if history:
        summary.update(first=history[0], final=history[-1], train_seconds=round(time.perf_counter() - start, 1))
    def save(directory: str) -> list[str]:
        ff.save_variables(variables, os.path.join(directory, file))
        return [file]

    write_workdir(workdir, content_image, style_image, result, history, summary, out, None if pretrained else save)
    return summary


def load_adain_decoder(path: str, flag: str, channels: int) -> tuple[dict, int]:
    """(variables, width) of the AdaIN decoder saved at `path` (a run's --workdir or its
    decoder.msgpack) for `channels`-channel relu4_1 features; errors name `flag`."""
    variables = ff.load_variables(path, "decoder.msgpack", flag, lambda tree: jax.eval_shape(
        AdaINDecoder(width=int(np.shape(tree["params"]["conv8"]["conv"]["kernel"])[2])).init,
        jax.random.key(0), jnp.zeros((1, 2, 2, channels))))
    return variables, int(variables["params"]["conv8"]["conv"]["kernel"].shape[2])


def adain_encoder(weights: str | None, seed: int, out: Callable[[str], None]
                  ) -> tuple[AdaINEncoder, Callable[[], dict], str]:
    """The fixed AdaIN encoder: vgg_normalised.pth converted by `from_torch_vgg_normalised` and
    saved as .msgpack (it has the 1x1 `preprocess` conv), a torchvision VGG-19 conversion (the
    reference's fallback; ImageNet-normalised input), or a seeded random VGG-19. A run's
    run.json records `weights` (`encoder_weights`) and `seed`, so the same call rebuilds its
    encoder (`segjax.style.style_randomization.load_adain_styliser`)."""
    if weights and weights.endswith(".msgpack") and os.path.isfile(weights):
        def expected(tree):
            if "preprocess" not in tree["params"]:
                raise KeyError("preprocess")
            width = int(np.shape(tree["params"]["conv1_1"]["conv"]["kernel"])[-1])
            # 16 px: relu4_1 at 2 x 2, the least its reflection padding takes
            return jax.eval_shape(AdaINEncoder(width=width).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))

        try:
            variables = ff.load_variables(weights, "", "--weights", expected)
        except ValueError:
            variables = None  # not a vgg_normalised tree: a VGGFeatures .msgpack below
        if variables is not None:
            width = int(variables["params"]["conv1_1"]["conv"]["kernel"].shape[-1])
            return (AdaINEncoder(width=width), lambda: variables,
                    f"vgg_normalised encoder from {os.path.abspath(weights)}")
    make_vgg, width, note = _vgg(weights, 19, seed, out)
    return AdaINEncoder(width=width, preprocess=False), lambda: ff.adain_encoder_variables(make_vgg()), note
