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
    for name in config.get("imports") or ():
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"config.imports: cannot import {name!r} ({e}); is its directory on "
                             "PYTHONPATH (or the package installed)?") from e


def check_config(config: ml_collections.ConfigDict) -> None:
    """Validates values that the loop would otherwise trip over later (fail early, name the key).

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

    if config.parallelism not in PARALLELISMS:
        raise ValueError(f"config.parallelism must be one of {sorted(PARALLELISMS)}, "
                         f"got {config.parallelism!r}")
    task = config.get("task", "semantic")
    task_sections = tasks.task_defaults(task)  # an unknown task fails here, listing the known
    _check_trainer_keys(config, task, task_sections)
    tasks.check_task_config(config)
    for key in ("batch_size", "keep_checkpoints"):
        if not isinstance(flat[key], int) or flat[key] < 1:
            raise ValueError(f"config.{key} must be a positive int, got {flat[key]!r}")


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
