r"""Runs study questions: `python -m experiments.ablations --study=NAME[,NAME|all] --workdir=DIR`.

Each run trains in `DIR/runs/<digest of its config>/` (finished runs are skipped, interrupted
ones resume, and a config that several parts or studies share is trained once), then
`DIR/<study>/<part>/results_<metric>.{csv,md,png}` and `DIR/<study>/REPORT.md` are written
(`experiments.ablations.runner`). `--seeds=0,1` replaces every part's seeds (quick looks);
`--list` prints the studies and their parts without training.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from experiments import ablations  # noqa: E402
from experiments.ablations.runner import run_study  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("study", None, "Comma-separated study names, or 'all'.")
flags.DEFINE_string("workdir", None, "Root directory of the studies' runs and reports.")
flags.DEFINE_string("seeds", "", "Override every part's seeds, e.g. '0,1' (default: the spec's).")
flags.DEFINE_boolean("list", False, "Print the studies and their parts, then exit.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    names = ablations.STUDIES if FLAGS.study in (None, "all") else tuple(
        n.strip() for n in FLAGS.study.split(",") if n.strip())
    try:
        studies = [ablations.load_study(n) for n in names]
    except ValueError as e:
        raise app.UsageError(str(e))
    if FLAGS.list:
        for s in studies:
            print(f"{s.name}: {' '.join(s.question.split())}")
            for p in s.parts:
                print(f"  {p.name}: {p.title} [{' x '.join(p.sweeps) or 'one cell'}] x "
                      f"{len(p.seeds)} seeds")
        return
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from segjax.train import sweep
    from segjax.train import loop

    seeds = sweep.parse_seeds(FLAGS.seeds) if FLAGS.seeds else None
    try:
        for s in studies:
            path = run_study(s, FLAGS.workdir, train_fn=loop.train_and_evaluate, seeds=seeds)
            print(f"wrote {path}", flush=True)
    except (ValueError, *loop.KNOWN_ERRORS) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
