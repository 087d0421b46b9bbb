"""Train state: parameters, optimiser state and BatchNorm statistics in one pytree."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """`flax.training.train_state.TrainState` plus the model's `batch_stats` collection."""

    batch_stats: Any = None


class TaskTrainState(TrainState):
    """A `TrainState` plus the task's own state (`Task.init_task_state`: an EMA teacher's
    weights, a discriminator and its optimiser state). Only tasks that keep such state get this
    class, so the pytree, and with it the checkpoints, of every other run stay as they were
    (orbax refuses to restore a checkpoint into a template with a field it lacks)."""

    task_state: Any = None


def init_variables(model: nn.Module, rng: jax.Array, input_shape: Sequence[int], *,
                   inputs: tuple[tuple, dict] | None = None) -> dict[str, Any]:
    """Initial variables {"params", "batch_stats"} of `model` for float32 images `input_shape` [N, H, W, C].

    `rng` seeds the parameters (and a dropout key split from it). `batch_stats` is {} for models
    without BatchNorm. `inputs` = `(args, kwargs)` replaces the zero images for models that take
    more (a task's `init_inputs`).
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be [N, H, W, C], got {tuple(input_shape)}")
    params_rng, dropout_rng = jax.random.split(rng)
    args, kwargs = inputs if inputs is not None else ((jnp.zeros(input_shape, jnp.float32),), {})

    @jax.jit
    def init(params_rng, dropout_rng):
        return model.init({"params": params_rng, "dropout": dropout_rng}, *args, train=False,
                          **kwargs)

    variables = init(params_rng, dropout_rng)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def create_train_state(
    model: nn.Module,
    rng: jax.Array,
    input_shape: Sequence[int],
    tx: optax.GradientTransformation,
    *,
    variables: dict[str, Any] | None = None,
    task_state: Any = None,
) -> TrainState:
    """A fresh `TrainState` (step 0) for `model` with optimiser `tx`.

    Args:
      model: a segjax model (`apply(variables, images, train)` -> {"logits": ...}).
      rng: PRNG key for initialisation (ignored when `variables` is given).
      input_shape: [N, H, W, C] of a dummy input used to build the parameters.
      tx: the optimiser, e.g. from `segjax.train.optim.create_optimizer`.
      variables: already initialised {"params", "batch_stats"} (e.g. converted pretrained weights),
        used instead of initialising from `rng`.
      task_state: the task's own state (`Task.init_task_state`); not None gives a
        `TaskTrainState`.
    """
    if variables is None:
        variables = init_variables(model, rng, input_shape)
    kwargs = {} if task_state is None else {"task_state": task_state}
    return (TrainState if task_state is None else TaskTrainState).create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        **kwargs,
    )
