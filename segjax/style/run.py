"""What `python -m experiments.style` does: load the pictures and the VGG, stylise, write the work dir.

`stylize(method="gatys", content="astronaut", style="gravel", workdir=DIR, size=128, steps=100)`
writes into DIR:

* `content.png`, `style.png`, `result.png` (the stylised image) and `panel.png` (content | style
  | result side by side);
* `metrics.jsonl`: one strict-JSON line per step (step 0 is the start), `{"step", "loss"}` plus the weighted
  `content`, `style` and `tv` terms every `log_every` steps;
* `run.json`: the arguments, which weights were used and the final losses.

`method="fast"` and `"adain"` train (or load) a feed-forward network instead and write the same
files plus the network's variables: `segjax.style.run_feedforward`.

Nothing is created before every input has been read and checked, and each file is written
whole (temporary name, then renamed).

Without `weights` the VGG is randomly initialised (torchvision's init, seeded). A random VGG
still matches the Gram statistics of a texture reasonably (random-weight texture synthesis:
Ulyanov et al. 2016; He, Wang & Hopcroft 2016), so the result takes on the style's colours and
local texture; but its features carry little semantic content, so the content reconstruction is
weaker than with ImageNet weights (edges and colours survive, objects less so). Use
`python -m segjax.tools.convert_torchvision --model=vgg19` on torchvision's ImageNet weights for
the paper's results.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segjax import jsonio
from segjax.style.gatys import DEFAULT_CONTENT_WEIGHT, DEFAULT_STYLE_WEIGHT, INITS, gatys
from segjax.style.images import load_image, to_uint8
from segjax.style.vgg import (
    GATYS_CONTENT_LAYER,
    GATYS_STYLE_LAYERS,
    POOLINGS,
    VGGFeatures,
    layer_names,
    load_vgg_weights,
)

METHODS = ("gatys", "fast", "adain")
AVAILABLE = METHODS
RANDOM_WEIGHTS_NOTE = (
    "no --weights: the VGG-19 is randomly initialised. A random VGG still matches the Gram "
    "statistics of textures reasonably (random-weight texture synthesis), so colours and local "
    "texture transfer, but content reconstruction is weaker than with ImageNet weights; convert "
    "torchvision's vgg19 with `python -m segjax.tools.convert_torchvision --model=vgg19` for the "
    "paper's results.")


def _write_lines(path: str, rows: list[dict[str, Any]]) -> None:
    """`rows` as JSON lines (strict), whole or not at all."""
    text = "".join(jsonio.dumps(row, where=path) + "\n" for row in rows)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _save_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    tmp = path + ".tmp.png"
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


def stylize(method: str, content: str, style: str, workdir: str, *, size: int = 128,
            steps: int = 100, weights: str | None = None, seed: int = 0, init: str = "content",
            content_weight: float = DEFAULT_CONTENT_WEIGHT, style_weight: float = DEFAULT_STYLE_WEIGHT,
            tv_weight: float = 0.0, pooling: str = "max", content_layer: str = GATYS_CONTENT_LAYER,
            style_layers: Sequence[str] = GATYS_STYLE_LAYERS, log_every: int = 10,
            model: str | None = None, decoder: str | None = None, alpha: float = 1.0,
            batch_size: int | None = None, net_width: int | None = None,
            out: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs `method` on the `content` and `style` pictures (paths or `SKIMAGE_IMAGES` names) and
    writes `workdir` (module docstring). Returns the contents of `run.json`.

    "fast" and "adain" train their network for `steps` Adam steps (`batch_size` crops of `size`
    pixels; `net_width` channels, the reference's by default), unless `model` (fast) or `decoder`
    (adain) names a trained one; `alpha` is AdaIN's content-style trade-off. `weights` is the
    VGG-19 (gatys, adain's encoder) or VGG-16 (fast) to use instead of a random one.

    Raises:
      ValueError: an unknown or not yet available method or a bad argument, named;
      FileNotFoundError: a missing picture or weights file.
    """
    if method not in METHODS:
        raise ValueError(f"--method={method} is unknown; choose one of {', '.join(METHODS)}")
    if method not in AVAILABLE:
        raise ValueError(f"--method={method} is not yet available in this version of segjax "
                         f"(available: {', '.join(AVAILABLE)})")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"--steps={steps} must be at least 1")
    if method != "gatys":
        if not (isinstance(size, int) and size >= 16):
            raise ValueError(f"--size={size} must be at least 16 (the stride of VGG's relu4 layers is 8)")
        from segjax.style.run_feedforward import feedforward_command

        return feedforward_command(method, content, style, workdir, size=size, steps=steps,
                                   weights=weights, seed=seed, model=model, decoder=decoder,
                                   alpha=alpha, batch_size=batch_size, net_width=net_width,
                                   log_every=log_every, out=out)
    if init not in INITS:
        raise ValueError(f"--init={init} must be one of {INITS}")
    if pooling not in POOLINGS:
        raise ValueError(f"--pooling={pooling} must be one of {POOLINGS}")
    names = layer_names(19)
    style_layers = tuple(style_layers)
    for flag, layers in (("--content_layer", (content_layer,)), ("--style_layers", style_layers)):
        unknown = [n for n in layers if n not in names]
        if unknown or not layers:
            raise ValueError(f"{flag}={','.join(layers)}: unknown VGG-19 layer(s) {unknown}; "
                             f"available: {', '.join(names)}")
    # The deepest layer's stride: relu5_1 needs 16 pixels, relu2_1 two.
    need = max(2 ** (int(n[4] if n.startswith("pool") else n[-3]) - (0 if n.startswith("pool") else 1))
               for n in (content_layer, *style_layers))
    if not (isinstance(size, int) and size >= need):
        raise ValueError(f"--size={size} must be at least {need} (the stride of the deepest layer)")
    content_image = load_image(content, size)
    style_image = load_image(style, size)
    for flag, image in (("--content", content_image), ("--style", style_image)):
        if min(image.shape[1:3]) < need:
            raise ValueError(f"{flag} is {image.shape[2]}x{image.shape[1]} at --size={size}; its "
                             f"shorter side must be at least {need} pixels: raise --size")
    if weights:
        variables, width = load_vgg_weights(weights, depth=19)
        weights_note = f"VGG-19 weights from {os.path.abspath(weights)}"
    else:
        width = 64
        vgg = VGGFeatures(depth=19, pooling=pooling)
        variables = jax.jit(vgg.init)(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
        weights_note = f"random VGG-19 (seed {seed})"
        out(f"note: {RANDOM_WEIGHTS_NOTE}")
    vgg = VGGFeatures(depth=19, width=width, pooling=pooling)
    out(f"{method}: content {content} {content_image.shape[2]}x{content_image.shape[1]}, style {style} "
        f"{style_image.shape[2]}x{style_image.shape[1]}, {steps} L-BFGS steps, {weights_note}")

    result = gatys(vgg, variables, jnp.asarray(content_image), jnp.asarray(style_image), steps=steps,
                   init=init, seed=seed, log_every=log_every, content_weight=content_weight,
                   style_weight=style_weight, tv_weight=tv_weight, content_layer=content_layer,
                   style_layers=style_layers,
                   progress=lambda e: out(f"step {e['step']:4d}  loss {e['loss']:.4g}  content "
                                          f"{e['content']:.4g}  style {e['style']:.4g}  tv {e['tv']:.4g}"))
    summary = {"method": method, "content": content, "style": style, "size": size, "steps": steps,
               "init": init, "seed": seed, "pooling": pooling, "content_layer": content_layer,
               "style_layers": list(style_layers), "content_weight": content_weight,
               "style_weight": style_weight, "tv_weight": tv_weight, "weights": weights_note,
               "start": result.history[0], "final": result.history[-1]}
    write_workdir(workdir, content_image, style_image, np.asarray(result.image), result.history, summary, out)
    return summary


def write_workdir(workdir: str, content_image: np.ndarray, style_image: np.ndarray, result: np.ndarray,
                  history: list[dict[str, Any]], summary: dict[str, Any], out: Callable[[str], None],
                  extra: Callable[[str], list[str]] | None = None) -> None:
    """Creates `workdir` and writes the pictures, the panel, metrics.jsonl, run.json and whatever
    `extra(workdir)` writes (it returns the file names), each file whole."""
    os.makedirs(workdir, exist_ok=True)
    pictures = {"content": to_uint8(content_image), "style": to_uint8(style_image), "result": to_uint8(result)}
    for name, picture in pictures.items():
        _save_png(os.path.join(workdir, f"{name}.png"), picture)
    _save_png(os.path.join(workdir, "panel.png"), _panel(list(pictures.values())))
    _write_lines(os.path.join(workdir, "metrics.jsonl"), history)
    names = extra(workdir) if extra is not None else []
    jsonio.dump(summary, os.path.join(workdir, "run.json"), indent=2)
    files = ["content.png", "style.png", "result.png", "panel.png", "metrics.jsonl", *names, "run.json"]
    out(f"wrote {os.path.abspath(workdir)}: {', '.join(files)}")


def _panel(pictures: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """uint8 pictures side by side on white, top-aligned (they may differ in height)."""
    height = max(p.shape[0] for p in pictures)
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    panel = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for p in pictures:
        panel[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    return panel
