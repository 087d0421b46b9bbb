"""Building a run's pieces from its config: model, optimiser, train state.

Only builders read the config: everything built here takes plain arguments afterwards. Loading a
trained run back is `segjax.train.restore.load_run`; initialising from pretrained weights is
`segjax.train.pretrained`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import ml_collections

from segjax.models import available_models, create_model
from segjax.models.registry import OUTPUTS, model_output
from segjax.train import config_utils, optim
from segjax.train import state as state_lib


def dataset_info(config: ml_collections.ConfigDict):
    """`segjax.data.datasets.get_dataset_info` of `config.dataset.name`."""
    from segjax.data import datasets

    return datasets.get_dataset_info(config.dataset.name)


def build_model(config: ml_collections.ConfigDict, num_classes: int, task=None):
    """The segjax model named by `config.model` (every non-None field but `name` an override).

    With the run's `task`, a model that returns something other than what the task consumes
    (`Task.model_output`, e.g. a detector for the semantic task) fails naming both."""
    if task is not None:
        returns = model_output(config.model.name)
        if returns != task.model_output:
            raise ValueError(
                f"config.model.name={config.model.name!r} returns {returns!r} outputs "
                f"({OUTPUTS[returns]}), but the {task.name!r} task consumes {task.model_output!r} "
                f"ones: choose one of {available_models(task.model_output)}")
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


def _init_task_state(task, config, variables):
    """The task's own state at step 0 (`Task.init_task_state`), from a key of its own."""
    if task is None:
        return None
    return task.init_task_state(jax.random.fold_in(jax.random.key(config.seed), 2), variables)


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
        lambda v: state_lib.create_train_state(model, None, shape, tx, variables=v,
                                               task_state=_init_task_state(task, config, v)),
        variables)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            abstract)
    return abstract, schedule


def create_state(config: ml_collections.ConfigDict, model, num_train_steps: int, task=None, *,
                 init: Callable[[dict], dict] | None = None):
    """Fresh host `TrainState` (step 0) and the lr schedule.

    `task` (optional) supplies the model's init inputs (`Task.init_inputs`); `init` (optional)
    maps the freshly initialised variables to the ones trained from, e.g. `config.init_from`'s
    weights merged in (`segjax.train.pretrained.initializer(config, ...)`)."""
    rng = jax.random.key(config.seed)
    shape = _init_shape(config)
    variables = state_lib.init_variables(model, rng, shape,
                                         inputs=_init_inputs(task, shape))
    if init is not None:
        variables = init(variables)
    tx, schedule = optim.create_optimizer(variables["params"], num_steps=num_train_steps,
                                          frozen=frozen_parameters(model, variables["params"]),
                                          **optimizer_kwargs(config))
    state = state_lib.create_train_state(model, rng, shape, tx, variables=variables,
                                         task_state=_init_task_state(task, config, variables))
    return state, schedule
