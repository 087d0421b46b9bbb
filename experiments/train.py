r"""The generic trainer: flags only, the loop is `segjax.train.loop.train_and_evaluate`.

    python -m experiments.train --workdir=/tmp/run \
      --config=experiments/configs/FILE.py[:PRESET] [--config.KEY=VALUE ...]

`config.task` chooses what is learned (`segjax.tasks.available_tasks()`; "semantic" by default). Rerunning
on the same --workdir resumes from its latest checkpoint. Exit status 0 on success, 1 with a
one-line message on a known failure (bad config or unknown key, missing dataset, incompatible
work dir, NaN loss), and a traceback for anything unexpected. `experiments.deeplab_voc` is this
trainer with `experiments/configs/deeplab_voc.py` as the default config.
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags(default_config: str | None = None) -> None:
    """Defines --workdir and --config (with `default_config` as the default config file)."""
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and predictions.")
    flags.mark_flags_as_required(["workdir"])
    config_flags.DEFINE_config_file("config", default_config, "Config file (path.py[:preset]).",
                                    lock_config=True)


def _unknown_override(argv: list[str], default_config: str | None) -> str | None:
    """Message naming the first `--config.KEY=...` whose KEY the config file does not define."""
    from segjax.train import config_utils

    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), default_config)
    if spec is None:
        return None
    overrides = [a for a in argv if a.startswith("--config.")]
    keys = [a[len("--config."):].split("=", 1)[0] for a in overrides]
    message = config_utils.unknown_key_message(config_utils.load_config_file(spec), keys)
    if message is None:
        return None
    bad = next(a for a, k in zip(overrides, keys) if repr(k) in message)
    return message.replace("; keys", f" (from {bad}); keys", 1)


def parse_flags(argv: list[str], default_config: str | None = None) -> list[str]:
    """absl flag parsing, with a one-line error for an unknown `--config.KEY` override."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        cli.fail(f"{cli.one_line(e)} (pass --helpfull to see the flags)")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        message = _unknown_override(argv, default_config) or f"{type(e).__name__}: {e}"
        cli.fail(cli.one_line(message))


def main(argv):
    cli.no_arguments(argv)
    from segjax.train import config_utils, loop

    if FLAGS.config is None:
        raise app.UsageError("--config=FILE.py[:PRESET] is required")
    # A preset's model-specific fields do not leak into another model chosen on the command line.
    preset = config_utils.load_config_file(config_flags.get_config_filename(FLAGS["config"]))
    explicit = [a.split("=", 1)[0][len("--config.model."):] for a in sys.argv[1:]
                if a.startswith("--config.model.")]
    config_utils.retarget_model(FLAGS.config, preset.model.name, kept=explicit)
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run(default_config: str | None = None) -> None:
    """Defines the flags and runs `main` (the entry point of this module and its aliases)."""
    cli.run(main, functools.partial(define_flags, default_config),
            flags_parser=lambda argv: parse_flags(argv, default_config))


if __name__ == "__main__":
    run()
