"""Seeded ablation sweeps: a grid of config values × seeds, one work directory per run.

`run_sweep` trains every (cell, seed) that has not finished (a finished run leaves `result.json`;
an interrupted one resumes from its checkpoint because its work directory is reused) and
`write_report` turns the results into `results.csv`, `results.md` and `results.png`: per cell the
mean ± std and a Student-t 95% CI of the chosen metric, and paired differences against a baseline
cell across seeds. Everything written is a pure function of the runs' metrics, so the same sweep
gives byte-identical tables.

The library behind `python -m experiments.ablate` (one sweep from the command line) and
`python -m experiments.ablations` (the studies defined in `experiments/ablations/`).

Example:
  >>> sweeps = [parse_sweep("model.name=unet,deeplabv3plus_resnet18")]
  >>> results = run_sweep(base_config, sweeps, seeds=[0, 1, 2], workdir="/tmp/abl", train_fn=...)
  >>> write_report(results, sweeps, "/tmp/abl", metric="miou")
"""

from __future__ import annotations

import ast
import copy
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from segjax import jsonio
from segjax.metrics import stats
from segjax.train import config_utils
from segjax.train.metric_writers import read_metrics

RESULT_FILE = "result.json"

Cell = tuple[tuple[str, Any], ...]  # ((key, value), ...) in sweep order


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One swept config key and the values it takes."""

    key: str
    values: tuple[Any, ...]


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Splits on `sep` outside brackets/parentheses/quotes: "a,(1,2),'x,y'" -> 3 parts."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_value(text: str) -> Any:
    """A Python literal (1, 0.5, True, (1, 2), 'x') or, failing that, the bare string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sweep(text: str) -> Sweep:
    """'KEY=V1,V2,...' -> Sweep; values are literals where they parse (tuples in parentheses).

    'K1,K2=(A1,A2),(B1,B2)' sweeps several keys jointly (one value tuple per cell), e.g.
    `dataset.min_scale,dataset.max_scale=(1.0,1.0),(0.5,2.0)` for scale augmentation off/on.
    """
    key, sep, values = text.partition("=")
    key = ",".join(k.strip() for k in key.split(","))
    if not sep or not all(key.split(",")) or not values.strip():
        raise ValueError(f"--sweep must look like KEY=V1,V2 (got {text!r})")
    parsed = tuple(parse_value(v) for v in _split_top_level(values))
    if len(set(map(repr, parsed))) != len(parsed):
        raise ValueError(f"--sweep {text!r} repeats a value")
    width = len(key.split(","))
    if width > 1 and any(not isinstance(v, tuple) or len(v) != width for v in parsed):
        raise ValueError(f"--sweep {text!r} sweeps {width} keys jointly: every value must be a "
                         f"tuple of {width}")
    return Sweep(key, parsed)


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (no repeats)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from e
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list distinct integers, got {text!r}")
    return seeds


def parse_baseline(text: str, sweeps: Sequence[Sweep]) -> Cell | None:
    """'KEY=VALUE;...' -> the baseline cell (unnamed keys take their first value); '' -> None."""
    if not text:
        return None
    chosen = dict((k.strip(), parse_value(v.strip())) for k, _, v in
                  (p.partition("=") for p in text.split(";") if p.strip()))
    unknown = set(chosen) - {s.key for s in sweeps}
    if unknown:
        raise ValueError(f"the baseline names keys that are not swept: {sorted(unknown)}")
    return tuple((s.key, chosen.get(s.key, s.values[0])) for s in sweeps)


def grid(sweeps: Sequence[Sweep]) -> list[Cell]:
    """Every combination of the sweeps' values, first sweep varying slowest."""
    keys = [s.key for s in sweeps]
    flat = [k for key in keys for k in key.split(",")]
    if len(set(flat)) != len(flat):
        raise ValueError(f"a key is swept twice: {keys}")
    return [tuple(zip(keys, combo)) for combo in itertools.product(*(s.values for s in sweeps))]


