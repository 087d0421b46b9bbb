"""The work directory of a run: its files, the config it was written with, resume compatibility.

Layout: `config.json` (the resolved config, plus `numerics_env`: the environment switches that
change numerics), `checkpoints/` (orbax), TensorBoard events, `metrics.jsonl` and
`predictions/step_N/`.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from segjax import jsonio
from segjax.train import config_utils

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
PREDICTIONS_DIR = "predictions"
# Environment switches that change a run's floating-point results (see README): recorded in
# config.json so that a run can be reproduced, and a resume under other values is flagged.
NUMERICS_ENV = ("SEGJAX_WINOGRAD", "SEGJAX_CONV_IMPL")
_ENV_KEY = "numerics_env"


class IncompatibleWorkdirError(ValueError):
    """The work directory holds a run whose config differs in keys a resume may not change."""


def numerics_env() -> dict[str, str]:
    """The current values of `NUMERICS_ENV` ("" when unset, i.e. the default)."""
    return {name: os.environ.get(name, "") for name in NUMERICS_ENV}


def _has_checkpoints(workdir: str) -> bool:
    ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
    return os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))


def check_and_write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses to resume checkpoints written under an incompatible config; writes config.json.

    Without checkpoints (e.g. a run that failed before its first save) any config may reuse the
    work dir. A resume under other `NUMERICS_ENV` values is allowed with a printed warning (the
    results then differ in their last digits from an uninterrupted run). config.json is
    (re)written by process 0.

    Raises:
      IncompatibleWorkdirError: naming the keys that differ.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    env = numerics_env()
    if _has_checkpoints(workdir) and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        old_env = old.pop(_ENV_KEY, None)
        new = json.loads(config.to_json())
        bad = config_utils.incompatible_keys(old, new)
        if bad:
            details = ", ".join(f"{k}: {config_utils.flatten(old).get(k)!r} -> "
                                f"{config_utils.flatten(new).get(k)!r}" for k in bad)
            raise IncompatibleWorkdirError(
                f"{workdir} holds a run with a different config ({details}); use a new --workdir "
                "or the same values to resume")
        if old_env is not None and old_env != env:
            changed = {k: (old_env.get(k), env[k]) for k in env if old_env.get(k) != env[k]}
            print(f"warning: resuming with other numerics switches than the run started with "
                  f"({changed}); results will differ in the last digits from an uninterrupted "
                  "run", flush=True)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        record = json.loads(config.to_json())
        record[_ENV_KEY] = env
        jsonio.dump(record, path, indent=2, sort_keys=True)  # whole or not at all


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to `<workdir>/config.json` (without `numerics_env`)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a training work dir?")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}): is {workdir!r} a training work "
                         "dir written completely?") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a JSON {type(record).__name__}, not a config object")
    record.pop(_ENV_KEY, None)
    return ml_collections.ConfigDict(record)


def predictions_dir(workdir: str, step: int) -> str:
    """Where the pictures of the evaluation at `step` go."""
    return os.path.join(workdir, PREDICTIONS_DIR, f"step_{step:07d}")
