"""Tasks: what a batch holds, its loss, its evaluation and its best metric (see `base`).

A task module registers its `build(config, info, data_dir) -> Task` with
`@register(name, defaults=...)`, declaring the config sections it owns; the
trainer, the config check and every command that reads a run dispatch through the same registry
(`registry`), so a task from the user's own module works like a built-in one.
"""

from __future__ import annotations

from segjax.tasks.base import Accumulator, StepContext, Task
from segjax.tasks.registry import (available_tasks, build_task, check_task_config,
                                   register, section, task_defaults, task_ranges)

__all__ = ["Accumulator", "StepContext", "Task", "available_tasks", "build_task",
           "check_task_config", "register", "section", "task_defaults", "task_ranges"]
