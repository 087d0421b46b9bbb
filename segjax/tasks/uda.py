"""Unsupervised domain adaptation (UDA): train on a labelled source domain, adapt to an
unlabelled target domain, score on the target's validation labels.

Two streams through the task seam: each train batch holds the source stream's `"image"` and
`"label"` (`config.dataset`) and, but for `source_only`, the target stream's `"target_image"`
(`config.uda.target`, its labels never read; drawn with seed `config.seed + 1`, so its order is
not the source's). Both are ordinary per-example streams, sharded like any batch, so the run is
the same on any device count. Evaluation is the semantic task's, on the target's validation
split (labelled: for scoring only; the last step's score is the result, since a checkpoint
picked on target labels would use them).

Methods (`config.uda.method`), each with its paper's defaults (an option of another method is
not read):
* `source_only`: the semantic task on the source alone (with `dataset.photometric=True`, the
  photometric-augmentation baseline).
* `adversarial`: output-space adversarial training, single level (Tsai et al., CVPR 2018,
  AdaptSegNet): a discriminator (`segjax.models.discriminator.FCDiscriminator`) learns to tell
  the segmenter's softmax maps of source (label 0) from target (label 1) images with its own
  Adam (lr 1e-4, betas 0.9 / 0.99, poly decay 0.9), inside the same pure step
  (`Task.update_task_state`); the segmenter adds `adv_weight` (0.001, the paper's single-level
  lambda_adv) x the BCE of the discriminator of before the step on its target maps labelled
  source.
* `fda`: Fourier domain adaptation (Yang & Soatto, CVPR 2020): each source image takes the
  low-frequency amplitude of the target image beside it in the batch (`segjax.style.fda`, window
  `fda_beta` = 0.01, the paper's beta of its first model; 0.05 and 0.09 the others of its
  ensemble), in 0..255 before normalisation as the authors do, and the target images' robust
  entropy (`fda_entropy_loss`, eta 2.0) is added with weight `entropy_weight` 0.005 from the
  first step (the authors' `--entW=0.005 --ita=2.0 --switch2entropy=0`).
* `adain`: AdaIN style randomisation (`segjax.style.style_randomization`): each source image is
  re-rendered in the style of the target image beside it in the batch (the random pairing of
  Dundar et al. 2018's "domain stylization") with AdaIN (Huang & Belongie, ICCV 2017) at a
  content-style trade-off alpha ~ U(`adain_alpha_min`, 1) per example (their Sec. 7.2), in
  0..255 before normalisation, and learned against the source label. `adain_model` = "": AdaIN
  on the pixels (each channel takes the target's channel mean and std: colour statistics, not
  texture); a path: the trained encoder and decoder of a `python -m experiments.style
  --method=adain` run, loaded once by `build`.
* `dacs`: DACS (Tranheden et al., WACV 2021): an EMA teacher (`segjax.style.pseudo_labels`:
  decay min(1 - 1/(t+1), 0.99), on the parameters and the BatchNorm statistics) labels the
  target images; ClassMix (`segjax.style.classmix`) pastes half of each source image's classes
  onto its target image, and the student learns the mixed image against the mixed label,
  each target pixel weighted by the batch's fraction of pixels the teacher is at least 0.968
  sure of, source pixels by 1, averaged over all pixels as DACS's pixel-wise weighted cross
  entropy. With `mix_augment` the mixed images are colour-jittered and blurred as DACS's
  `strongTransform` does (`segjax.style.dacs_augment`; the paper's setting, off by default).

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

METHODS = ("source_only", "adversarial", "fda", "dacs", "adain")
TARGET_LOGITS = "target_logits"
# DACS: the student's logits on the mixed images, their labels and pixel weights.
MIX_LOGITS, MIX_LABEL, MIX_WEIGHT = "mix_logits", "mix_label", "mix_weight"
PSEUDO_WEIGHT = "pseudo_weight"  # the batch's fraction of confident teacher pixels (logged)
# AdaptSegNet's domain labels of the discriminator.
SOURCE, TARGET = 0.0, 1.0
# DACS with mix_augment: each example's augmentation key is fold_in(its ClassMix key, this).
AUGMENT_STREAM = 1


def _to_pixels(images: jax.Array) -> jax.Array:
    """Normalised images (the pipelines') -> 0..255 float."""
    from segjax.data.records import IMAGE_MEAN, IMAGE_STD

    return images * jnp.asarray(IMAGE_STD) + jnp.asarray(IMAGE_MEAN)


def _normalised(pixels: jax.Array) -> jax.Array:
    from segjax.data.records import IMAGE_MEAN, IMAGE_STD

    return (pixels - jnp.asarray(IMAGE_MEAN)) / jnp.asarray(IMAGE_STD)


def _mean_bce(logits: jax.Array, label: float, ctx: StepContext) -> tuple[jax.Array, jax.Array]:
    """`(this share's sum, global count)` of BCE-with-logits of `logits` against `label`."""
    total = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))
    return total, ctx.global_sum(jnp.float32(logits.size))


