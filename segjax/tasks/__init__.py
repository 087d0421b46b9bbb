"""Tasks: what a batch holds, its loss, its evaluation and its best metric (see `base`).

`TASKS` maps `config.task` names to the module whose `build(config, info, data_dir)` returns
the run's `Task`; the config check reads the same table. Modules are imported on first use.
"""

from __future__ import annotations

import importlib

from segjax.tasks.base import Accumulator, StepContext, Task

TASKS = {
    "semantic": "segjax.tasks.semantic",
    "quality": "segjax.tasks.quality",
    "instance": "segjax.tasks.instance",
    "fewshot": "segjax.tasks.fewshot",
    "embedding": "segjax.tasks.embedding",
}


def _module(name: str):
    if name not in TASKS:
        raise ValueError(f"config.task={name!r} is not one of {sorted(TASKS)}")
    return importlib.import_module(TASKS[name])


def best_metric(name: str) -> str:
    """The metric that ranks the checkpoints of task `name` (its module's `BEST_METRIC`)."""
    return _module(name).BEST_METRIC


def build_task(config, info, data_dir: str | None) -> Task:
    """The `Task` named by `config.task` (default "semantic") for dataset `info`.

    Raises:
      ValueError: an unknown task name, listing the known ones.
    """
    return _module(config.get("task", "semantic")).build(config, info, data_dir)


__all__ = ["Accumulator", "StepContext", "TASKS", "Task", "best_metric", "build_task"]
