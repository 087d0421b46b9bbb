"""The task registry: names -> builders, each with the config sections the task owns.

A task is registered where it is defined, in segjax or in the user's own module:

    @segjax.tasks.register("depth", defaults=depth_defaults)
    def build(config, info, data_dir) -> Task: ...

`defaults()` returns a `ConfigDict` of the top-level sections the task reads, with every key and
its default (e.g. `{"fewshot": {"ways": 1, ...}}`; the semantic task also declares its keys of
the trainer's shared `eval` section). `experiments/configs/common.py:base_config(task)` puts them
into a run's config, so every key can be overridden from the command line; `check_config`
refuses a key the task does not declare (a misspelt one is never silently ignored), and
`section(config, name)` is what `build` reads: the defaults updated with the config's values
(a config written before a key existed still loads).

Built-in tasks are imported on first use, like the built-in models. A renamed task keeps its
old name readable in `_RENAMED`, so the runs written before the rename still load.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

import ml_collections

_BUILTIN_MODULES = (
    "segjax.tasks.semantic",
    "segjax.tasks.instance",
    "segjax.tasks.oracle",
    "segjax.tasks.oracle_adversarial",
    "segjax.tasks.fewshot",
    "segjax.tasks.embedding",
    "segjax.tasks.uda",
    "segjax.tasks.volumetric",
    "segjax.tasks.pointcloud",
)


# Old task name -> its name now, for the config.json of runs written before a rename. The task's
# config section had the task's name and was renamed with it: `section` reads the old one when
# only it is present. The one place that knows about renames.
_RENAMED = {
    "quality": "oracle",  # issue 24: one name for the oracle (task, config section, refinement)
}


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """A registered task: its `build(config, info, data_dir) -> Task` (the Task says which metric
    ranks its checkpoints), `defaults() -> ConfigDict` of the config sections it owns and an
    optional `check(config)` of their values."""

    name: str
    build: Callable[..., Any]
    defaults: Callable[[], ml_collections.ConfigDict]
    check: Callable[[Any], None] | None = None
    ranges: Mapping[str, str] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, TaskEntry] = {}
_loaded = False


def _no_sections() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()


def register(name: str, *,
             defaults: Callable[[], ml_collections.ConfigDict] | None = None,
             check: Callable[[Any], None] | None = None,
             ranges: Mapping[str, str] | None = None):
    """Decorator registering `build(config, info, data_dir) -> Task` as task `name` (unique).

    Args:
      name: the `config.task` value.
      defaults: returns the task's config sections with every key's default (None: the task
        reads no section of its own).
      check: `check(config)` raises ValueError naming a bad value of the task's sections, before
        anything is built (optional; unknown keys are refused without it).
      ranges: dotted key of its sections -> interval (`"[1, inf)"`, `"(0, 1] or None"`; see
        `segjax.train.config_utils.parse_range`). Every key's type is its default's (a
        placeholder's declared type); `check_config` checks types and ranges by key.
    """

    def decorator(build: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is registered twice")
        if name in _RENAMED:
            raise ValueError(f"task name {name!r} is the old name of the {_RENAMED[name]!r} task "
                             "(runs written before the rename use it): choose another name")
        _REGISTRY[name] = TaskEntry(name, build, defaults or _no_sections, check,
                                    dict(ranges or {}))
        return build

    return decorator


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def available_tasks() -> list[str]:
    """Sorted names accepted as `config.task`."""
    _load_builtins()
    return sorted(_REGISTRY)


def get(name: str) -> TaskEntry:
    """The entry of task `name` (an old name in `_RENAMED` gives the renamed task's entry).

    Raises:
      ValueError: an unknown name, listing the known ones (a task from the user's module is
        known once that module is imported, e.g. by the config file).
    """
    _load_builtins()
    name = _RENAMED.get(name, name)
    if name not in _REGISTRY:
        raise ValueError(f"config.task={name!r} is not one of {available_tasks()} (a task of "
                         "your own is registered when its module is imported: import it in the "
                         "config file)")
    return _REGISTRY[name]


def task_defaults(name: str) -> ml_collections.ConfigDict:
    """The config sections task `name` owns, with their defaults (a fresh copy)."""
    return get(name).defaults()


def task_ranges(name: str) -> dict[str, str]:
    """The ranges task `name` declares for keys of its sections (dotted key -> interval)."""
    return dict(get(name).ranges)


def build_task(config, info, data_dir: str | None):
    """The `Task` named by `config.task` (default "semantic") for dataset `info`."""
    return get(config.get("task", "semantic")).build(config, info, data_dir)


def section(config, key: str, task: str | None = None) -> ml_collections.ConfigDict:
    """`config.<key>` as the task reads it: the task's declared defaults of that section updated
    with the config's values (unknown keys fail, naming them). A section renamed with its task
    (`_RENAMED`) is read from its old key when the config has only that (an old run's).

    Args:
      config: a run's config.
      key: a top-level section the task declares (e.g. "fewshot", "loss", "eval").
      task: the task's name (default: `config.task`).
    """
    name = task or config.get("task", "semantic")
    defaults = task_defaults(name)
    if key not in defaults:
        raise ValueError(f"the {name!r} task declares no config section {key!r}")
    out = defaults[key]
    given = config.get(key)
    if given is None:
        old = [o for o, new in _RENAMED.items() if new == key and config.get(o) is not None]
        given = config.get(old[0]) if old else None
    if given is not None:
        _check_keys(given, out, f"config.{key}", name, allowed=_shared_keys(key))
        _merge(out, given)
    return out


def _shared_keys(key: str) -> frozenset[str]:
    """Keys of a section the trainer owns too (the task declares only its own part)."""
    from segjax.train.defaults import trainer_defaults

    trainer = trainer_defaults()
    return frozenset(trainer[key].keys()) if key in trainer else frozenset()


def _merge(into: ml_collections.ConfigDict, given) -> None:
    for k, v in given.items():
        if k not in into:
            continue  # a shared key (the trainer's)
        if isinstance(into[k], ml_collections.ConfigDict):
            _merge(into[k], v)
        else:
            with into.ignore_type():
                into[k] = v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v


def _check_keys(given, declared, where: str, task: str, allowed=frozenset()) -> None:
    for k in given.keys():
        if k in allowed:
            continue
        if k not in declared:
            raise ValueError(f"{where}.{k} is not a key of the {task!r} task's config; its keys: "
                             f"{', '.join(sorted(set(declared.keys()) | set(allowed)))}")
        if isinstance(declared[k], ml_collections.ConfigDict) and hasattr(given[k], "keys"):
            _check_keys(given[k], declared[k], f"{where}.{k}", task)


def check_task_config(config) -> None:
    """Every key of the config sections owned by the run's task is one it declares, and the
    task's own `check` passes.

    Raises:
      ValueError: naming the first unknown key and the task's keys at that level, or a bad value.
    """
    name = config.get("task", "semantic")
    for key in task_defaults(name).keys():
        section(config, key, name)
    if get(name).check is not None:
        get(name).check(config)
