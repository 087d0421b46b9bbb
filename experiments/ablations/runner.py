"""The study runner behind `python -m experiments.ablations` (no flags: importable anywhere)."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import time

from experiments import ablations
from segjax.train import config_utils

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PART_REF = re.compile(r"\{part:([A-Za-z0-9_]+)\}")


def load_base(spec: str):
    """The config of `path.py[:preset]` (path relative to the cwd or the repository root)."""
    return config_utils.load_config_file(spec, root=REPO_ROOT)


def part_command(part: ablations.Part, part_dir: str, metric: str) -> str:
    """The `python -m experiments.ablate` command that runs this part on its own."""
    args = ["python", "-m", "experiments.ablate", f"--base={part.base}", f"--workdir={part_dir}"]
    args += [f"--config.{k}={_cli_value(v)}" for k, v in part.overrides.items()]
    args += [f"--sweep={s}" for s in part.sweeps]
    args += [f"--seeds={','.join(map(str, part.seeds))}", f"--metric={metric}"]
    if part.baseline:
        args.append(f"--baseline={part.baseline}")
    return " ".join(shlex.quote(a) for a in args)


def _cli_value(value) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _resolver(study_dir: str, finished: dict):
    """Expands `{part:NAME}` in string values to NAME's first (cell, seed) run directory."""

    def resolve(value):
        if not isinstance(value, str):
            return value

        def sub(m):
            if m.group(1) not in finished:
                raise ValueError(f"{value!r} names part {m.group(1)!r}, which has not run before "
                                 "this one in the study")
            return finished[m.group(1)]

        return _PART_REF.sub(sub, value)

    return resolve


def _metric_file(metric: str) -> str:
    return "results_" + re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_")


def run_dirs(study: ablations.Study, workdir: str, seeds=None) -> dict:
    """{(part name, cell, seed): run directory} of every run `run_study(study, workdir)` trains
    (with `seeds` overriding the parts' seeds, as there): each config rebuilt as `run_study`
    builds it (base, the part's overrides, the cell, the seed) and placed by
    `sweep.config_run_dir` under `workdir/runs`. The directories need not exist yet; a finished
    run holds `sweep.RESULT_FILE`. For readers of a study's runs (tables, figures)."""
    from segjax.train import sweep

    study_dir = os.path.join(os.path.abspath(workdir), study.name)
    runs_root = os.path.join(os.path.abspath(workdir), "runs")
    finished: dict[str, str] = {}
    resolve = _resolver(study_dir, finished)
    out = {}
    for part in study.parts:
        part_seeds = tuple(seeds) if seeds else part.seeds
        base = load_base(part.base)
        for key, value in part.overrides.items():
            sweep._set(base, key, resolve(value))
        cells = sweep.grid([sweep.parse_sweep(s) for s in part.sweeps])
        for cell in cells:
            for seed in part_seeds:
                out[part.name, cell, seed] = sweep.config_run_dir(
                    runs_root, sweep.make_config(base, cell, seed, resolve=resolve))
        finished[part.name] = out[part.name, cells[0], part_seeds[0]]
    return out


def run_study(study: ablations.Study, workdir: str, *, train_fn, seeds=None,
              log=print) -> str:
    """Trains every part of `study` under `workdir/<study>` and writes the reports.

    Returns the path of `REPORT.md`. `seeds` (a sequence) overrides the parts' seeds.
    """
    from segjax.train import sweep

    study_dir = os.path.join(os.path.abspath(workdir), study.name)
    runs_root = os.path.join(os.path.abspath(workdir), "runs")  # shared by every study
    finished: dict[str, str] = {}
    resolve = _resolver(study_dir, finished)
    lines = [f"# Study: {study.name}", "", study.question.strip(), "",
             "Reproduce (every part, then this report):", "", "```",
             f"python -m experiments.ablations --study={study.name} --workdir=DIR", "```", ""]
    for part in study.parts:
        part_seeds = tuple(seeds) if seeds else part.seeds
        part_dir = os.path.join(study_dir, part.name)
        base = load_base(part.base)
        for key, value in part.overrides.items():
            sweep._set(base, key, resolve(value))
        sweeps = [sweep.parse_sweep(s) for s in part.sweeps]
        baseline = sweep.parse_baseline(part.baseline, sweeps)
        t0 = time.perf_counter()
        log(f"== {study.name}/{part.name}: {part.title}")
        results = sweep.run_sweep(
            base, sweeps, part_seeds, part_dir, train_fn=train_fn, log=log, resolve=resolve,
            run_dir_fn=lambda cell, seed, config: sweep.config_run_dir(runs_root, config))
        log(f"== {study.name}/{part.name}: {len(results)} runs ready in "
            f"{time.perf_counter() - t0:.0f} s")
        first = sweep.grid(sweeps)[0]
        finished[part.name] = sweep.config_run_dir(
            runs_root, sweep.make_config(base, first, part_seeds[0], resolve=resolve))

        overrides = ", ".join(f"`{k}={_cli_value(v)}`" for k, v in part.overrides.items())
        lines += [f"## {part.title}", ""]
        if part.note:
            lines += [part.note.strip(), ""]
        lines += [f"Base `{part.base}`" + (f", with {overrides}" if overrides else "") +
                  f"; seeds {', '.join(map(str, part_seeds))}.", ""]
        if not sweeps:
            lines += _single_cell_lines(results, part.metrics)
            continue
        for metric in part.metrics:
            command = part_command(dataclasses.replace(part, seeds=part_seeds),
                                   os.path.join("DIR", study.name, part.name), metric)
            sweep.write_report(results, sweeps, part_dir, metric=metric, baseline=baseline,
                               command=command, name=_metric_file(metric),
                               title=f"{study.name} / {part.name}: {metric}")
            table, _ = sweep.summary_lines(sweep.values_by_cell(results, sweeps, metric),
                                           [s.key for s in sweeps], baseline or first,
                                           metric=metric)
            lines += [f"### {metric}", ""] + table + [""]
        if "{part:" not in " ".join(part.sweeps) + " ".join(map(str, part.overrides.values())):
            lines += ["This part alone:", "", "```", part_command(
                dataclasses.replace(part, seeds=part_seeds),
                os.path.join("DIR", study.name, part.name), part.metrics[0]), "```", ""]
    path = os.path.join(study_dir, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    return path


def _single_cell_lines(results, metrics) -> list[str]:
    from segjax.train import sweep

    lines = ["| seed | " + " | ".join(metrics) + " |", "|---:|" + "---:|" * len(metrics)]
    for r in results:
        lines.append(f"| {r.seed} | " + " | ".join(
            f"{sweep.metric_value(r.final, m):.4f}" for m in metrics) + " |")
    return lines + [""]
