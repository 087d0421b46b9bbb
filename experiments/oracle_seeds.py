r"""The oracle refinement study over oracle seeds: one table from several `oracle_refine` reports.

    python -m experiments.oracle_seeds --reports=/tmp/refine_s0,/tmp/refine_s1,/tmp/refine_s2 \
      [--workdir=/tmp/refine_seeds]

Each of `--reports` is an `experiments.oracle_refine` work dir (its `report.json`), one per oracle
training seed, all refining the same images (same `--num_images` and `--seed`). Per starting
point (`zeros`, `segmenter`) it prints each seed's row (oracle Spearman, Dice before, Dice after
at the step chosen on the select half, that step, gain) and the mean with a 95 % Student-t
interval over seeds (`segjax.metrics.stats`), plus the paired seed-by-seed gain's p-value: the
seed-to-seed spread, which a single run's interval over images does not show.
"""

from __future__ import annotations

import json
import os

from absl import flags

from experiments import cli
from segjax.metrics import stats

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined under `__main__` only, like every command's)."""
    flags.DEFINE_list("reports", None, "experiments.oracle_refine work dirs, one per oracle seed.")
    flags.DEFINE_string("workdir", None, "Directory written (report.md); default: print only.")
    flags.mark_flags_as_required(["reports"])

STARTS = ("zeros", "segmenter")


REQUIRED = ("num_images", "num_select", "num_test", "max_steps", "update", "seed")
ENTRY_KEYS = ("spearman", "dice_before", "dice_after", "steps", "dice_last_step")


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def load(dirs):
    """The `report.json` of each `experiments.oracle_refine` work dir, refused by file name when
    it is missing, not strict JSON (NaN), lacks a key the table reads, or when the reports refine
    different images."""
    if not dirs:
        raise ValueError("--reports names no directory")
    reports = []
    for d in dirs:
        path = os.path.join(d, "report.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: pass experiments.oracle_refine work dirs")
        try:
            with open(path) as f:
                report = json.load(f, parse_constant=_refuse_constant)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path} is not a readable report ({e})") from None
        if not isinstance(report, dict):
            raise ValueError(f"{path} holds a JSON {type(report).__name__}, not a report object")
        missing = [k for k in REQUIRED if k not in report]
        missing += [f"{s}.{k}" for s in STARTS if isinstance(report.get(s), dict)
                    for k in ENTRY_KEYS if k not in report[s]]
        if missing or not any(isinstance(report.get(s), dict) for s in STARTS):
            raise ValueError(f"{path} is not an experiments.oracle_refine report: it lacks "
                             f"{missing or [' or '.join(STARTS)]}")
        reports.append(report)
    keys = {(r["num_images"], r["seed"], r["max_steps"]) for r in reports}
    if len(keys) != 1:
        raise ValueError("the reports refine different images or step budgets "
                         f"((num_images, seed, max_steps) = {sorted(keys)}): rerun them alike")
    return reports


def _fmt(s: stats.Summary) -> str:
    return f"{s.mean:.3f} ± {s.ci_half_width:.3f}" if s.n > 1 else f"{s.mean:.3f}"


def markdown(reports, names) -> str:
    r0 = reports[0]
    lines = [f"{len(reports)} oracle seeds; {r0['num_test']} test images (the step is chosen on "
             f"{r0['num_select']} others), up to {r0['max_steps']} steps, update {r0['update']!r}; "
             "mean ± 95 % t-interval over seeds.", ""]
    for start in STARTS:
        rows = [(n, r[start]) for n, r in zip(names, reports) if start in r]
        if not rows:
            continue
        lines += [f"**from {start}**", "",
                  "| oracle | Spearman | Dice before | Dice after | step | gain | Dice at last step |",
                  "|---|---|---|---|---|---|---|"]
        for n, e in rows:
            lines.append(f"| {n} | {e['spearman']:.3f} | {e['dice_before']:.3f} | {e['dice_after']:.3f} | "
                         f"{e['steps']} | {e['dice_after'] - e['dice_before']:+.3f} | {e['dice_last_step']:.3f} |")
        col = {k: [e[k] for _, e in rows] for k in ("spearman", "dice_before", "dice_after", "dice_last_step")}
        diff = stats.paired_difference(col["dice_after"], col["dice_before"])
        lines.append(f"| **mean** | {_fmt(stats.summarize(col['spearman']))} | "
                     f"{_fmt(stats.summarize(col['dice_before']))} | {_fmt(stats.summarize(col['dice_after']))} | "
                     f"{', '.join(str(e['steps']) for _, e in rows)} | {_fmt(diff.summary)} "
                     f"(p = {diff.p_value:.2g}) | {_fmt(stats.summarize(col['dice_last_step']))} |")
        lines.append("")
    return "\n".join(lines)


def main(argv) -> None:
    cli.no_arguments(argv)
    dirs = cli.runs(FLAGS.reports)
    text = markdown(load(dirs), [os.path.basename(os.path.normpath(d)) for d in dirs])
    print(text)
    if FLAGS.workdir:
        os.makedirs(FLAGS.workdir, exist_ok=True)
        with open(os.path.join(FLAGS.workdir, "report.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    cli.run(main, define_flags)
