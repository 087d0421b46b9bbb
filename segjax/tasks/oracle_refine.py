"""Oracle refinement: segmentation by gradient ascent of a mask-quality oracle on the mask
(Fernandes et al. 2018), the inference side of the oracle task (`segjax.tasks.oracle`).

Given an oracle `q(image, mask)` (`segjax.models.oracle`, or any differentiable function of the
mask), segmentation is `m <- m + step_size * u(dq/dm)`, clipped to [0, 1], from an all-zero
mask or a model's prediction, rounded at the end. Updates `u`:

* `"paper"` (the authors' published code): the gradient normalised by its largest magnitude
  (per example), squashed by `tanh(2.5 g)`: every step moves the most sensitive pixels by about
  `step_size`, whatever the gradient's scale;
* `"plain"`: the raw gradient (`step_size` is then a learning rate in the gradient's units).

Optional priors on the mask (default off) are subtracted from the ascended objective, each
the mean over the mask's pixels so that its weight does not depend on the image size:
`tv_weight * TV(m)` (anisotropic total variation, `sum |m[i+1, j] - m[i, j]| + |m[i, j+1] -
m[i, j]|` over the H x W grid, Rudin, Osher & Fatemi 1992) against scattered pixels, and
`binary_weight * sum m (1 - m)` against masks that stay grey (a soft mask the oracle likes
but that rounds to something else).

The number of steps matters (the authors' logs rise then fall): `oracle_ascent` returns the
trajectory, so the step can be chosen on validation data and applied unchanged to test data.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

UPDATES = ("paper", "plain")


def soft_dice(mask: jax.Array, truth: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Soft Dice `2 sum(m t) / (sum m + sum t)` per example of `[N, H, W]` arrays -> `[N]`."""
    inter = jnp.sum(mask * truth, axis=(1, 2))
    return (2.0 * inter + eps) / (jnp.sum(mask, axis=(1, 2)) + jnp.sum(truth, axis=(1, 2)) + eps)


def hard_dice(mask: jax.Array, truth: jax.Array) -> jax.Array:
    """Dice of `mask > 0.5` against bool/0-1 `truth` per example `[N]` (1 when both empty)."""
    m = (mask > 0.5).astype(jnp.float32)
    t = (truth > 0.5).astype(jnp.float32)
    inter = jnp.sum(m * t, axis=(1, 2))
    denom = jnp.sum(m, axis=(1, 2)) + jnp.sum(t, axis=(1, 2))
    return jnp.where(denom > 0, 2.0 * inter / jnp.maximum(denom, 1.0), 1.0)


def total_variation(mask: jax.Array) -> jax.Array:
    """Anisotropic total variation per pixel of `[N, H, W]` masks -> `[N]`:
    `(sum_ij |m[i+1, j] - m[i, j]| + sum_ij |m[i, j+1] - m[i, j]|) / (H W)`."""
    dh = jnp.sum(jnp.abs(jnp.diff(mask, axis=1)), axis=(1, 2))
    dw = jnp.sum(jnp.abs(jnp.diff(mask, axis=2)), axis=(1, 2))
    return (dh + dw) / (mask.shape[1] * mask.shape[2])


def binarisation_penalty(mask: jax.Array) -> jax.Array:
    """`mean_ij m (1 - m)` per example of `[N, H, W]` masks -> `[N]`: 0 for a 0/1 mask, 1/4
    for an all-grey (0.5) one."""
    return jnp.mean(mask * (1.0 - mask), axis=(1, 2))


def mask_prior(mask: jax.Array, *, tv_weight: float = 0.0, binary_weight: float = 0.0
               ) -> jax.Array:
    """The penalty the ascent subtracts from the oracle's quality, per example `[N]`:
    `tv_weight * total_variation(m) + binary_weight * binarisation_penalty(m)`."""
    return tv_weight * total_variation(mask) + binary_weight * binarisation_penalty(mask)