def cell_name(cell: Cell) -> str:
    """A file-system-safe, readable name: 'model.name=unet__loss.kind=focal' ('base' if empty)."""
    if not cell:
        return "base"
    raw = "__".join(f"{k}={v!r}" if not isinstance(v, str) else f"{k}={v}" for k, v in cell)
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", raw)


def run_dir(workdir: str, cell: Cell, seed: int) -> str:
    return os.path.join(workdir, "runs", cell_name(cell), f"seed_{seed}")


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        if p not in node:
            raise ValueError(f"unknown config key {key!r} (no {p!r})")
        node = node[p]
    if leaf not in node:
        raise ValueError(f"unknown config key {key!r}")
    current = node[leaf]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    try:
        node[leaf] = value
    except TypeError as e:
        raise ValueError(f"config key {key!r} cannot take {value!r}: {e}") from e


# Options added to a config section after studies had cached runs, each with the value at which
# a run trains exactly as it did before the option existed. At that value an option stays out of
# `config_run_dir`'s digest, so adding it does not orphan the cached runs; at any other value it
# enters the digest as usual. Add an entry with each such option (its test proves the old
# behaviour at that value).
DIGEST_NEUTRAL: dict[str, Any] = {
    "uda.mix_augment": False,  # DACS's jitter and blur of the mixed images: off, as cached
    "uda.adain_model": "",  # read by method "adain" only, which no cached run uses
    "uda.adain_alpha_min": 0.0,  # likewise
}


