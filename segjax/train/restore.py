"""Loading a trained run back: config, task, model and one checkpoint's variables.

Every command that reads a trained run (`experiments.predict`, `oracle_refine`, `fewshot_eval`,
`embedding_eval`, `config.init_from`) goes through `load_run`, so a run is always rebuilt the
way the trainer built it: the run's own `config.json`, its task (whose `init_inputs` shape the
restore template) and its model.

Example:
  >>> run = load_run("/tmp/demo", "best")
  >>> predict = run.task.predictor(run.model, run.variables)
  >>> prediction = predict(image_uint8)          # one [H, W, 3] image of any size
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import ml_collections

from segjax.tasks import Task, build_task
from segjax.train import build, config_utils
from segjax.train.checkpoint import Checkpointer
from segjax.train.workdir import CHECKPOINT_DIR, load_config

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run, rebuilt for inference.

    Attributes:
      directory: the run's work directory.
      config: its resolved config (`config.json`).
      info: its dataset's `DatasetInfo`.
      task: its `Task` (built as the trainer built it).
      model: its flax module (`axis_name=None`).
      variables: `{"params", "batch_stats"}` of the restored checkpoint.
      step: the restored checkpoint's step.
    """

    directory: str
    config: ml_collections.ConfigDict
    info: Any
    task: Task
    model: Any
    variables: dict
    step: int


def run_task(run_dir: str) -> str:
    """The task of the run in `run_dir` (its registered name; an old name in the registry's
    renames gives the new one), read from its config.json alone: a command checks that a run is
    of the task it needs before restoring anything or creating its output.

    Raises:
      FileNotFoundError: no config.json; ValueError: unreadable, or an unknown task.
    """
    from segjax.tasks import registry

    config = load_config(run_dir)
    config_utils.import_plugins(config)
    return registry.get(config.get("task", "semantic")).name


def load_run(run_dir: str, checkpoint: str | int = "latest") -> Run:
    """The run in `run_dir` with the variables of one of its checkpoints.

    Args:
      run_dir: a work directory of `segjax.train.loop.train_and_evaluate`.
      checkpoint: "latest" (the newest step that restores), "best" (the highest value of the
        task's best metric) or a step number (int or digits).

    Nothing in the work dir is modified.

    Raises:
      FileNotFoundError: no config.json, no restorable checkpoint, or no checkpoint with
        evaluation metrics for "best".
      ValueError: `checkpoint` is none of the above.
    """
    config = load_config(run_dir)
    config_utils.import_plugins(config)  # the user's registered model, task, dataset, loss
    info = build.dataset_info(config)
    task = build_task(config, info, config.dataset.get("data_dir") or None)
    model = build.build_model(config, info.num_classes, task)
    # The restore template needs the optimizer's state structure, not its schedule: any step
    # count the schedule accepts (past the warm-up) will do.
    steps = int(config.optimizer.get("warmup_steps") or 0) + 1
    abstract, _ = build.abstract_state(config, model, steps, task)
    ckpt = Checkpointer(os.path.join(run_dir, CHECKPOINT_DIR), read_only=True,
                        best_metric=task.best_metric)
    try:
        if checkpoint == "latest":
            state, step = ckpt.restore_latest(abstract, quarantine=False)
            if state is None:
                raise FileNotFoundError(f"no restorable checkpoint under {ckpt.directory}")
        else:
            if checkpoint == "best":
                step = ckpt.best_step()
            elif str(checkpoint).isdigit():
                step = int(checkpoint)
            else:
                raise ValueError(f"checkpoint={checkpoint!r} must be 'latest', 'best' or a step")
            if step is None:
                raise FileNotFoundError(f"no checkpoint with eval metrics under {ckpt.directory}")
            state = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    log.info("loaded checkpoint step %s from %s", step, run_dir)
    return Run(directory=run_dir, config=config, info=info, task=task, model=model,
               variables={"params": state.params, "batch_stats": state.batch_stats},
               step=int(step))
