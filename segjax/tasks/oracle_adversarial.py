"""The oracle trained on its own ascent masks: the `oracle_adversarial` task (issue 30).

An oracle trained only on hand-made degradations (`segjax.data.degrade`) never sees the masks
its own gradient ascent produces (`segjax.tasks.oracle_refine`), and the ascent finds masks it
scores highly and the ground truth does not (on synthetic shapes the true Dice peaks near step
60 and then falls while the oracle's score climbs to 0.99). The remedy here is adversarial
training in the manner of PGD (Madry et al., ICLR 2018), inside the train step: every step,
every `ascent_every`-th example of the batch (by global position: a fraction `1 /
ascent_every` of it) has its degraded mask
replaced by a mask that the CURRENT oracle's ascent reaches, and its target by that mask's true
Dice:

1. start: the all-zero mask (where refinement starts) or the example's degraded mask, drawn
   per example (`ascent_start = "zeros" | "degraded" | "mixed"`);
2. `ascent_steps` updates of the authors' rule (`update="paper"`, `ascent_step_size`) on the
   parameters before the step (`StepContext.variables`, eval mode, gradients stopped), and one
   iterate 1..`ascent_steps` of the trajectory drawn per example;
3. target: the soft Dice (`soft_dice`) of that soft mask against the class's true mask
   (`ascent_target = "soft"`: what the ascent's gradient reads), or the rounded mask with its
   `hard_dice` (`"hard"`). Ignored pixels are cleared from the mask, as for degradations.

Every draw is `ctx.example_keys` (the step's key folded with the global position) and each
example's ascent is independent of the others (eval-mode BatchNorm, per-example step
normalisation), so the step is the same on any device count, and resuming reproduces it.
Only the chosen rows are ascended (a strided slice of each device's share, hence a fraction
`1 / k` with `k` dividing the per-device batch, set as `ascent_every = k` rather than as a
fraction): the cost is `ascent_steps` forward and backward passes of the oracle on `batch / k`
examples per step.

The task is the `oracle` task with one more config section, `oracle_adversarial`, under its
own name so that the `oracle` presets' resolved configs (and the run digests keyed on them)
are unchanged. `experiments.oracle_refine` takes its runs as oracle runs.

Batches: the oracle's plus `"truth"` float32 [B, H, W] (the class's true mask, 0/1) and
`"pixel_valid"` float32 [B, H, W] (0 at ignored pixels).
"""

from __future__ import annotations

from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax.data import degrade
from segjax.tasks import oracle
from segjax.tasks.base import StepContext
from segjax.tasks.oracle_refine import hard_dice, oracle_ascent, soft_dice
from segjax.tasks.registry import register, section

STARTS = ("zeros", "degraded", "mixed")
TARGETS = ("soft", "hard")
TARGET = "target_quality"  # the regression target of each row, in the train outputs


