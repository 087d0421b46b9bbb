"""Config helpers for the training loop: step counts, validation, resume compatibility.

Only `segjax.train.loop` and the experiment scripts read configs; layers never do.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from typing import Any, Mapping, Sequence

import ml_collections

# Keys that may differ between a run and the run that resumes it: they change how long or how
# often things happen, or where data lives, not what is trained.
# `num_train_steps`/`_epochs` are not among them: the poly schedule is a function of the run's
# length, so changing it mid-run would silently rescale the learning rate from the resume on.
RESUME_MAY_DIFFER = (
    "log_every_steps", "log_every_epochs",
    "eval_every_steps", "eval_every_epochs", "checkpoint_every_steps", "checkpoint_every_epochs",
    "keep_checkpoints", "init_from", "eval.", "distributed.", "dataset.data_dir",
)


def get_steps(config: Mapping[str, Any], name: str, *, batch_size: int,
              num_examples: int | None = None) -> int:
    """Resolves `{name}_steps`, `{name}_epochs` or `{name}_examples` into a number of steps.

    Exactly one of the three must be set (not None) in `config` (a ConfigDict or dict).
    Epochs use `num_examples` (training set size); examples and epochs are rounded up to whole
    steps of `batch_size` examples. Example: `get_steps(c, "num_train", batch_size=16,
    num_examples=10582)` with `c.num_train_epochs = 2` gives 1323.

    Raises:
      ValueError: none or several of the keys are set, a value is not positive, or epochs are
        given without `num_examples`.
    """
    values = {suffix: config.get(f"{name}_{suffix}") for suffix in ("steps", "epochs", "examples")}
    given = {k: v for k, v in values.items() if v is not None}
    if len(given) != 1:
        raise ValueError(
            f"set exactly one of config.{name}_steps / _epochs / _examples, got {given or 'none'}")
    (suffix, value), = given.items()
    if value <= 0:
        raise ValueError(f"config.{name}_{suffix} must be positive, got {value}")
    if suffix == "steps":
        if int(value) != value:
            raise ValueError(f"config.{name}_steps must be an integer, got {value}")
        return int(value)
    if suffix == "epochs":
        if num_examples is None:
            raise ValueError(f"config.{name}_epochs needs the dataset size (num_examples)")
        value = value * num_examples
    return max(1, math.ceil(value / batch_size))


def flatten(config: Mapping[str, Any] | ml_collections.ConfigDict, prefix: str = "") -> dict:
    """`{"a.b": value}` for every leaf of a (nested) config; tuples become lists (JSON form)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def incompatible_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two configs and that a resume may not change.

    Both are flat or nested dicts/ConfigDicts (e.g. the work dir's config.json and the new
    config). Keys in `RESUME_MAY_DIFFER` (exact, or prefixes ending in ".") are ignored.
    """
    a, b = flatten(old), flatten(new)

    def may_differ(key: str) -> bool:
        return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_DIFFER)

    return sorted(k for k in set(a) | set(b) if not may_differ(k) and a.get(k) != b.get(k))


def retarget_model(config: ml_collections.ConfigDict, preset_model: str,
                   kept: Sequence[str] = ()) -> list[str]:
    """Leaves out the model overrides a preset set for another model.

    When `config.model.name` is no longer `preset_model` (changed on the command line or by a
    sweep), the `config.model` fields the new model does not take were set for the old one:
    they are reset to None (not passed) and named in a printed note, except those in `kept`
    (set explicitly for this run: those still fail in `create_model` if the model lacks them).
    `dtype` is never reset (every model computes in float32 without it). Returns the reset keys.
    """
    from segjax.models.registry import accepted_overrides

    if "model" not in config or config.model.get("name") in (None, preset_model):
        return []
    try:
        accepted = accepted_overrides(config.model.name)
    except ValueError:  # an unknown name: create_model says so, listing the known ones
        return []
    if accepted is None:
        return []
    reset = [k for k, v in config.model.items()
             if k not in ("name", "dtype") and v is not None and k not in accepted
             and k not in kept]
    for key in reset:
        print(f"note: config.model.{key}={config.model[key]!r} was set for {preset_model}, which "
              f"{config.model.name} does not take: left out", flush=True)
        with config.ignore_type():
            config.model[key] = None
    return reset


def model_overrides(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """`create_model` keyword overrides from `config.model`: every field but `name`, not None."""
    d = model_config.to_dict() if isinstance(model_config, ml_collections.ConfigDict) else dict(
        model_config)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()
            if k != "name" and v is not None}


def import_plugins(config) -> None:
    """Imports the modules of `config.imports` (the user's registered models, losses, tasks and
    datasets; see docs/extending.md).

    Raises:
      ValueError: a module that cannot be imported, naming it.
    """
    for name in _imports(config):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"config.imports: cannot import {name!r} ({e}); is its directory on "
                             "PYTHONPATH (or the package installed)?") from e


def _imports(config) -> tuple[str, ...]:
    """`config.imports` as a tuple of module names, refused by key when it is not one."""
    imports = config.get("imports") or ()
    if not isinstance(imports, (list, tuple)) or not all(isinstance(n, str) for n in imports):
        raise ValueError(f"config.imports must be a tuple of module names, got {imports!r}")
    return tuple(imports)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Validates values that the loop would otherwise trip over later (fail early, name the key).

    Every key is the trainer's (`segjax.train.defaults`) or in a section the task declares; every
    declared key has its default's type and lies in its declared range (`check_values` with
    `defaults.RANGES` and the task's `ranges`); the task's own `check` passes.

    Raises:
      ValueError: naming the offending key and the accepted values.
    """
    required = ("seed", "parallelism", "batch_size", "num_train_steps", "log_every_steps",
                "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                "model.name", "dataset.name")
    flat = flatten(config)
    missing = [k for k in required if k not in flat]
    if missing:
        raise ValueError(f"config is missing required key(s) {missing}")
    # The same tables the code dispatches on: adding a name in one place is enough.
    from segjax import tasks
    from segjax.train.parallel import PARALLELISMS

    if not isinstance(config.parallelism, str) or config.parallelism not in PARALLELISMS:
        raise ValueError(f"config.parallelism must be one of {sorted(PARALLELISMS)}, "
                         f"got {config.parallelism!r}")
    task = config.get("task", "semantic")
    if not isinstance(task, str):
        raise ValueError(f"config.task must be a task name (a str), got {task!r}")
    _imports(config)
    task_sections = tasks.task_defaults(task)  # an unknown task fails here, listing the known
    _check_trainer_keys(config, task, task_sections)
    from segjax.train import defaults

    # Types and ranges before the task's own check reads the values.
    check_values(config, defaults.trainer_defaults(), defaults.RANGES)
    for key in defaults.STEP_UNITS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ValueError(f"config.{key} must be a finite number (or None), got {value!r}")
    check_values({k: tasks.section(config, k, task) for k in task_sections.keys()},
                 task_sections, tasks.task_ranges(task))
    tasks.check_task_config(config)
    if config.dataset.min_scale > config.dataset.max_scale:
        raise ValueError(f"config.dataset.min_scale ({config.dataset.min_scale}) must be <= "
                         f"config.dataset.max_scale ({config.dataset.max_scale})")


def parse_range(spec: str) -> tuple[float, bool, float, bool, bool]:
    """`"[0, 1)"` -> (low, low_closed, high, high_closed, none_ok); `" or None"` allows None."""
    text, _, none = spec.partition(" or ")
    if none not in ("", "None") or text[0] not in "[(" or text[-1] not in "])":
        raise ValueError(f"bad range {spec!r}: write it like '[0, 1)' or '(0, inf) or None'")
    low, high = (float(v) for v in text[1:-1].split(","))
    return low, text[0] == "[", high, text[-1] == "]", none == "None"


def _declared_leaves(node, prefix: str = ""):
    """(dotted key, declared type or None, default) of every leaf of a defaults ConfigDict: the
    default's type, a placeholder's declared type; None for a plain None default (any value)."""
    for key in node.keys():
        value = node[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from _declared_leaves(value, f"{prefix}{key}.")
            continue
        declared = node.get_type(key)
        yield f"{prefix}{key}", (None if declared is type(None) else declared), value


def _lookup(config, key: str):
    """(present, value) of dotted `key` in a (nested) ConfigDict or dict."""
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False, None
        node = node[part]
    return True, node


def _type_ok(value, declared) -> bool:
    if declared is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if declared is int:
        return isinstance(value, int)
    if declared is float:
        return isinstance(value, (int, float))
    if declared in (tuple, list):
        return isinstance(value, (tuple, list))
    if declared is str:
        return isinstance(value, str)
    return True  # a type this check does not know (a nested object): the code reading it checks


def check_values(config, declared: ml_collections.ConfigDict,
                 ranges: Mapping[str, str] | None = None, *, skip: Sequence[str] = ()) -> None:
    """Every key of `declared` (a defaults ConfigDict) that `config` holds has its default's
    type (int for an int default, a number for a float one, ...; a placeholder's declared type)
    and lies in its range (`ranges`: dotted key -> interval, see `parse_range`). None is
    accepted where the default is None or the range says "or None". Floats must be finite.

    Raises:
      ValueError: naming the first key (`config.KEY`) with a wrong type or an out-of-range value.
    """
    ranges = dict(ranges or {})
    for key, kind, default in _declared_leaves(declared):
        present, value = _lookup(config, key)
        if not present or key in skip:
            continue
        spec = ranges.get(key)
        bounds = parse_range(spec) if spec else None
        none_ok = default is None or bool(bounds and bounds[4])
        if value is None and none_ok:
            continue
        if value is None or not _type_ok(value, kind):
            name = {float: "a number", int: "an int"}.get(kind, f"a {getattr(kind, '__name__', kind)}")
            raise ValueError(f"config.{key} must be {name}{' (or None)' if none_ok else ''}, got "
                             f"{value!r} ({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config.{key} must be a finite number, got {value!r}")
        if bounds:
            low, low_closed, high, high_closed, _ = bounds
            if (value < low or (value == low and not low_closed) or value > high
                    or (value == high and not high_closed)):
                raise ValueError(f"config.{key}={value!r} is out of its range "
                                 f"{spec.partition(' or ')[0]}")


def _check_trainer_keys(config, task: str, task_sections) -> None:
    """Every key is the trainer's (`segjax.train.defaults`) or in a section the task declares."""
    from segjax.train import defaults

    trainer = defaults.trainer_defaults()
    known = set(trainer.keys()) | set(defaults.STEP_UNITS) | set(task_sections.keys())
    for key in config.keys():
        if key not in known:
            raise ValueError(
                f"config.{key} is neither a trainer key nor a section of the {task!r} task "
                f"(trainer keys: {', '.join(sorted(trainer.keys()))}; the task's sections: "
                f"{', '.join(sorted(task_sections.keys())) or 'none'})")
    for key in trainer.keys():
        if (key in defaults.OPEN_SECTIONS or key in task_sections or key not in config
                or not isinstance(trainer[key], ml_collections.ConfigDict)):
            continue  # the task checks the sections it shares (`tasks.section`)
        unknown = sorted(set(config[key].keys()) - set(trainer[key].keys()))
        if unknown:
            raise ValueError(f"config.{key}.{unknown[0]} is not a key of the trainer's "
                             f"config.{key} (keys: {', '.join(sorted(trainer[key].keys()))}) "
                             f"nor of the {task!r} task's")


def load_config_file(spec: str, *, root: str | None = None) -> ml_collections.ConfigDict:
    """The config of `path.py[:preset]` (`get_config(preset)`; no preset: `get_config()`).

    A relative `path` is looked up in the current directory, then under `root` (e.g. the
    repository root, so that specs written in study files work from anywhere).

    Raises:
      ValueError: the file does not exist.
    """
    path, _, preset = spec.partition(":")
    full = path
    if not os.path.isabs(path) and not os.path.exists(path) and root is not None:
        full = os.path.join(root, path)
    if not os.path.isfile(full):
        raise ValueError(f"config file {path!r} not found (from {spec!r})")
    module_spec = importlib.util.spec_from_file_location("_segjax_config", full)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def unknown_key_message(config: ml_collections.ConfigDict, keys: Sequence[str]) -> str | None:
    """A message naming the first dotted key of `keys` that `config` does not define, and the
    keys it has at that level; None when all exist."""
    for key in keys:
        node = config
        for i, part in enumerate(key.split(".")):
            if not hasattr(node, "keys") or part not in node.keys():
                parent = ".".join(key.split(".")[:i]) or "<top level>"
                known = sorted(node.keys()) if hasattr(node, "keys") else []
                return f"unknown config key {key!r}; keys under {parent}: {', '.join(known)}"
            node = node[part]
    return None
