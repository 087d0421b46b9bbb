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

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and predictions.")
flags.mark_flags_as_required(["workdir"])
config_flags.DEFINE_config_file("config", None, "Config file (path.py[:preset]).",
                                lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from segjax.train import loop

    try:
        loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except loop.KNOWN_ERRORS as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
