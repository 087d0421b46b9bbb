"""Pure training and evaluation steps, for any `segjax.tasks.Task` (compiled by `parallel`).

The same functions run under `jax.pmap` (pass the pmap `axis_name`: loss sums, counts,
gradients and evaluation sums are summed over it, and the model's BatchNorm uses the same axis)
and under `jax.jit` over a device mesh (axis_name=None: the batch is one global array, so plain
sums are already global). The loss is always global sum / global count, never a mean of
per-device means.

Randomness: the step key is `fold_in(rng, state.step)`, the same on every device. In-model
randomness (segjax's `Dropout`) and the task's (`StepContext.example_keys`) fold in each
example's global position in the batch, never the device index, so 1 device and N devices, pmap
or mesh, draw the same numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax import lax

from segjax.tasks.base import StepContext, Task
from segjax.train.state import TrainState


def check_axis(axis_name: str | None) -> None:
    """Raises ValueError when `axis_name` is not bound by an enclosing pmap/shard_map."""
    if axis_name is None:
        return
    try:
        lax.axis_index(axis_name)
    except NameError as e:
        raise ValueError(
            f"axis_name={axis_name!r} is not bound: pass axis_name only when the step runs under "
            "jax.pmap/shard_map with that axis; under jax.jit over a mesh use axis_name=None"
        ) from e


def _psum(x: Any, axis_name: str | None) -> Any:
    return x if axis_name is None else lax.psum(x, axis_name)


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)).astype(jnp.float32) if leaves else jnp.float32(1.0)


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    task: Task,
    axis_name: str | None = None,
    learning_rate_fn: Callable[[Any], jax.Array] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on `batch`; pure.

    Args:
      state: the `TrainState` (replicated over devices).
      batch: the task's train batch (this device's share under pmap, the global batch under
        jit over a mesh), e.g. {"image" [B, H, W, 3], "label" [B, H, W]} for "semantic".
      rng: the run's base key; the step uses `fold_in(rng, state.step)`.
      task: the `Task` whose `loss` gives this share's `(sum, count)`.
      axis_name: the pmap axis, or None under jit.
      learning_rate_fn: optional schedule; adds `lr` at this step to the metrics.

    Returns:
      (new state, metrics): global values, identical on every device: `loss` (global sum /
      global count), `grad_norm` (of the global gradient), `valid_pixels` (the global count:
      counted pixels for ce/focal/ohem, their class-weight sum with class weights, images for
      dice/lovasz; the task's unit otherwise), `grads_finite` and `params_finite` (1.0 when
      every gradient / updated parameter is finite, else 0.0: the loop stops before such a
      state is checkpointed; norms would overflow long before the values do), `lr`, and the
      task's own metrics (`Task.update_task_state`).
    """
    check_axis(axis_name)
    task.check_batch(batch, task.train_keys)
    step_rng = jax.random.fold_in(rng, state.step)
    model_rng, task_rng = jax.random.split(step_rng)
    old_task_state = getattr(state, "task_state", None)  # a TaskTrainState's only
    ctx = StepContext(rng=task_rng, axis_name=axis_name, task_state=old_task_state,
                      apply_fn=state.apply_fn,
                      variables={"params": state.params, "batch_stats": state.batch_stats})

    def compute_loss(params):
        model = _TrainingModel(state.apply_fn, params, state.batch_stats, model_rng)
        outputs = task.train_forward(model, batch, ctx)
        loss_sum, count = task.loss(outputs, batch, ctx)
        global_count = lax.stop_gradient(_psum(count, axis_name))
        # d(local_sum / global_count) summed over devices is the gradient of the global loss.
        local = loss_sum / jnp.maximum(global_count, 1e-12)
        return local, (model.batch_stats, loss_sum, global_count, outputs)

    grads, (batch_stats, loss_sum, global_count, outputs) = jax.grad(
        compute_loss, has_aux=True)(state.params)
    grads = _psum(grads, axis_name)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    task_state, task_metrics = task.update_task_state(
        old_task_state, {"params": new_state.params, "batch_stats": new_state.batch_stats},
        jax.lax.stop_gradient(outputs), batch, ctx)
    if task_state is not None:
        new_state = new_state.replace(task_state=task_state)
    loss = _psum(loss_sum, axis_name) / jnp.maximum(global_count, 1e-12)
    out = {"loss": loss, "grad_norm": optax.tree.norm(grads), "valid_pixels": global_count,
           "grads_finite": _all_finite(grads), "params_finite": _all_finite(new_state.params)}
    out.update(task_metrics)
    if learning_rate_fn is not None:
        out["lr"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    return new_state, out


class _TrainingModel:
    """The model being trained, as `Task.train_forward` calls it inside one train step.

    Each call applies the model with `train=True` to the parameters being differentiated,
    starting from the BatchNorm statistics the previous call left (the state's for the first
    call) and mutating them; the first call's dropout key is the step's model key, call k's is
    that key folded with k. `batch_stats` after the last call is what the step keeps.
    """

    def __init__(self, apply_fn, params, batch_stats, rng):
        self._apply_fn, self._params, self._rng = apply_fn, params, rng
        self.batch_stats = batch_stats
        self._calls = 0

    def __call__(self, *args, **kwargs):
        rng = self._rng if self._calls == 0 else jax.random.fold_in(self._rng, self._calls)
        self._calls += 1
        outputs, mutated = self._apply_fn(
            {"params": self._params, "batch_stats": self.batch_stats}, *args, train=True,
            mutable=["batch_stats"], rngs={"dropout": rng}, **kwargs)
        self.batch_stats = mutated.get("batch_stats", self.batch_stats)
        return outputs


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    task: Task,
    axis_name: str | None = None,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """`(sums, per_example)` of `task.eval_outputs` on `batch`; `sums` summed over `axis_name`.

    `batch` is the task's eval batch (padded to a fixed shape, `"valid"` [B] False for filler
    examples). Integer sums stay int32 per batch; the host adds them up as int64.
    """
    check_axis(axis_name)
    task.check_batch(batch, task.eval_keys)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    sums, per_example = task.eval_outputs(state.apply_fn, variables, batch)
    return _psum(sums, axis_name), per_example