def _update(grad: jax.Array, update: str) -> jax.Array:
    if update == "plain":
        return grad
    scale = jnp.max(jnp.abs(grad), axis=(1, 2), keepdims=True)
    return jnp.tanh(2.5 * grad / jnp.maximum(scale, 1e-30))


@functools.partial(jax.jit, static_argnames=("oracle_apply", "steps", "update", "keep_steps",
                                                  "tv_weight", "binary_weight"))
def oracle_ascent(oracle_apply: Callable[..., jax.Array], variables: Any, image: jax.Array,
                  mask0: jax.Array, *, steps: int, step_size: float = 0.1,
                  update: str = "paper", truth: jax.Array | None = None,
                  keep_steps: Sequence[int] = (), tv_weight: float = 0.0,
                  binary_weight: float = 0.0) -> dict[str, jax.Array]:
    """Gradient ascent of `oracle_apply(variables, image, mask) -> [N]` on the mask, batched.

    Each example's mask only moves its own quality (the sum over the batch is differentiated,
    so the oracle must treat examples independently: eval-mode BatchNorm, no dropout).
    Differentiates w.r.t. the mask only; `variables` and `image` are constants.

    Args:
      oracle_apply: hashable callable (static under jit), e.g.
        `lambda v, x, m: model.apply(v, x, m, train=False)["quality"]` bound once.
      variables: its variables (any pytree).
      image: `[N, H, W, C]`.
      mask0: `[N, H, W]` start in [0, 1] (zeros, or a model's probabilities).
      steps: number of updates.
      step_size: the paper's 0.1.
      update: "paper" or "plain" (module docstring).
      truth: optional ground truth `[N, H, W]` (0/1): the hard Dice of every rounded iterate
        is returned, to choose the step count on validation data. Never used by the ascent.
      keep_steps: iterates (0 = mask0 .. steps) whose masks are returned.
      tv_weight, binary_weight: weights (static) of the priors (`mask_prior`; 0 = off): the
        ascent climbs `quality - mask_prior(m)`; the returned `"quality"` is the oracle's alone.

    Returns:
      `{"quality": [steps + 1, N]` the oracle on iterates 0..steps, `"mask": [N, H, W]` the
      last iterate (soft; round with `> 0.5`), `"dice": [steps + 1, N]` (`hard_dice` of each
      iterate) when `truth` is given,
      `"masks": [len(keep_steps), N, H, W]` when `keep_steps`}.
    """
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    for name, weight in (("tv_weight", tv_weight), ("binary_weight", binary_weight)):
        if not weight >= 0:
            raise ValueError(f"{name} must be >= 0 (0 = no prior), got {weight!r}")

    def total_quality(m):
        q = oracle_apply(variables, image, m)
        objective = q
        if tv_weight or binary_weight:  # (Python floats: off adds nothing to the graph)
            objective = q - mask_prior(m, tv_weight=tv_weight, binary_weight=binary_weight)
        return jnp.sum(objective), q

    keep = jnp.asarray(list(keep_steps) or [-1], jnp.int32)

    def record(m, q, i, kept):
        out = {"quality": q}
        if truth is not None:
            out["dice"] = hard_dice(m, truth)
        if keep_steps:
            kept = jnp.where((keep == i)[:, None, None, None], m[None], kept)
        return out, kept

    def body(carry, i):
        m, kept = carry
        grad, q = jax.grad(total_quality, has_aux=True)(m)
        out, kept = record(m, q, i, kept)
        m = jnp.clip(m + step_size * _update(grad, update), 0.0, 1.0)
        return (m, kept), out

    m0 = jnp.asarray(mask0, jnp.float32)
    kept0 = jnp.zeros((len(keep_steps) or 1,) + m0.shape, m0.dtype)
    (m, kept), traj = lax.scan(body, (m0, kept0), jnp.arange(steps, dtype=jnp.int32))
    q_last = oracle_apply(variables, image, m)
    last, kept = record(m, q_last, jnp.int32(steps), kept)
    result = {k: jnp.concatenate([traj[k], last[k][None]], 0) for k in traj}
    result["mask"] = m
    if keep_steps:
        result["masks"] = kept
    return result
