"""Unsupervised domain adaptation (UDA): train on a labelled source domain, adapt to an
unlabelled target domain, score on the target's validation labels.

Two streams through the task seam: each train batch holds the source stream's `"image"` and
`"label"` (`config.dataset`) and, but for `source_only`, the target stream's `"target_image"`
(`config.uda.target`, its labels never read; drawn with seed `config.seed + 1`, so its order is
not the source's). Both are ordinary per-example streams, sharded like any batch, so the run is
the same on any device count. Evaluation is the semantic task's, on the target's validation
split (labelled: for scoring only; the last step's score is the result, since a checkpoint
picked on target labels would use them).

Methods (`config.uda.method`), each with its paper's defaults:
* `source_only`: the semantic task on the source alone (with `dataset.photometric=True`, the
  photometric-augmentation baseline).
* `adversarial`: output-space adversarial training, single level (Tsai et al., CVPR 2018,
  AdaptSegNet): a discriminator (`segjax.models.discriminator.FCDiscriminator`) learns to tell
  the segmenter's softmax maps of source (label 0) from target (label 1) images with its own
  Adam (lr 1e-4, betas 0.9 / 0.99, poly decay 0.9), inside the same pure step
  (`Task.update_task_state`); the segmenter adds `adv_weight` (0.001, the paper's single-level
  lambda_adv) x the BCE of the discriminator of before the step on its target maps labelled
  source.

The discriminator's and the teacher's state live in `TaskTrainState.task_state`: replicated,
checkpointed and resumed with the model (`segjax.tasks.base`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from segjax.models.outputs import LOGITS
from segjax.tasks import semantic
from segjax.tasks.base import StepContext
from segjax.tasks.registry import register, section

METHODS = ("source_only", "adversarial")
TARGET_LOGITS = "target_logits"
# AdaptSegNet's domain labels of the discriminator.
SOURCE, TARGET = 0.0, 1.0


def _mean_bce(logits: jax.Array, label: float, ctx: StepContext) -> tuple[jax.Array, jax.Array]:
    """`(this share's sum, global count)` of BCE-with-logits of `logits` against `label`."""
    total = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))
    return total, ctx.global_sum(jnp.float32(logits.size))


class UDATask(semantic.SemanticTask):
    """The semantic task with a target stream and one adaptation method (module docstring).

    Args:
      method: one of METHODS.
      target: the target domain's `DataStreams` (its train split for images, its eval split
        for scoring).
      crop_size: the training crop (the discriminator is initialised for it).
      num_steps: training steps (the discriminator's learning-rate schedule).
      adv_weight, disc_lr, disc_features: `adversarial`: the weight of the segmenter's
        adversarial term, the discriminator's Adam learning rate and first-layer width.
      **semantic_kwargs: `SemanticTask`'s (loss, evaluation, pictures).
    """

    name = "uda"

    def __init__(self, *, method: str, target, crop_size: int, num_steps: int,
                 adv_weight: float = 0.001, disc_lr: float = 1e-4, disc_features: int = 64,
                 **semantic_kwargs):
        super().__init__(**semantic_kwargs)
        if method not in METHODS:
            raise ValueError(f"config.uda.method={method!r} is not one of {METHODS}")
        self.method, self.target = method, target
        self.crop_size, self.num_steps = int(crop_size), int(num_steps)
        self.adv_weight, self.disc_lr = float(adv_weight), float(disc_lr)
        self.train_keys = ("image", "label") + (() if method == "source_only"
                                                 else ("target_image",))
        if method == "adversarial":
            from segjax.models.discriminator import FCDiscriminator

            self.discriminator = FCDiscriminator(features=disc_features)
            schedule = optax.polynomial_schedule(disc_lr, 0.0, 0.9, max(self.num_steps, 1))
            self.disc_tx = optax.adam(schedule, b1=0.9, b2=0.99)

    # --------------------------------------------------------------------------- the streams

    def train_batches(self, data, *, batch_size: int, seed: int, start_step: int):
        """Source batches (`data`) with the target's images added as `"target_image"`."""
        source = data.train(batch_size=batch_size, seed=seed, start_step=start_step)
        if self.method == "source_only":
            yield from source
            return
        target = self.target.train(batch_size=batch_size, seed=seed + 1, start_step=start_step)
        for batch, other in zip(source, target):
            yield {**batch, "target_image": other["image"]}

    def eval_batches(self, data, *, batch_size: int, pad_to):
        """The target domain's evaluation batches (its labels score the adaptation)."""
        del data
        return self.target.eval(batch_size=batch_size, pad_to=pad_to)

    # ------------------------------------------------------------------------------ training

    def init_task_state(self, rng, variables):
        if self.method != "adversarial":
            return None
        probs = jnp.zeros((1, self.crop_size, self.crop_size, self.num_classes), jnp.float32)
        disc = self.discriminator.init(rng, probs)["params"]
        return {"disc": disc, "disc_opt": self.disc_tx.init(disc)}

    def train_forward(self, apply, batch, ctx):
        outputs = dict(apply(batch["image"]))
        if self.method == "adversarial":
            outputs[TARGET_LOGITS] = apply(batch["target_image"])[LOGITS]
        return outputs

    def loss(self, outputs, batch, ctx):
        total, count = super().loss(outputs, batch, ctx)
        if self.method == "adversarial":
            d = self.discriminator.apply({"params": ctx.task_state["disc"]},
                                         jax.nn.softmax(outputs[TARGET_LOGITS], -1))
            adv_sum, adv_count = _mean_bce(d, SOURCE, ctx)  # fool it: target maps as source
            ratio = jax.lax.stop_gradient(ctx.global_sum(count) / adv_count)
            total = total + self.adv_weight * adv_sum * ratio
        return total, count

    def update_task_state(self, task_state, variables, outputs, batch, ctx):
        if self.method != "adversarial":
            return task_state, {}
        source = jax.nn.softmax(outputs[LOGITS], -1)
        target = jax.nn.softmax(outputs[TARGET_LOGITS], -1)

        def disc_loss(disc):  # the mean of the two BCEs, each over its global count
            s_sum, s_count = _mean_bce(self.discriminator.apply({"params": disc}, source),
                                       SOURCE, ctx)
            t_sum, t_count = _mean_bce(self.discriminator.apply({"params": disc}, target),
                                       TARGET, ctx)
            return 0.5 * (s_sum / s_count + t_sum / t_count)

        local, grads = jax.value_and_grad(disc_loss)(task_state["disc"])
        grads = ctx.global_sum(grads)
        updates, opt = self.disc_tx.update(grads, task_state["disc_opt"], task_state["disc"])
        disc = optax.apply_updates(task_state["disc"], updates)
        return {"disc": disc, "disc_opt": opt}, {"disc_loss": ctx.global_sum(local)}


# ------------------------------------------------------------------------------ from a config


def defaults() -> ml_collections.ConfigDict:
    """The semantic task's sections plus `uda`."""
    c = semantic.defaults()
    c.uda = ml_collections.ConfigDict()
    c.uda.target = ""  # the target domain's dataset name, e.g. "synthetic_shapes/restyled"
    c.uda.method = "source_only"  # one of METHODS
    c.uda.adv_weight = 0.001  # adversarial: lambda_adv (AdaptSegNet, single level)
    c.uda.disc_lr = 1e-4  # adversarial: the discriminator's Adam learning rate
    c.uda.disc_features = 64  # adversarial: the discriminator's first-layer channels
    return c


def check(config: ml_collections.ConfigDict) -> None:
    """The semantic checks, plus: a known method and a target dataset named."""
    semantic.check(config)
    u = section(config, "uda", "uda")
    if u.method not in METHODS:
        raise ValueError(f"config.uda.method={u.method!r} is not one of {METHODS}")
    if not u.target:
        raise ValueError("config.uda.target is empty: name the target domain's dataset, e.g. "
                         "--config.uda.target=synthetic_shapes/restyled")


RANGES = {**semantic.RANGES, "uda.adv_weight": "[0, inf)", "uda.disc_lr": "(0, inf)",
          "uda.disc_features": "[1, inf)"}


@register("uda", defaults=defaults, check=check, ranges=RANGES)
def build(config: ml_collections.ConfigDict, info, data_dir: str | None) -> UDATask:
    """The UDA task of a run: the semantic task of `config` plus `config.uda`'s target stream
    and method. The target must have the source's classes."""
    import copy

    from segjax.data import pipeline
    from segjax.train import config_utils

    check(config)
    u = section(config, "uda", "uda")
    target_ds = copy.deepcopy(config.dataset)
    with target_ds.unlocked():
        target_ds.name = u.target
    target = pipeline.from_config(target_ds, process_index=jax.process_index(),
                                  process_count=jax.process_count())
    if target.info.num_classes != info.num_classes or \
            target.info.ignore_label != info.ignore_label:
        raise ValueError(
            f"config.uda.target={u.target!r} has {target.info.num_classes} classes (ignore "
            f"{target.info.ignore_label}), the source {config.dataset.name!r} "
            f"{info.num_classes} (ignore {info.ignore_label}): domains must share the classes")
    base = semantic.build(config, info, data_dir)
    kwargs = {k: getattr(base, k) for k in (
        "num_classes", "ignore_label", "loss_kind", "loss_kwargs", "aux_weight", "se_weight",
        "scales", "flip", "window", "stride", "boundary_iou", "boundary_dilation_ratio",
        "class_names", "palette")}
    source = pipeline.from_config(config.dataset)  # (epochs count source examples)
    num_steps = config_utils.get_steps(config, "num_train", batch_size=config.batch_size,
                                       num_examples=source.num_train_examples)
    return UDATask(method=u.method, target=target, crop_size=config.dataset.crop_size,
                   num_steps=num_steps, adv_weight=u.adv_weight, disc_lr=u.disc_lr,
                   disc_features=u.disc_features, **kwargs)