class UDATask(semantic.SemanticTask):
    """The semantic task with a target stream and one adaptation method (module docstring).

    Args:
      method: one of METHODS.
      target: the target domain's `DataStreams` (its train split for images, its eval split
        for scoring), or a function making them on first use.
      crop_size: the training crop (the discriminator is initialised for it).
      num_steps: training steps (the discriminator's learning-rate schedule).
      adv_weight, disc_lr, disc_features: `adversarial`: the weight of the segmenter's
        adversarial term, the discriminator's Adam learning rate and first-layer width.
      fda_beta, entropy_weight, entropy_eta: `fda`: the window, the entropy's weight and its
        Charbonnier exponent.
      ema_decay, pseudo_threshold: `dacs`: the teacher's decay and the confidence threshold.
      mix_augment: `dacs`: colour-jitter and blur the mixed images (DACS's strong transform).
      adain_alpha_min: `adain`: the trade-off alpha is drawn from U(adain_alpha_min, 1).
      adain_styliser: `adain`: None (AdaIN on pixels, `pixel_adain`) or a trained
        `AdaINStyliser` (`load_adain_styliser`).
      **semantic_kwargs: `SemanticTask`'s (loss, evaluation, pictures).
    """

    name = "uda"

    def __init__(self, *, method: str, target, crop_size: int, num_steps: int,
                 adv_weight: float = 0.001, disc_lr: float = 1e-4, disc_features: int = 64,
                 fda_beta: float = 0.01, entropy_weight: float = 0.005, entropy_eta: float = 2.0,
                 ema_decay: float = 0.99, pseudo_threshold: float = 0.968,
                 mix_augment: bool = False, adain_alpha_min: float = 0.0, adain_styliser=None,
                 **semantic_kwargs):
        super().__init__(**semantic_kwargs)
        if method not in METHODS:
            raise ValueError(f"config.uda.method={method!r} is not one of {METHODS}")
        self.method, self._target = method, target
        self.crop_size, self.num_steps = int(crop_size), int(num_steps)
        self.adv_weight, self.disc_lr = float(adv_weight), float(disc_lr)
        self.fda_beta, self.entropy_weight = float(fda_beta), float(entropy_weight)
        self.entropy_eta = float(entropy_eta)
        self.ema_decay, self.pseudo_threshold = float(ema_decay), float(pseudo_threshold)
        if not 0.0 <= float(adain_alpha_min) <= 1.0:
            raise ValueError(f"config.uda.adain_alpha_min={adain_alpha_min} must be in [0, 1]")
        self.mix_augment, self.adain_alpha_min = bool(mix_augment), float(adain_alpha_min)
        self.adain_styliser = adain_styliser
        self.train_keys = ("image", "label") + (() if method == "source_only"
                                                 else ("target_image",))
        if method == "adversarial":
            from segjax.models.discriminator import FCDiscriminator

            if self.crop_size < 32:  # five stride-2 convs: a crop under 32 leaves no output
                raise ValueError(f"config.dataset.crop_size={crop_size} is too small for the "
                                 "adversarial method: its discriminator halves the map five "
                                 "times; use a crop of at least 32")

            self.discriminator = FCDiscriminator(features=disc_features)
            schedule = optax.polynomial_schedule(disc_lr, 0.0, 0.9, max(self.num_steps, 1))
            self.disc_tx = optax.adam(schedule, b1=0.9, b2=0.99)

    # --------------------------------------------------------------------------- the streams

    @property
    def target(self):
        """The target's `DataStreams` (made on first use when given as a function)."""
        if callable(self._target):
            self._target = self._target()
        return self._target

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
        if self.method == "dacs":  # the teacher starts as the student
            return {"teacher": {"params": variables["params"],
                                "batch_stats": variables["batch_stats"]},
                    "step": jnp.zeros((), jnp.int32)}
        if self.method != "adversarial":
            return None
        probs = jnp.zeros((1, self.crop_size, self.crop_size, self.num_classes), jnp.float32)
        disc = self.discriminator.init(rng, probs)["params"]
        return {"disc": disc, "disc_opt": self.disc_tx.init(disc)}

    def train_forward(self, apply, batch, ctx):
        if self.method == "fda":
            from segjax.style.fda import fda

            styled = fda(_to_pixels(batch["image"]), _to_pixels(batch["target_image"]),
                         self.fda_beta)
            outputs = dict(apply(_normalised(styled)))
        elif self.method == "adain":
            outputs = dict(apply(self._stylised(batch, ctx)))
        else:
            outputs = dict(apply(batch["image"]))
        if self.method == "adversarial" or (self.method == "fda" and self.entropy_weight):
            outputs[TARGET_LOGITS] = apply(batch["target_image"])[LOGITS]
        if self.method == "dacs":
            outputs.update(self._dacs_mix(apply, batch, ctx))
        return outputs

    def _stylised(self, batch, ctx):
        """`adain`: the source images in their target images' styles, normalised (no gradient)."""
        from segjax.style.style_randomization import draw_alphas, pixel_adain

        alphas = draw_alphas(ctx.example_keys(batch["image"].shape[0]), self.adain_alpha_min)
        styliser = pixel_adain if self.adain_styliser is None else self.adain_styliser
        styled = styliser(_to_pixels(batch["image"]), _to_pixels(batch["target_image"]), alphas)
        return jax.lax.stop_gradient(_normalised(styled))

    def _dacs_mix(self, apply, batch, ctx):
        """The student's logits on ClassMix images of (source, teacher-labelled target)."""
        from segjax.style.classmix import classmix
        from segjax.style.pseudo_labels import confident_pseudo_labels, mix_pixel_weights

        teacher = ctx.apply_fn(ctx.task_state["teacher"], batch["target_image"], train=False)
        pseudo, weight = confident_pseudo_labels(teacher[LOGITS], self.pseudo_threshold,
                                                 axis_name=ctx.axis_name)
        keys = ctx.example_keys(batch["image"].shape[0])  # global positions: any device count
        image, label, mask = jax.vmap(lambda k, si, sl, ti, tl: classmix(
            k, si, sl, ti, tl, num_classes=self.num_classes, ignore_label=self.ignore_label))(
            keys, batch["image"], batch["label"], batch["target_image"], pseudo)
        if self.mix_augment:
            from segjax.style.dacs_augment import draw_strong_params, strong_augment

            params = jax.vmap(lambda k: draw_strong_params(
                jax.random.fold_in(k, AUGMENT_STREAM)))(keys)
            image = _normalised(jax.vmap(strong_augment)(_to_pixels(image), params))
        return {MIX_LOGITS: apply(image)[LOGITS], MIX_LABEL: label,
                MIX_WEIGHT: mix_pixel_weights(mask, weight), PSEUDO_WEIGHT: weight}

    def loss(self, outputs, batch, ctx):
        total, count = super().loss(outputs, batch, ctx)
        if self.method == "adversarial":
            d = self.discriminator.apply({"params": ctx.task_state["disc"]},
                                         jax.nn.softmax(outputs[TARGET_LOGITS], -1))
            adv_sum, adv_count = _mean_bce(d, SOURCE, ctx)  # fool it: target maps as source
            ratio = jax.lax.stop_gradient(ctx.global_sum(count) / adv_count)
            total = total + self.adv_weight * adv_sum * ratio
        if self.method == "fda" and self.entropy_weight:
            from segjax.style.fda import fda_entropy_loss

            ent_sum, ent_count = fda_entropy_loss(outputs[TARGET_LOGITS], eta=self.entropy_eta)
            ratio = jax.lax.stop_gradient(ctx.global_sum(count) / ctx.global_sum(ent_count))
            total = total + self.entropy_weight * ent_sum * ratio
        if self.method == "dacs":  # mean over all pixels of weight x CE (ignored ones add 0)
            logits, labels = outputs[MIX_LOGITS], outputs[MIX_LABEL]
            valid = labels != self.ignore_label
            ce = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), jnp.where(valid, labels, 0))
            mix_sum = jnp.sum(jnp.where(valid, ce * outputs[MIX_WEIGHT], 0.0))
            pixels = ctx.global_sum(jnp.float32(labels.size))
            total = total + mix_sum * jax.lax.stop_gradient(ctx.global_sum(count) / pixels)
        return total, count

    def update_task_state(self, task_state, variables, outputs, batch, ctx):
        if self.method == "dacs":
            from segjax.style.pseudo_labels import ema_update

            step = task_state["step"]
            teacher = ema_update(task_state["teacher"], variables, step, self.ema_decay)
            return ({"teacher": teacher, "step": step + 1},
                    {"pseudo_weight": outputs[PSEUDO_WEIGHT]})
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
    c.uda.fda_beta = 0.01  # fda: the amplitude window (the paper's 0.01, 0.05, 0.09)
    c.uda.entropy_weight = 0.005  # fda: weight of the target's robust entropy (0: none)
    c.uda.entropy_eta = 2.0  # fda: its Charbonnier exponent
    c.uda.ema_decay = 0.99  # dacs: the teacher's EMA decay (the cap of min(1 - 1/(t+1), .))
    c.uda.pseudo_threshold = 0.968  # dacs: confidence counted into the pseudo-label weight
    c.uda.mix_augment = False  # dacs: jitter and blur the mixed images (the paper: True)
    c.uda.adain_model = ""  # adain: "" (AdaIN on pixels) or an experiments.style adain --workdir
    c.uda.adain_alpha_min = 0.0  # adain: alpha ~ U(adain_alpha_min, 1) per example
    return c


