"""The study questions: seeded ablation specs on synthetic shapes, one module per question.

A study (`Study`) answers one question with one or more parts (`Part`); a part is one
`python -m experiments.ablate` sweep: a base config (`experiments/configs/...py:PRESET`), fixed
overrides, swept keys, seeds, the baseline cell and the metrics to report. Run a study with

    python -m experiments.ablations --study=upsampling --workdir=/tmp/ablations

which trains every (part, cell, seed) not yet finished under `DIR/runs/` (one directory per
distinct config, shared by parts and studies) and writes per part
`DIR/<study>/<part>/results_<metric>.{csv,md,png}` and per study `DIR/<study>/REPORT.md`; everything
written is a function of the runs' metrics only, so a second run gives byte-identical files.
`ABLATIONS.md` (repository root) collects the measured reports and what they say.

A string value may name an earlier part's finished run as `{part:NAME}` (the run directory of
its first cell and first seed), e.g. `init_from={part:source}` in the transfer study; labels keep the placeholder,
so reports do not depend on DIR.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

STUDIES = ("upsampling", "receptive_field", "class_imbalance", "augmentation", "difficulty",
           "transfer", "instance_models", "model_zoo", "domain_adaptation", "oracle_ascent")


@dataclasses.dataclass(frozen=True)
class Part:
    """One sweep of a study.

    Attributes:
      name: directory name under the study's work dir.
      title: one line, shown as the part's heading.
      base: `path.py:PRESET` of the base config.
      overrides: `{config key: value}` applied to the base before sweeping.
      sweeps: `"KEY=V1,V2"` strings (the grid is their product).
      seeds: the seeds every cell is trained with.
      baseline: `"KEY=VALUE;..."` of the cell paired differences are taken against ("" = the
        first cell).
      metrics: reported metrics (`segjax.train.sweep.metric_value` names: `miou`,
        `boundary_iou`, `iou_per_class[5]`, ...).
      note: what the part varies and why, for the report.
    """

    name: str
    title: str
    base: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sweeps: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    baseline: str = ""
    metrics: tuple[str, ...] = ("miou",)
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Study:
    """A question and the parts that answer it (run in order)."""

    name: str
    question: str
    parts: tuple[Part, ...]


def load_study(name: str) -> Study:
    """The `STUDY` of `experiments/ablations/<name>.py`.

    Raises:
      ValueError: `name` is not one of STUDIES.
    """
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    study = importlib.import_module(f"experiments.ablations.{name}").STUDY
    if study.name != name:
        raise ValueError(f"experiments/ablations/{name}.py defines study {study.name!r}")
    return study
