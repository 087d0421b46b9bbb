r"""Regenerates the lecture decks' figures and worked examples from segjax's own code.

    python -m experiments.lectures --workdir=/tmp/lectures [--figures=1,2,5] [--skip_training] \
      [--tensormask_run=/tmp/tensormask_demo] [--volume_run=/tmp/unet3d_demo] \
      [--pointnet_run=/tmp/pointnet_demo] [--style_gatys_run=/tmp/style] [--style_fast_run=/tmp/fast] \
      [--style_adain_run=/tmp/adain] [--uda_study=/tmp/uda_study]

Writes one PNG per figure, `numbers.json` (the numbers each figure shows, under its number) and
`index.md` (one line per figure on what it teaches) into --workdir. Figures 1-5, 7 and 8 take
seconds; figure 6 trains three tiny FCNs (a minute or two on a 2-core CPU; --skip_training skips
it); figure 9 needs `segjax.losses.triplet_loss` and is skipped, with a line in index.md, without
it; figure 10 reads a trained `tensormask.py:demo` run (`--tensormask_run`) and is skipped
without; figure 12 shows a 3D U-Net's and a PointNet's predictions from trained `unet3d.py:demo`
and `pointnet.py:demo` runs (`--volume_run`, `--pointnet_run`) and the truth alone without them;
figure 13 shows `python -m experiments.style` results (`--style_{gatys,fast,adain}_run`), FDA's
amplitude swap, and a `domain_adaptation` study's predictions (`--uda_study`), FDA alone without
runs.
See docs/lectures.md. The figures themselves live in `segjax.lectures`.
"""

from __future__ import annotations

from absl import app, flags, logging

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    flags.DEFINE_string("workdir", None, "Output directory (written; created if missing).")
    flags.DEFINE_list("figures", None, "Figure numbers to generate (default: all, 1-13).")
    flags.DEFINE_bool("skip_training", False, "Skip figure 6 (trains FCN-32s/16s/8s briefly).")
    flags.DEFINE_string("tensormask_run", None, "Work directory of a trained "
                        "experiments/configs/tensormask.py:demo run (figure 10; skipped without).")
    flags.DEFINE_string("volume_run", None, "Work directory of a trained "
                        "experiments/configs/unet3d.py:demo run (figure 12's prediction).")
    flags.DEFINE_string("pointnet_run", None, "Work directory of a trained "
                        "experiments/configs/pointnet.py:demo run (figure 12's prediction).")
    for method in ("gatys", "fast", "adain"):
        flags.DEFINE_string(f"style_{method}_run", None, "Work directory of `python -m "
                            f"experiments.style --method={method}` (figure 13's {method} result).")
    flags.DEFINE_string("uda_study", None, "Work directory of `python -m experiments.ablations "
                        "--study=domain_adaptation` (figure 13's domain-adaptation rows).")
    flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    from segjax import lectures

    try:
        figures = None if FLAGS.figures is None else [int(f) for f in FLAGS.figures]
    except ValueError:
        raise app.UsageError(f"--figures must be comma-separated numbers, got {FLAGS.figures}")
    unknown = sorted(set(figures or ()) - set(lectures.BY_NUMBER))
    if unknown:
        raise app.UsageError(f"--figures: unknown figure(s) {unknown}; figures are "
                             f"{sorted(lectures.BY_NUMBER)}")
    runs = {name: run for name, run in (("tensormask", FLAGS.tensormask_run),
                                        ("volume", FLAGS.volume_run),
                                        ("pointnet", FLAGS.pointnet_run),
                                        ("style_gatys", FLAGS.style_gatys_run),
                                        ("style_fast", FLAGS.style_fast_run),
                                        ("style_adain", FLAGS.style_adain_run),
                                        ("uda", FLAGS.uda_study)) if run}
    result = lectures.write(FLAGS.workdir, figures, skip_training=FLAGS.skip_training, runs=runs,
                            log=logging.info)
    print(f"wrote {len(result['pngs'])} figure(s), numbers.json and index.md to {FLAGS.workdir}"
          + (f"; skipped {sorted(result['skipped'])}" if result["skipped"] else ""))


if __name__ == "__main__":
    cli.run(main, define_flags)
