r"""Trains and evaluates a segmentation model: flags only, the loop is segjax.train.loop.

    python -m experiments.deeplab_voc --workdir=/tmp/demo \
      --config=experiments/configs/deeplab_voc.py:demo [--config.KEY=VALUE ...]

Rerunning on the same --workdir resumes from its latest checkpoint. Exit status 0 on success,
1 with a one-line message on a known failure (bad config, missing dataset, incompatible work
dir, NaN loss), and a traceback for anything unexpected.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and predictions.")
flags.mark_flags_as_required(["workdir"])
config_flags.DEFINE_config_file("config", None, "Config file (path.py[:preset]).",
                                lock_config=True)


def _unknown_override(argv: list[str]) -> str | None:
    """Message naming the first `--config.KEY=...` whose KEY the config file does not define."""
    import importlib.util

    spec_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec_arg is None:
        return None
    path, _, preset = spec_arg.partition(":")
    spec = importlib.util.spec_from_file_location("_segjax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(preset) if preset else module.get_config()
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        node = config
        for i, part in enumerate(key.split(".")):
            if not hasattr(node, "keys") or part not in node.keys():
                parent = ".".join(key.split(".")[:i]) or "<top level>"
                known = sorted(node.keys()) if hasattr(node, "keys") else []
                return (f"unknown config key {key!r} (from {arg}); keys under {parent}: "
                        f"{', '.join(known)}")
            node = node[part]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a one-line error for an unknown `--config.KEY` override."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
        sys.exit(1)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        message = _unknown_override(argv) or f"{type(e).__name__}: {e}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    from segjax.train import loop

    try:
        loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except loop.KNOWN_ERRORS as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
