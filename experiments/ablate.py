r"""Runs a seeded ablation: every combination of the sweeps, for every seed.

    python -m experiments.ablate --base=experiments/configs/deeplab_voc.py:demo --workdir=/tmp/abl \
      --sweep='model.name=unet,deeplabv3plus_resnet18' --sweep='loss.kind=ce,focal' \
      --seeds=0,1,2 [--metric=miou] [--baseline='model.name=unet'] [--config.KEY=VALUE ...]

Each run trains in DIR/runs/<cell>/seed_<s>/ (skipped when finished, resumed when interrupted);
DIR/results.csv, results.md (mean ± std, 95% CI, paired differences against the baseline cell)
and results.png are rewritten at the end. `--base` is the config (path.py[:preset]);
`--config.KEY=VALUE` overrides it for every run.
"""

from __future__ import annotations

import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    flags.DEFINE_string("workdir", None, "Directory of the sweep (runs/ and the results files).")
    flags.DEFINE_multi_string("sweep", [], "KEY=V1,V2 (repeatable; the grid is their product).")
    flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
    flags.DEFINE_string("metric", "miou", "Metric to report: KEY (last eval line) or SPLIT/KEY.")
    flags.DEFINE_string("baseline", "", "KEY=VALUE;... of the baseline cell (default: first cell).")
    flags.mark_flags_as_required(["workdir"])
    # `--base=` is rewritten to `--config=` below so that `--config.KEY=VALUE` overrides it.
    config_flags.DEFINE_config_file("config", None, "Base config (given as --base=path.py[:preset]).",
                                    lock_config=True)


def main(argv):
    cli.no_arguments(argv)
    if FLAGS.config is None:
        raise app.UsageError("--base=CONFIG[:PRESET] is required")
    from segjax.train import config_utils, loop, sweep

    sweeps = [sweep.parse_sweep(s) for s in FLAGS.sweep]
    seeds = sweep.parse_seeds(FLAGS.seeds)
    sweep.parse_baseline(FLAGS.baseline, sweeps)  # refused before anything trains

    def check(config):
        config_utils.import_plugins(config)
        config_utils.check_config(config)

    results = sweep.run_sweep(FLAGS.config, sweeps, seeds, FLAGS.workdir,
                              train_fn=loop.train_and_evaluate, check=check)
    paths = sweep.write_report(results, sweeps, FLAGS.workdir, metric=FLAGS.metric,
                               baseline=sweep.parse_baseline(FLAGS.baseline, sweeps),
                               command=" ".join(shlex.quote(a) for a in _ORIGINAL_ARGV))
    print(open(paths["md"]).read())
    print("wrote " + ", ".join(paths.values()))


_ORIGINAL_ARGV = ["python", "-m", "experiments.ablate"] + sys.argv[1:]

if __name__ == "__main__":
    cli.run(main, define_flags, argv=[sys.argv[0]] + ["--config=" + a[len("--base="):] if a.startswith("--base=") else a
                                        for a in sys.argv[1:]])