class AdversarialOracleTask(oracle.OracleTask):
    """`OracleTask` whose train step swaps a fraction of the degraded masks for the current
    oracle's ascent masks (module docstring).

    Args:
      ascent_every: k: every k-th example of the batch by global position (positions 0, k,
        2k, ...; a fraction 1/k) is replaced; 0 trains the plain oracle.
      ascent_steps: ascent updates computed per step (one iterate 1..steps drawn per example).
      ascent_step_size: the update's step (`oracle_ascent`'s `step_size`).
      ascent_start: "zeros", "degraded" or "mixed" (each example draws one of the two).
      ascent_target: "soft" (soft mask, soft Dice) or "hard" (rounded mask, hard Dice).
      **kwargs: `OracleTask`'s.
    """

    name = "oracle_adversarial"

    def __init__(self, *, ascent_every: int = 4, ascent_steps: int = 5,
                 ascent_step_size: float = 0.2, ascent_start: str = "mixed",
                 ascent_target: str = "soft", **kwargs):
        super().__init__(**kwargs)
        if ascent_every < 0:
            raise ValueError("config.oracle_adversarial.ascent_every must be >= 0 (0 = off), "
                             f"got {ascent_every}")
        self.period = int(ascent_every)
        if ascent_steps < 1:
            raise ValueError("config.oracle_adversarial.ascent_steps must be >= 1, got "
                             f"{ascent_steps}")
        if not ascent_step_size > 0:
            raise ValueError("config.oracle_adversarial.ascent_step_size must be > 0, got "
                             f"{ascent_step_size}")
        if ascent_start not in STARTS:
            raise ValueError(f"config.oracle_adversarial.ascent_start must be one of {STARTS}, "
                             f"got {ascent_start!r}")
        if ascent_target not in TARGETS:
            raise ValueError("config.oracle_adversarial.ascent_target must be one of "
                             f"{TARGETS}, got {ascent_target!r}")
        self.ascent_steps = int(ascent_steps)
        self.ascent_step_size = float(ascent_step_size)
        self.ascent_start = ascent_start
        self.ascent_target = ascent_target
        if self.period:
            self.train_keys = oracle.OracleTask.train_keys + ("truth", "pixel_valid")

    def train_batches(self, data, *, batch_size: int, seed: int, start_step: int
                      ) -> Iterator[dict[str, np.ndarray]]:
        """The oracle's train batches plus each row's true mask and valid pixels."""
        if not self.period:
            yield from super().train_batches(data, batch_size=batch_size, seed=seed,
                                             start_step=start_step)
            return
        probs = self.calibration(data, batch_size=batch_size)
        offset = self._offset(data, batch_size)
        step = start_step
        for batch in data.train(batch_size=batch_size, seed=seed, start_step=start_step):
            step += 1
            ex = oracle.degraded_examples(batch["image"], batch["label"], seed=seed,
                                          stream=degrade.TRAIN_STREAM, position=step,
                                          probs=probs, ignore_label=self.ignore_label,
                                          offset=offset, background=self.background)
            out = {k: ex[k] for k in ("image", "mask", "quality")}
            out["truth"] = ex["truth"].astype(np.float32)
            out["pixel_valid"] = (np.asarray(batch["label"]) != self.ignore_label
                                  ).astype(np.float32)
            yield out

    def ascent_examples(self, batch: Mapping[str, jax.Array], ctx: StepContext
                        ) -> tuple[jax.Array, jax.Array]:
        """`(mask [B, H, W], quality [B])` of this share: rows at global positions 0, k, 2k, ...
        replaced by the current oracle's ascent masks and their true Dice (gradients stopped);
        the other rows as in the batch."""
        local = batch["mask"].shape[0]
        k = self.period
        if local % k:
            raise ValueError(f"config.oracle_adversarial.ascent_every = {k} needs a "
                             f"per-device batch divisible by {k}, got {local}: change it, "
                             "batch_size or the device count")
        rows = slice(0, None, k)  # global positions d*local + j*k: every k-th of the batch
        keys = ctx.example_keys(local)[rows]
        image, degraded = batch["image"][rows], batch["mask"][rows]
        truth, valid = batch["truth"][rows], batch["pixel_valid"][rows]
        draws = jax.vmap(lambda key: jax.random.split(key))(keys)
        if self.ascent_start == "mixed":
            from_zeros = jax.vmap(lambda key: jax.random.bernoulli(key))(draws[:, 0])
        else:
            from_zeros = jnp.full(degraded.shape[:1], self.ascent_start == "zeros")
        mask0 = jnp.where(from_zeros[:, None, None], 0.0, degraded)
        apply_fn = ctx.apply_fn

        def quality(variables, x, m):
            return apply_fn(variables, x, m, train=False)[oracle.QUALITY]

        variables = jax.lax.stop_gradient(ctx.variables)
        trajectory = oracle_ascent(quality, variables, image, mask0, steps=self.ascent_steps,
                                   step_size=self.ascent_step_size, update="paper",
                                   keep_steps=tuple(range(1, self.ascent_steps + 1)))
        t = jax.vmap(lambda key: jax.random.randint(key, (), 0, self.ascent_steps))(draws[:, 1])
        mask = trajectory["masks"][t, jnp.arange(t.shape[0])] * valid
        if self.ascent_target == "hard":
            mask = (mask > 0.5).astype(jnp.float32)
            target = hard_dice(mask, truth)
        else:
            target = soft_dice(mask, truth)
        mask, target = jax.lax.stop_gradient((mask, target))
        return (jnp.asarray(batch["mask"]).at[rows].set(mask),
                jnp.asarray(batch["quality"], jnp.float32).at[rows].set(target))

    def train_forward(self, apply, batch, ctx):
        if not self.period:
            return super().train_forward(apply, batch, ctx)
        mask, target = self.ascent_examples(batch, ctx)
        return {**apply(batch["image"], mask), TARGET: target}

    def loss(self, outputs: Mapping[str, jax.Array], batch, ctx: StepContext):
        if TARGET not in outputs:
            return super().loss(outputs, batch, ctx)
        return super().loss(outputs, {**batch, "quality": outputs[TARGET]}, ctx)


def defaults() -> ml_collections.ConfigDict:
    """The oracle's section plus `oracle_adversarial` (see `AdversarialOracleTask`)."""
    c = oracle.defaults()
    c.oracle_adversarial = ml_collections.ConfigDict()
    c.oracle_adversarial.ascent_every = 4  # every k-th example: an ascent mask (0 = off)
    c.oracle_adversarial.ascent_steps = 5  # ascent updates per train step (an iterate drawn)
    c.oracle_adversarial.ascent_step_size = 0.2  # step of the authors' update
    c.oracle_adversarial.ascent_start = "mixed"  # "zeros", "degraded" or "mixed"
    c.oracle_adversarial.ascent_target = "soft"  # "soft" (soft Dice) or "hard" (rounded)
    return c


def check(config) -> None:
    """Refuses a start or target not in the lists, by key."""
    a = section(config, "oracle_adversarial", "oracle_adversarial")
    if a.ascent_start not in STARTS:
        raise ValueError(f"config.oracle_adversarial.ascent_start must be one of {STARTS}, got "
                         f"{a.ascent_start!r}")
    if a.ascent_target not in TARGETS:
        raise ValueError(f"config.oracle_adversarial.ascent_target must be one of {TARGETS}, "
                         f"got {a.ascent_target!r}")


@register("oracle_adversarial", defaults=defaults, check=check, ranges={
    "oracle.calibration_masks": "[1, inf)", "oracle.eval_copies": "[1, inf)",
    "oracle.background": "[0, inf) or None", "oracle_adversarial.ascent_every": "[0, inf)",
    "oracle_adversarial.ascent_steps": "[1, inf)",
    "oracle_adversarial.ascent_step_size": "(0, inf)"})
def build(config, info, data_dir) -> AdversarialOracleTask:
    """The adversarially trained oracle of a run: `config.oracle` and
    `config.oracle_adversarial` on dataset `info`."""
    del data_dir
    q = section(config, "oracle", "oracle_adversarial")
    a = section(config, "oracle_adversarial", "oracle_adversarial")
    return AdversarialOracleTask(
        ignore_label=info.ignore_label, background=q.background,
        calibration_masks=int(q.calibration_masks), eval_copies=int(q.eval_copies),
        seed=int(config.seed), ascent_every=int(a.ascent_every),
        ascent_steps=int(a.ascent_steps), ascent_step_size=float(a.ascent_step_size),
        ascent_start=a.ascent_start, ascent_target=a.ascent_target)
