"""Building a run's pieces from its config: model, optimiser, train state; and loading one back.

Only builders read the config: everything built here takes plain arguments afterwards.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import jax
import ml_collections

from segjax.models import create_model
from segjax.train import config_utils, optim
from segjax.train import state as state_lib
from segjax.train.checkpoint import Checkpointer
from segjax.train.workdir import CHECKPOINT_DIR, load_config

log = logging.getLogger(__name__)


def dataset_info(config: ml_collections.ConfigDict):
    """`segjax.data.datasets.get_dataset_info` of `config.dataset.name`."""
    from segjax.data import datasets

    return datasets.get_dataset_info(config.dataset.name)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The segjax model named by `config.model` (every non-None field but `name` an override)."""
    return create_model(config.model.name, num_classes=num_classes,
                        **config_utils.model_overrides(config.model))


def optimizer_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`create_optimizer` keyword arguments from `config.optimizer` (unsupported keys fail)."""
    kwargs = config.optimizer.to_dict()
    accepted = set(inspect.signature(optim.create_optimizer).parameters) - {"params", "frozen"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"config.optimizer.{unknown[0]} is not an argument of "
                         "segjax.train.optim.create_optimizer")
    return kwargs


def frozen_parameters(model, params):
    """The parameters `model` keeps fixed (a bool pytree, e.g. Mask R-CNN's torchvision freezing:
    `model.frozen_parameters(params)`), or None: models without that method train everything."""
    method = getattr(model, "frozen_parameters", None)
    return None if method is None else method(params)


def _init_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
    crop = config.dataset.crop_size
    return (1, crop, crop, 3)


def _init_inputs(task, shape):
    return None if task is None else task.init_inputs(shape)


def abstract_state(config: ml_collections.ConfigDict, model, num_train_steps: int, task=None):
    """(TrainState of ShapeDtypeStructs on the first device, lr schedule) without running init.

    The restore template: tracing only, so resuming skips the compilation of the model's init.
    `task` (optional) supplies the model's init inputs (`Task.init_inputs`).
    """
    shape = _init_shape(config)
    variables = jax.eval_shape(lambda: state_lib.init_variables(
        model, jax.random.key(config.seed), shape, inputs=_init_inputs(task, shape)))
    tx, schedule = optim.create_optimizer(variables["params"], num_steps=num_train_steps,
                                          frozen=frozen_parameters(model, variables["params"]),
                                          **optimizer_kwargs(config))
    abstract = jax.eval_shape(
        lambda v: state_lib.create_train_state(model, None, shape, tx, variables=v), variables)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            abstract)
    return abstract, schedule


def create_state(config: ml_collections.ConfigDict, model, num_train_steps: int, task=None):
    """Fresh host `TrainState` (step 0) and the lr schedule; `config.init_from` merged in.

    `task` (optional) supplies the model's init inputs (`Task.init_inputs`)."""
    from segjax.train import pretrained

    rng = jax.random.key(config.seed)
    shape = _init_shape(config)
    variables = state_lib.init_variables(model, rng, shape,
                                         inputs=_init_inputs(task, shape))
    if config.init_from:
        variables = pretrained.merge_pretrained(
            variables, pretrained.load_pretrained(config.init_from), num_classes=model.num_classes)
    tx, schedule = optim.create_optimizer(variables["params"], num_steps=num_train_steps,
                                          frozen=frozen_parameters(model, variables["params"]),
                                          **optimizer_kwargs(config))
    state = state_lib.create_train_state(model, rng, shape, tx, variables=variables)
    return state, schedule


def load_for_inference(workdir: str, checkpoint: str = "latest", *, task=None):
    """(config, dataset info, model, variables) of a trained run, for prediction.

    Args:
      workdir: a work directory of `segjax.train.loop.train_and_evaluate`.
      checkpoint: "latest" (newest step that restores), "best" (highest value of the task's
        best metric) or a step.
      task: the run's `Task`, for models whose inputs are not images alone (its `init_inputs`
        shape the restore template); None: images.

    Nothing in the work dir is modified.
    """
    from segjax.tasks import best_metric

    config = load_config(workdir)
    info = dataset_info(config)
    model = build_model(config, info.num_classes)
    # The restore template needs the optimizer's state structure, not its schedule: any step
    # count the schedule accepts (past the warm-up) will do.
    steps = int(config.optimizer.get("warmup_steps") or 0) + 1
    abstract, _ = abstract_state(config, model, steps, task)
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), read_only=True,
                        best_metric=best_metric(config.get("task", "semantic")))
    try:
        if checkpoint == "latest":
            state, step = ckpt.restore_latest(abstract, quarantine=False)
            if state is None:
                raise FileNotFoundError(f"no restorable checkpoint under {ckpt.directory}")
        else:
            step = ckpt.best_step() if checkpoint == "best" else int(checkpoint)
            if step is None:
                raise FileNotFoundError(f"no checkpoint with eval metrics under {ckpt.directory}")
            state = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    log.info("loaded checkpoint step %s from %s", step, workdir)
    return config, info, model, {"params": state.params, "batch_stats": state.batch_stats}