def _without_neutral(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out[key] = _without_neutral(value, path + ".")
        elif not (path in DIGEST_NEUTRAL and value == DIGEST_NEUTRAL[path]):
            out[key] = value
    return out


def config_run_dir(root: str, config: ml_collections.ConfigDict) -> str:
    """`root/<digest of the config>`: one directory per distinct config (seed included), so that
    sweeps sharing a cell (e.g. a common baseline) train it once. Options at their
    `DIGEST_NEUTRAL` value are left out of the digest."""
    import hashlib

    text = json.dumps(_without_neutral(config.to_dict()), sort_keys=True, default=repr)
    return os.path.join(root, hashlib.sha256(text.encode()).hexdigest()[:16])


def make_config(base: ml_collections.ConfigDict, cell: Cell, seed: int, *,
                resolve: Callable[[Any], Any] | None = None) -> ml_collections.ConfigDict:
    """`base` with the cell's values and `seed` set (a copy; `base` is not modified).

    `resolve` maps each cell value to the value set (e.g. expanding a placeholder path); the
    cell, and so every label and directory name, keeps the unresolved value. A cell that sets
    another `model.name` drops the base's model fields that model does not take
    (`config_utils.retarget_model`), except those the cell sets.
    """
    config = copy.deepcopy(base)
    for key, value in cell:
        keys = key.split(",")
        for k, v in zip(keys, value if len(keys) > 1 else (value,)):
            _set(config, k, resolve(v) if resolve else v)
    _set(config, "seed", seed)
    # A cell that changes the model leaves out the base's fields for the base's model.
    cell_model_keys = [k[len("model."):] for key, _ in cell for k in key.split(",")
                       if k.startswith("model.")]
    if "model" in base:
        config_utils.retarget_model(config, base.model.get("name"), kept=cell_model_keys)
    return config


def final_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each split in a metrics.jsonl: {split: record}."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        out[str(r.get("split"))] = dict(r)
    return out


def metric_value(final: Mapping[str, Mapping[str, Any]], metric: str) -> float:
    """Looks up 'split/key' or 'key' (the last non-train split that has it, else train).

    `key[i]` picks entry i of a list-valued metric, e.g. `iou_per_class[5]` (the IoU of class 5).
    """
    split, sep, key = metric.rpartition("/")
    index = None
    m = re.fullmatch(r"(.+)\[(\d+)\]", key)
    if m:
        key, index = m.group(1), int(m.group(2))
    if sep:
        candidates = [split]
    else:
        candidates = sorted(s for s in final if s != "train") + ["train"]
    for s in candidates:
        if s in final and key in final[s]:
            value = final[s][key]
            if index is not None:
                if not isinstance(value, (list, tuple)) or index >= len(value):
                    raise ValueError(f"metric {metric!r}: {key!r} has no entry {index}")
                value = value[index]
            return float(value)
    raise ValueError(f"metric {metric!r} not in the run's final metrics; have "
                     f"{ {s: sorted(r) for s, r in final.items()} }")


@dataclasses.dataclass(frozen=True)
class RunResult:
    cell: Cell
    seed: int
    final: dict[str, dict[str, Any]]  # split -> last metrics.jsonl record


def run_sweep(base: ml_collections.ConfigDict, sweeps: Sequence[Sweep], seeds: Sequence[int],
              workdir: str, *, train_fn: Callable[[ml_collections.ConfigDict, str], Any],
              log: Callable[[str], None] = print,
              resolve: Callable[[Any], Any] | None = None,
              run_dir_fn: Callable[[Cell, int, ml_collections.ConfigDict], str] | None = None,
              check: Callable[[ml_collections.ConfigDict], None] | None = None,
              ) -> list[RunResult]:
    """Runs every (cell, seed) not yet finished and returns all results in grid × seed order.

    `train_fn(config, run_workdir)` trains one run (normally `segjax.train.loop.train_and_evaluate`);
    reusing the run's work directory makes an interrupted run resume from its checkpoint.
    Configs are all built (and validated) before anything trains; `resolve` as in `make_config`.
    `run_dir_fn(cell, seed, config)` places the runs elsewhere than `run_dir(workdir, ...)`,
    e.g. `config_run_dir` to share identical runs between sweeps. `check(config)` (e.g.
    `config_utils.check_config`) validates every run's config before the first one trains or
    any directory is created: a bad value in the last cell fails at once, naming the cell.
    """
    plan = [(cell, seed, make_config(base, cell, seed, resolve=resolve))
            for cell in grid(sweeps) for seed in seeds]
    for cell, seed, config in plan if check is not None else ():
        try:
            check(config)
        except ValueError as e:
            raise ValueError(f"sweep cell {cell_name(cell)}, seed {seed}: {e}") from None
    results = []
    for i, (cell, seed, config) in enumerate(plan, 1):
        d = run_dir_fn(cell, seed, config) if run_dir_fn else run_dir(workdir, cell, seed)
        result_path = os.path.join(d, RESULT_FILE)
        if os.path.exists(result_path):
            log(f"[{i}/{len(plan)}] {cell_name(cell)} seed {seed}: finished, skipped")
        else:
            log(f"[{i}/{len(plan)}] {cell_name(cell)} seed {seed}: training in {d}")
            os.makedirs(d, exist_ok=True)
            train_fn(config, d)
            final = final_metrics(read_metrics(d))
            # The marker appears only once the run is complete (jsonio.dump: tmp + rename).
            jsonio.dump({"cell": [[k, v] for k, v in cell], "seed": seed, "final": final},
                        result_path, sort_keys=True, indent=1, default=repr)
        with open(result_path) as f:
            final = json.load(f)["final"]
        results.append(RunResult(cell, seed, final))
    return results


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def _value_label(value: Any) -> str:
    return '""' if value == "" else str(value)


def _cell_label(cell: Cell) -> str:
    return ", ".join(f"{k}={_value_label(v)}" for k, v in cell) or "base"


def values_by_cell(results: Sequence[RunResult], sweeps: Sequence[Sweep],
                   metric: str) -> dict[Cell, dict[int, float]]:
    """`{cell: {seed: metric value}}` for every cell of the grid, in grid order."""
    by_cell: dict[Cell, dict[int, float]] = {c: {} for c in grid(sweeps)}
    for r in results:
        by_cell[r.cell][r.seed] = metric_value(r.final, metric)
    return by_cell


def summary_lines(by_cell: Mapping[Cell, Mapping[int, float]], keys: Sequence[str], baseline: Cell, *,
                  metric: str, confidence: float = 0.95) -> tuple[list[str], dict[Cell, stats.Summary]]:
    """Markdown lines of the per-cell table (mean ± std, CI) and of the paired differences
    against `baseline`, and the per-cell summaries. `by_cell` is `{cell: {seed: value}}`."""
    cells = list(by_cell)
    pct = int(round(confidence * 100))
    summaries = {c: stats.summarize([v for _, v in sorted(by_cell[c].items())], confidence) for c in cells}
    lines = [f"Mean ± std of `{metric}` over seeds and the {pct}% Student-t confidence interval of the mean.", "",
             "| " + " | ".join(list(keys) + ["n", "mean ± std", f"{pct}% CI"]) + " |",
             "|" + "---|" * len(keys) + "---:|---:|---:|"]
    for cell in cells:
        s = summaries[cell]
        lines.append("| " + " | ".join([_value_label(v) for _, v in cell] + [
            str(s.n), f"{_fmt(s.mean)} ± {_fmt(s.std)}", f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]"]) + " |")
    lines += ["", f"Paired differences against {_cell_label(baseline)}: per seed `cell - baseline`, "
              "then mean, CI and the paired t-test p-value.", "",
              "| cell | seeds | mean diff | " + f"{pct}% CI | p |", "|---|---:|---:|---:|---:|"]
    for cell in cells:
        if cell == baseline:
            continue
        common = sorted(set(by_cell[cell]) & set(by_cell[baseline]))
        if not common:
            lines.append(f"| {_cell_label(cell)} | 0 | — | — | — |")
            continue
        d = stats.paired_difference([by_cell[cell][s] for s in common],
                                    [by_cell[baseline][s] for s in common], confidence)
        lines.append(f"| {_cell_label(cell)} | {len(common)} | {_fmt(d.summary.mean)} | "
                     f"[{_fmt(d.summary.ci_low)}, {_fmt(d.summary.ci_high)}] | {_fmt(d.p_value, 3)} |")
    return lines, summaries


def write_report(results: Sequence[RunResult], sweeps: Sequence[Sweep], workdir: str, *,
                 metric: str = "miou", baseline: Cell | None = None, command: str = "",
                 confidence: float = 0.95, name: str = "results",
                 title: str | None = None) -> dict[str, str]:
    """Writes NAME.csv, NAME.md and NAME.png into `workdir`; returns their paths by extension.

    `baseline` is the cell paired differences are taken against (default: the first cell, i.e.
    the first value of every sweep). `title` is the markdown heading (default "Ablation: METRIC").
    """
    cells = grid(sweeps)
    baseline = tuple(baseline) if baseline is not None else cells[0]
    if baseline not in cells:
        raise ValueError(f"baseline {_cell_label(baseline)} is not a cell of the sweep")
    keys = [s.key for s in sweeps]
    by_cell = values_by_cell(results, sweeps, metric)

    os.makedirs(workdir, exist_ok=True)
    paths = {ext: os.path.join(workdir, f"{name}.{ext}") for ext in ("csv", "md", "png")}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys + ["seed", metric])
    for cell in cells:
        for seed, value in sorted(by_cell[cell].items()):
            w.writerow([v for _, v in cell] + [seed, repr(value)])
    with open(paths["csv"], "w") as f:
        f.write(buf.getvalue())

    lines = [f"# {title or f'Ablation: {metric}'}", ""]
    if command:
        lines += ["Reproduce with:", "", "```", command, "```", ""]
    table, summaries = summary_lines(by_cell, keys, baseline, metric=metric, confidence=confidence)
    lines += table
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")

    _plot(cells, summaries, metric, int(round(confidence * 100)), paths["png"])
    return paths


def _plot(cells: Sequence[Cell], summaries: Mapping[Cell, stats.Summary], metric: str, pct: int,
          path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [summaries[c].mean for c in cells]
    errs = [0.0 if math.isnan(summaries[c].ci_half_width) else summaries[c].ci_half_width for c in cells]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(cells)), 3.5), dpi=100)
    ax.bar(range(len(cells)), means, yerr=errs, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(cells)), [_cell_label(c).replace(", ", "\n") for c in cells], fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean and {pct}% CI over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version string: byte-identical reruns
    plt.close(fig)
