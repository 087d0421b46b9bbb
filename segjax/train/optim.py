"""SGD with momentum, poly learning-rate schedule with warm-up, and the DeepLab-style options.

Per step t (0-based, the optimiser's update count) with base rate lr0, T = num_steps, W =
warmup_steps:
  lr(t) = lr0 * t / W                                   for t < W  (linear warm-up from 0)
  lr(t) = lr0 * (1 - (t - W) / (T - W)) ** power        for W <= t <= T, then 0.
With a floor `end_lr` (mmsegmentation's min_lr) the poly part is
  (lr0 - end_lr) * (1 - (t - W) / (T - W)) ** power + end_lr, then end_lr.
The update is PyTorch's SGD: g' = g + weight_decay * p (decay only on the masked parameters),
buf = momentum * buf + g', p -= lr * buf (nesterov: p -= lr * (g' + momentum * buf)). Backbone
parameters (the top-level param key "backbone") use lr * backbone_lr_mult, or stay fixed when
frozen.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

BACKBONE = "backbone"


def poly_schedule(base_lr: float, num_steps: int, warmup_steps: int = 0, power: float = 0.9,
                  end_lr: float = 0.0) -> optax.Schedule:
    """The warm-up + poly schedule of the module docstring: step -> learning rate (float32)."""
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if not 0 <= warmup_steps < num_steps:
        raise ValueError(f"warmup_steps must be in [0, num_steps={num_steps}), got {warmup_steps}")
    poly = optax.polynomial_schedule(
        init_value=base_lr, end_value=end_lr, power=power, transition_steps=num_steps - warmup_steps
    )
    if warmup_steps == 0:
        return poly
    warmup = optax.linear_schedule(0.0, base_lr, warmup_steps)
    return optax.join_schedules([warmup, poly], [warmup_steps])


def step_schedule(base_lr: float, boundaries, decay_factor: float = 0.1,
                  warmup_steps: int = 0) -> optax.Schedule:
    """Detectron's / torchvision's detection schedule: `base_lr`, multiplied by `decay_factor` at
    each of `boundaries` (steps), after a linear warm-up from 0 over `warmup_steps`.

    Example: `step_schedule(0.02, (60_000, 80_000), 0.1, 1000)` is the Mask R-CNN 1x recipe
    (Detectron warms up from 0.001 x base_lr rather than 0: the same within its 1000 steps).
    """
    boundaries = tuple(int(b) for b in boundaries)
    if list(boundaries) != sorted(set(boundaries)) or any(b <= warmup_steps for b in boundaries):
        raise ValueError(f"boundaries {boundaries} must increase and lie after warmup_steps "
                         f"({warmup_steps})")
    steps = optax.piecewise_constant_schedule(
        base_lr, {b - warmup_steps: decay_factor for b in boundaries})
    if warmup_steps == 0:
        return steps
    return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup_steps), steps],
                                [warmup_steps])


def is_backbone(path: tuple[Any, ...]) -> bool:
    """Whether a parameter path (from `jax.tree_util.tree_flatten_with_path`) is in the backbone."""
    return bool(path) and getattr(path[0], "key", None) == BACKBONE


def decay_mask(params: Any, decay_norm_and_bias: bool = False) -> Any:
    """Pytree of bools: which parameters get weight decay.

    All of them when `decay_norm_and_bias`, otherwise only those with ndim > 1 (conv/dense
    kernels), leaving out biases and normalisation scales/offsets (all 1-D).
    """
    return jax.tree.map(lambda p: bool(decay_norm_and_bias or jnp.ndim(p) > 1), params)


def backbone_mask(params: Any) -> Any:
    """Pytree of bools: True for parameters under the top-level "backbone" key."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_backbone(path), params)


def create_optimizer(
    params: Any,
    *,
    base_lr: float,
    num_steps: int,
    warmup_steps: int = 0,
    power: float = 0.9,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    decay_norm_and_bias: bool = False,
    backbone_lr_mult: float = 1.0,
    freeze_backbone: bool = False,
    end_lr: float = 0.0,
    schedule: str = "poly",
    boundaries: tuple[int, ...] = (),
    decay_factor: float = 0.1,
    frozen: Any = None,
) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
    """The training optimiser and its (head) learning-rate schedule.

    Args:
      params: the model's parameter tree (masks are built from it; only its structure and
        shapes are read).
      base_lr, num_steps, warmup_steps, power: the schedule (`poly_schedule`).
      momentum, nesterov: SGD momentum (momentum=0: plain SGD).
      weight_decay: L2 coefficient added to the gradient (PyTorch's SGD weight_decay).
      decay_norm_and_bias: also decay 1-D parameters (biases, BatchNorm scale/bias).
      backbone_lr_mult: learning-rate multiplier of the "backbone" subtree (e.g. 0.1).
      freeze_backbone: keep the backbone parameters fixed (no update, no momentum state).
      end_lr: floor of the poly decay (mmsegmentation's min_lr; 0 = decay to zero).
      schedule: "poly" (`poly_schedule`) or "step" (`step_schedule` with `boundaries` and
        `decay_factor`: the detection recipes).
      frozen: None or a bool pytree like `params`: True leaves are never updated (no decay, no
        momentum state), e.g. a model's `frozen_parameters(params)` (Mask R-CNN's torchvision
        freezing). The trainer passes the model's; it is not a config key.

    Returns:
      (tx, schedule): `schedule(step)` is the head learning rate at optimiser step `step`.
    """
    has_backbone = isinstance(params, Mapping) and BACKBONE in params
    if (freeze_backbone or backbone_lr_mult != 1.0) and not has_backbone:
        raise ValueError(
            f"freeze_backbone/backbone_lr_mult need a top-level {BACKBONE!r} parameter key; the "
            f"model's top-level keys are {sorted(params) if isinstance(params, Mapping) else type(params)}"
        )
    if weight_decay < 0 or momentum < 0:
        raise ValueError(f"weight_decay ({weight_decay}) and momentum ({momentum}) must be >= 0")
    if schedule == "poly":
        schedule = poly_schedule(base_lr, num_steps, warmup_steps, power, end_lr)
    elif schedule == "step":
        schedule = step_schedule(base_lr, boundaries, decay_factor, warmup_steps)
    else:
        raise ValueError(f"schedule={schedule!r} must be 'poly' or 'step'")
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask(params, decay_norm_and_bias)))
    if momentum:
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    parts.append(optax.scale_by_learning_rate(schedule))
    if backbone_lr_mult != 1.0 and not freeze_backbone:
        parts.append(optax.masked(optax.scale(backbone_lr_mult), backbone_mask(params)))
    tx = optax.chain(*parts)
    fixed = backbone_mask(params) if freeze_backbone else None
    if frozen is not None:
        fixed = frozen if fixed is None else jax.tree.map(lambda a, b: bool(a) or bool(b), fixed, frozen)
    if fixed is not None:
        labels = jax.tree.map(lambda b: "frozen" if b else "train", fixed)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
