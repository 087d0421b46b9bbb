r"""Classical segmentation baselines (scikit-image, OpenCV GrabCut) on a dataset's validation images.

    python -m experiments.classical --workdir=/tmp/classical \
      [--dataset=synthetic_shapes/clean] [--num_images=N] [--methods=otsu,slic,...] [--workers=0]

writes DIR/results.json (`{method: {"miou", "boundary_iou", "seconds_per_image", "inputs", ...}}`),
DIR/report.md and DIR/figure.png (the same images under each method). Which inputs each method
gets (automatic, ground-truth boxes, ground-truth seeds) and how its output is turned into class
labels is in `segjax/classical/__init__.py`. A comma-separated `--dataset` list runs each into
DIR/<config>/ and adds DIR/study.md (one table) and DIR/study.png (rows = datasets, columns =
methods, validation image `--figure_index` of each).
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    flags.DEFINE_string("workdir", None, "Output directory.")
    flags.DEFINE_string("dataset", "synthetic_shapes/clean",
                        "synthetic_shapes/<config>, or a comma-separated list of them (a study).")
    flags.DEFINE_integer("num_images", None, "First N validation images (default: all).")
    flags.DEFINE_list("methods", [], "Method names (default: every available one).")
    flags.DEFINE_integer("workers", 0, "Processes (0: one per core; 1: no pool).")
    flags.DEFINE_integer("figure_index", 0, "Study figure: which of the images to show per dataset.")
    flags.mark_flags_as_required(["workdir"])


def main(argv):
    cli.no_arguments(argv)
    from segjax.classical import benchmark

    if FLAGS.num_images is not None and FLAGS.num_images < 1:
        raise ValueError(f"--num_images={FLAGS.num_images} must be at least 1 (or left out: all)")
    if FLAGS.workers < 0:
        raise ValueError(f"--workers={FLAGS.workers} must be >= 0 (0: one per core)")
    command = "python -m experiments.classical " + " ".join(shlex.quote(a) for a in argv_flags())
    datasets = [d.strip() for d in FLAGS.dataset.split(",") if d.strip()]
    runs = {}
    for dataset in datasets:
        out = FLAGS.workdir if len(datasets) == 1 else os.path.join(
            FLAGS.workdir, dataset.partition("/")[2] or dataset)
        results, preds, examples = benchmark.evaluate(
            dataset, num_images=FLAGS.num_images, methods=FLAGS.methods or None,
            workers=FLAGS.workers, progress=lambda s: print(s, flush=True))
        benchmark.write_outputs(out, dataset, results, preds, examples, command=command)
        runs[dataset] = (results, preds, examples)
        print(benchmark.results_table(results), flush=True)
        print(f"wrote {out}/results.json, report.md, figure.png", flush=True)
    if len(datasets) > 1:
        paths = benchmark.write_study(FLAGS.workdir, runs, figure_index=FLAGS.figure_index,
                                      command=command)
        print("wrote " + ", ".join(paths), flush=True)


def argv_flags():
    return sys.argv[1:]


if __name__ == "__main__":
    cli.run(main, define_flags)
