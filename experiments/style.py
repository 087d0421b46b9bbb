r"""Neural style transfer (`segjax.style.run.stylize`).

    python -m experiments.style --method=gatys --content=astronaut --style=gravel \
      --workdir=/tmp/style [--size=128 --steps=100 --weights=DIR_OR_FILE --init=content]

`--content` and `--style` are image paths or the names of scikit-image's bundled pictures
(astronaut, chelsea, coffee; brick, grass, gravel). `--weights` is a VGG-19 converted by
`python -m segjax.tools.convert_torchvision --model=vgg19` (its --workdir), or an .npz / flax
.msgpack holding `params/conv1_1/kernel, ...`; without it the VGG is random (see docs/style.md
for what that can and cannot show). Writes content.png, style.png, result.png, panel.png,
metrics.jsonl (the loss per step) and run.json into `--workdir`. At 128 px, 100 steps take
about a minute on a 2-core CPU.

    python -m experiments.style --method=fast --content=astronaut --style=gravel --workdir=/tmp/fast \
      [--steps=100 --batch_size=4 --net_width=32 --weights=VGG16_DIR | --model=DIR_OR_MSGPACK]
    python -m experiments.style --method=adain --content=astronaut --style=gravel --workdir=/tmp/adain \
      [--steps=100 --batch_size=8 --alpha=1 --weights=VGG19 | --decoder=DIR_OR_MSGPACK]

`fast` trains a TransformerNet for the style image (Johnson et al. 2016), `adain` a decoder for
AdaIN (Huang & Belongie 2017), on crops of the bundled pictures; `--model` / `--decoder` apply a
trained one instead (docs/style.md: converting the references' published .pth files).
"""

from __future__ import annotations

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    from segjax.style.gatys import DEFAULT_CONTENT_WEIGHT, DEFAULT_STYLE_WEIGHT
    from segjax.style.vgg import GATYS_CONTENT_LAYER, GATYS_STYLE_LAYERS

    flags.DEFINE_enum("method", "gatys", ["gatys", "fast", "adain"], "Style-transfer method.")
    flags.DEFINE_string("content", None, "Content image: a path or a scikit-image name.")
    flags.DEFINE_string("style", None, "Style image: a path or a scikit-image name.")
    flags.DEFINE_string("workdir", None, "Output directory (written).")
    flags.DEFINE_integer("size", 128, "Longer side of both images, in pixels.")
    flags.DEFINE_integer("steps", 100, "L-BFGS iterations (gatys) or Adam training steps (fast, adain).")
    flags.DEFINE_string("weights", None, "Converted VGG-19 weights (VGG-16 for fast; default: random VGG).")
    flags.DEFINE_enum("init", "content", ["content", "noise"], "Starting image.")
    flags.DEFINE_enum("pooling", "max", ["max", "avg"], "VGG pooling (Gatys et al. suggest avg).")
    flags.DEFINE_string("content_layer", GATYS_CONTENT_LAYER, "VGG-19 layer of the content loss.")
    flags.DEFINE_list("style_layers", list(GATYS_STYLE_LAYERS), "VGG-19 layers of the style loss.")
    flags.DEFINE_float("content_weight", DEFAULT_CONTENT_WEIGHT, "alpha.")
    flags.DEFINE_float("style_weight", DEFAULT_STYLE_WEIGHT, "beta.")
    flags.DEFINE_float("tv_weight", 0.0, "Weight of the squared total variation.")
    flags.DEFINE_integer("seed", 0, "Seed of the random VGG, the noise start, the network's init and the crops.")
    flags.DEFINE_string("model", None, "fast: a trained TransformerNet (a run's --workdir or its "
                        "transformer_net.msgpack) to apply without training.")
    flags.DEFINE_string("decoder", None, "adain: a trained decoder (a run's --workdir or its "
                        "decoder.msgpack) to apply without training.")
    flags.DEFINE_float("alpha", 1.0, "adain: content-style trade-off in [0, 1] (1: full style).")
    flags.DEFINE_integer("batch_size", None, "fast/adain: crops per step (default: the reference's, 4 / 8).")
    flags.DEFINE_integer("net_width", None, "fast/adain: channels of the trained network (default: the "
                         "reference's, TransformerNet 32 / decoder 64).")
    flags.mark_flags_as_required(["content", "style", "workdir"])


def main(argv):
    cli.no_arguments(argv)
    from segjax.style.run import stylize

    stylize(FLAGS.method, FLAGS.content, FLAGS.style, FLAGS.workdir, size=FLAGS.size,
            steps=FLAGS.steps, weights=FLAGS.weights, seed=FLAGS.seed, init=FLAGS.init,
            content_weight=FLAGS.content_weight, style_weight=FLAGS.style_weight,
            tv_weight=FLAGS.tv_weight, pooling=FLAGS.pooling, content_layer=FLAGS.content_layer,
            style_layers=FLAGS.style_layers, model=FLAGS.model, decoder=FLAGS.decoder,
            alpha=FLAGS.alpha, batch_size=FLAGS.batch_size, net_width=FLAGS.net_width,
            out=lambda line: print(line, flush=True))


if __name__ == "__main__":
    cli.run(main, define_flags)