def check(config: ml_collections.ConfigDict) -> None:
    """The semantic checks, plus a known method. (An empty `uda.target` fails in `build`: the
    declared default is "", and `check` is no stricter than the declarations.)"""
    semantic.check(config)
    u = section(config, "uda", "uda")
    if u.method not in METHODS:
        raise ValueError(f"config.uda.method={u.method!r} is not one of {METHODS}")


RANGES = {**semantic.RANGES, "uda.adv_weight": "[0, inf)", "uda.disc_lr": "(0, inf)",
          "uda.disc_features": "[1, inf)", "uda.fda_beta": "[0, 0.5]",
          "uda.entropy_weight": "[0, inf)", "uda.entropy_eta": "(0, inf)",
          "uda.ema_decay": "[0, 1]", "uda.pseudo_threshold": "[0, 1]",
          "uda.adain_alpha_min": "[0, 1]"}


@register("uda", defaults=defaults, check=check, ranges=RANGES)
def build(config: ml_collections.ConfigDict, info, data_dir: str | None) -> UDATask:
    """The UDA task of a run: the semantic task of `config` plus `config.uda`'s target stream
    and method. The target must have the source's classes."""
    import copy
    import functools

    from segjax.data import pipeline
    from segjax.train import config_utils

    check(config)
    u = section(config, "uda", "uda")
    if not u.target:
        raise ValueError("config.uda.target is empty: name the target domain's dataset, e.g. "
                         "--config.uda.target=synthetic_shapes/restyled")
    target_ds = copy.deepcopy(config.dataset)
    with target_ds.unlocked():
        target_ds.name = u.target
    target_info = pipeline.resolve(u.target)
    if target_info.num_classes != info.num_classes or \
            target_info.ignore_label != info.ignore_label:
        raise ValueError(
            f"config.uda.target={u.target!r} has {target_info.num_classes} classes (ignore "
            f"{target_info.ignore_label}), the source {config.dataset.name!r} "
            f"{info.num_classes} (ignore {info.ignore_label}): domains must share the classes")
    # The target's streams are opened (and the dataset prepared, or its instructions raised) on
    # first use, so that a preset on data not here (GTA5 -> Cityscapes) builds and checks.
    target = functools.partial(pipeline.from_config, target_ds,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
    styliser = None
    if u.method == "adain" and u.adain_model:
        from segjax.style.style_randomization import load_adain_styliser

        styliser = load_adain_styliser(u.adain_model)
    base = semantic.build(config, info, data_dir)
    kwargs = {k: getattr(base, k) for k in (
        "num_classes", "ignore_label", "loss_kind", "loss_kwargs", "aux_weight", "se_weight",
        "scales", "flip", "window", "stride", "boundary_iou", "boundary_dilation_ratio",
        "class_names", "palette")}
    source_size = None  # only epochs count the source's examples
    if config.get("num_train_steps") is None:
        source_size = pipeline.from_config(config.dataset).num_train_examples
    num_steps = config_utils.get_steps(config, "num_train", batch_size=config.batch_size,
                                       num_examples=source_size)
    return UDATask(method=u.method, target=target, crop_size=config.dataset.crop_size,
                   num_steps=num_steps, adv_weight=u.adv_weight, disc_lr=u.disc_lr,
                   disc_features=u.disc_features, fda_beta=u.fda_beta,
                   entropy_weight=u.entropy_weight, entropy_eta=u.entropy_eta,
                   ema_decay=u.ema_decay, pseudo_threshold=u.pseudo_threshold,
                   mix_augment=u.mix_augment, adain_alpha_min=u.adain_alpha_min,
                   adain_styliser=styliser, **kwargs)
