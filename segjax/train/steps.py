"""Pure training and evaluation steps (compiled by `segjax.train.parallel`).

The same functions run under `jax.pmap` (pass the pmap `axis_name`: loss sums, counts, gradients
and the confusion matrix are summed over it, and the model's BatchNorm must use the same axis)
and under `jax.jit` over a device mesh (axis_name=None: the batch is one global array, so plain
sums are already global). The loss is always global sum / global count, never a mean of
per-device means.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax import lax

from segjax import metrics as metrics_lib
from segjax.models.outputs import LOGITS
from segjax.train.state import TrainState

LossFn = Callable[[Mapping[str, jax.Array], jax.Array], tuple[jax.Array, jax.Array]]


def _check_axis(axis_name: str | None) -> None:
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


def _check_batch(batch: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"batch is missing key(s) {missing}; it has {sorted(batch)}")
    if batch["label"].shape != batch["image"].shape[:-1]:
        raise ValueError(
            f"batch['label'] shape {tuple(batch['label'].shape)} must be batch['image'] shape "
            f"{tuple(batch['image'].shape)} without its channel axis"
        )


def _psum(x: Any, axis_name: str | None) -> Any:
    return x if axis_name is None else lax.psum(x, axis_name)


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    loss_fn: LossFn,
    axis_name: str | None = None,
    learning_rate_fn: Callable[[Any], jax.Array] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on `batch`; pure.

    Args:
      state: the `TrainState` (replicated over devices).
      batch: {"image": float32 [B, H, W, 3], "label": int [B, H, W]} (the device's shard under
        pmap, the global batch under jit over a mesh).
      rng: base PRNG key; dropout uses it folded with `state.step` (and the device index under
        pmap, so pmap and mesh runs draw different dropout masks; each is reproducible).
      loss_fn: `(outputs, labels) -> (sum, count)`, e.g. a `functools.partial` of
        `segjax.losses.segmentation_loss`.
      axis_name: the pmap axis, or None under jit.
      learning_rate_fn: optional schedule; adds `lr` at this step to the metrics.

    Returns:
      (new state, metrics): metrics hold global values (identical on every device): `loss`
      (global sum / global count), `grad_norm` (of the global gradient), `valid_pixels` (the
      global count the loss is divided by: counted pixels for ce/focal/ohem, their class-weight sum
      with class_weights, images for dice/lovasz), and `lr` when `learning_rate_fn` is given.
    """
    _check_axis(axis_name)
    _check_batch(batch, ("image", "label"))
    step_rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        step_rng = jax.random.fold_in(step_rng, lax.axis_index(axis_name))

    def compute_loss(params):
        outputs, mutated = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": step_rng},
        )
        loss_sum, count = loss_fn(outputs, batch["label"])
        global_count = lax.stop_gradient(_psum(count, axis_name))
        # d(local_sum / global_count) summed over devices is the gradient of the global loss.
        local = loss_sum / jnp.maximum(global_count, 1e-12)
        return local, (mutated, loss_sum, global_count)

    grads, (mutated, loss_sum, global_count) = jax.grad(compute_loss, has_aux=True)(state.params)
    grads = _psum(grads, axis_name)
    new_state = state.apply_gradients(grads=grads, batch_stats=mutated.get("batch_stats", state.batch_stats))
    loss = _psum(loss_sum, axis_name) / jnp.maximum(global_count, 1e-12)
    out = {"loss": loss, "grad_norm": optax.tree.norm(grads), "valid_pixels": global_count}
    if learning_rate_fn is not None:
        out["lr"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    return new_state, out


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    num_classes: int,
    ignore_label: int,
    axis_name: str | None = None,
) -> jax.Array:
    """Confusion matrix int32 [K, K] (rows = ground truth) of the model's argmax on `batch`.

    `batch` holds "image" [B, H, W, 3] and "label" [B, H, W] (padding pixels carry
    `ignore_label`) and optionally "valid" bool [B] (False for padding examples). The logits are
    at the input size already. Under pmap the matrix is summed over `axis_name`.
    """
    _check_axis(axis_name)
    _check_batch(batch, ("image", "label"))
    outputs = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    pred = jnp.argmax(outputs[LOGITS], axis=-1)
    conf = metrics_lib.confusion_matrix(
        pred, batch["label"], num_classes, ignore_label=ignore_label, valid_mask=batch.get("valid")
    )
    return _psum(conf, axis_name)
