"""Semantic segmentation: dense logits against a dense label map, scored by mIoU.

Batches: train `{"image" [B, H, W, 3] float32, "label" [B, H, W] int32}`; eval adds `"valid"`
[B] (False for filler examples), `"height"`, `"width"` (original size) and `"index"`.
Loss: `segjax.losses.LOSSES[config.loss.kind]` on `"logits"`, plus `aux_weight` times the same
loss on `"aux_logits"` when the model has them (on each map of a tuple of them: ICNet's two
label-guidance heads), each normalised by its own global count, plus
`se_weight` times the SE-loss (`segjax.losses.se_loss`: BCE of `"se_logits"` [B, K] against the
classes present in each label map; EncNet) over its global count of B * K entries. A model
that scores only some pixels in training (PixelNet) returns `"pixel_index"` [B, S] (flat
positions y * W + x) with `"logits"` [B, S, K]; the loss then reads the labels at those pixels.
Evaluation: the confusion matrix (and Boundary IoU counts) of the argmax of
`segjax.tasks.semantic_predict.predict_probs` (whole image, multi-scale + flip TTA or sliding
window), summed as int64 on the host; checkpoints are ranked by `miou`.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import losses, metrics as metrics_lib, visualize
from segjax.models.outputs import AUX_LOGITS, LOGITS, PIXEL_INDEX, SE_LOGITS
from segjax.tasks import semantic_predict
from segjax.tasks.base import Accumulator, StepContext, Task, class_palette
from segjax.tasks.registry import register, section

BEST_METRIC = "miou"
EVAL_KEYS = ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou", "iou_per_class", "num_pixels",
             "boundary_iou", "boundary_iou_per_class")


class SemanticAccumulator(Accumulator):
    """int64 sums of the per-batch confusion matrices and Boundary IoU counts."""

    def __init__(self, num_classes: int):
        self._acc = metrics_lib.ConfusionAccumulator(num_classes)

    def update(self, sums, per_example, batch) -> None:
        del per_example, batch
        self._acc.update(np.asarray(sums["confusion"]))
        if "boundary_intersection" in sums:
            self._acc.update_boundary(np.asarray(sums["boundary_intersection"]),
                                      np.asarray(sums["boundary_union"]))

    def result(self) -> dict[str, Any]:
        return self._acc.result()


class SemanticTask(Task):
    """Per-pixel classification into `num_classes` classes with an ignore label.

    Args:
      num_classes, ignore_label: the dataset's.
      loss_kind: a key of `segjax.losses.LOSSES`.
      loss_kwargs: keyword arguments of that loss (class_weights, gamma, thresh, ...).
      aux_weight: weight of the loss on "aux_logits", or on each of them when the model returns
        a tuple (0 disables it).
      se_weight: weight of the SE-loss on "se_logits" (0, the default, disables it).
      scales, flip, window, stride: evaluation (see `segjax.tasks.semantic_predict.predict_probs`).
      boundary_iou: also count Boundary IoU at evaluation, with a boundary width of
        `boundary_dilation_ratio` times the padded batch's diagonal (Cheng et al.: 2%).
      class_names, palette: for the pictures (default: the ids and VOC's colour map).
    """

    name = "semantic"
    best_metric = BEST_METRIC
    train_keys = ("image", "label")
    eval_keys = ("image", "label")

    def __init__(self, *, num_classes: int, ignore_label: int, loss_kind: str = "ce",
                 loss_kwargs: Mapping[str, Any] | None = None, aux_weight: float = 0.4,
                 se_weight: float = 0.0,
                 scales: Sequence[float] = (1.0,), flip: bool = False, window: int | None = None,
                 stride: int | None = None, boundary_iou: bool = True,
                 boundary_dilation_ratio: float = 0.02,
                 class_names: Sequence[str] | None = None, palette: np.ndarray | None = None):
        if loss_kind not in losses.LOSSES:
            raise ValueError(f"unknown loss kind {loss_kind!r}; choose one of "
                             f"{sorted(losses.LOSSES)}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.loss_kind = loss_kind
        self.loss_kwargs = dict(loss_kwargs or {})
        self.aux_weight = aux_weight
        self.se_weight = se_weight
        self.scales, self.flip = tuple(scales), flip
        self.window, self.stride = window, stride
        self.boundary_iou = boundary_iou
        self.boundary_dilation_ratio = boundary_dilation_ratio
        self.class_names = tuple(class_names or (str(k) for k in range(num_classes)))
        self.palette = palette

    # ------------------------------------------------------------------------------ training

    def check_batch(self, batch, keys) -> None:
        super().check_batch(batch, keys)
        if batch["label"].shape != batch["image"].shape[:-1]:
            raise ValueError(
                f"batch['label'] shape {tuple(batch['label'].shape)} must be batch['image'] "
                f"shape {tuple(batch['image'].shape)} without its channel axis")

    def _head_loss(self, logits, labels, ctx: StepContext):
        fn = losses.LOSSES[self.loss_kind]
        kwargs = dict(self.loss_kwargs)
        if losses.gathers(self.loss_kind):  # it ranks pixels over the whole batch
            kwargs["gather"] = ctx.all_gather
        return fn(logits, labels, ignore_label=self.ignore_label, **kwargs)

    def loss(self, outputs, batch, ctx: StepContext):
        """`(sum, count)`: main + aux_weight * aux + se_weight * se, each over its own global count.

        The aux term is rescaled by `global count / global aux count`, so that dividing the
        pair's global sum by the global count gives main/count + w * aux/aux_count exactly,
        on any number of devices (the counts differ for OHEM, whose selection depends on the
        head). A tuple of aux maps adds one such term per map, each with `aux_weight`.
        """
        if LOGITS not in outputs:
            raise ValueError(f"outputs must contain {LOGITS!r}, got keys {sorted(outputs)}")
        labels = batch["label"]
        if outputs.get(PIXEL_INDEX) is not None:  # sparse logits [B, S, K] at these pixels
            labels = jnp.take_along_axis(labels.reshape(labels.shape[0], -1), outputs[PIXEL_INDEX], axis=1)
        total, count = self._head_loss(outputs[LOGITS], labels, ctx)
        count = jax.lax.stop_gradient(count)
        aux = outputs.get(AUX_LOGITS)
        if self.aux_weight and aux is not None:
            for aux_logits in (aux if isinstance(aux, (tuple, list)) else (aux,)):
                aux_sum, aux_count = self._head_loss(aux_logits, labels, ctx)
                ratio = ctx.global_sum(count) / jnp.maximum(ctx.global_sum(aux_count), 1e-12)
                total = total + self.aux_weight * aux_sum * jax.lax.stop_gradient(ratio)
        if self.se_weight and outputs.get(SE_LOGITS) is not None:  # from the whole label maps
            se_sum, se_count = losses.se_loss(outputs[SE_LOGITS], batch["label"], num_classes=self.num_classes)
            ratio = ctx.global_sum(count) / jnp.maximum(ctx.global_sum(se_count), 1e-12)
            total = total + self.se_weight * se_sum * jax.lax.stop_gradient(ratio)
        return total, count

    # ---------------------------------------------------------------------------- evaluation

    def eval_outputs(self, apply_fn, variables, batch):
        def logits_fn(v, images):
            return apply_fn(v, images, train=False)[LOGITS]

        probs = semantic_predict.predict_probs(logits_fn, variables, batch["image"], scales=self.scales,
                                       flip=self.flip, window=self.window, stride=self.stride)
        pred = jnp.argmax(probs, axis=-1).astype(jnp.int32)
        valid = batch.get("valid")
        sums = {"confusion": metrics_lib.confusion_matrix(
            pred, batch["label"], self.num_classes, ignore_label=self.ignore_label,
            valid_mask=valid)}
        if self.boundary_iou:
            # Ignored pixels (padding, VOC's outlines) count as outside the image in both maps.
            outside = batch["label"] == self.ignore_label
            inter, union = metrics_lib.boundary_iou_counts(
                jnp.where(outside, -1, pred), batch["label"], self.num_classes,
                ignore_label=self.ignore_label, valid_mask=valid,
                dilation_ratio=self.boundary_dilation_ratio)
            sums.update(boundary_intersection=inter, boundary_union=union)
        return sums, {"pred": pred}

    def new_accumulator(self) -> SemanticAccumulator:
        return SemanticAccumulator(self.num_classes)

    def logged_metrics(self, metrics):
        return {k: metrics[k] for k in EVAL_KEYS if k in metrics}

    def summary_line(self, metrics):
        boundary = (f"  boundary_iou {metrics['boundary_iou']:.4f}"
                    if "boundary_iou" in metrics else "")
        return (f"miou {metrics['miou']:.4f}  pixel_accuracy "
                f"{metrics['pixel_accuracy']:.4f}{boundary}")

    def _palette(self) -> np.ndarray:
        return class_palette(self.num_classes, self.palette)

    def save_examples(self, out_dir, step, batch, per_example, *, limit, writer=None) -> int:
        """One panel per valid example: image | ground truth | prediction, and a legend.

        Written as `<out_dir>/<index>.png`, cropped to the original size, and to TensorBoard.
        """
        from segjax.data.pipeline import denormalize

        palette, pred = self._palette(), per_example["pred"]

        def panel(i, h, w):
            image = denormalize(np.asarray(batch["image"][i, :h, :w]))
            return visualize.comparison_panel(
                image, np.asarray(batch["label"][i, :h, :w]), pred[i, :h, :w],
                palette=palette, class_names=self.class_names, ignore_label=self.ignore_label)

        return self.write_panels(out_dir, step, batch, panel, limit=limit, writer=writer)

    # ------------------------------------------------------------- single-image inference

    def predictor(self, model, variables):
        """uint8 image [H, W, 3] -> class ids int [H, W]: the argmax of the evaluation's
        prediction (the same TTA or sliding window), compiled once per padded size."""
        from segjax.tasks.base import padded_input

        def logits_fn(v, images):
            return model.apply(v, images, train=False)[LOGITS]

        @jax.jit
        def classes(v, x):
            probs = semantic_predict.predict_probs(logits_fn, v, x, scales=self.scales, flip=self.flip,
                                           window=self.window, stride=self.stride)
            return jnp.argmax(probs, -1)

        def predict(image):
            h, w = np.shape(image)[:2]
            return np.asarray(classes(variables, padded_input(image)))[0, :h, :w]

        return predict

    def write_prediction(self, stem, image, prediction, *, alpha=0.5, score_thresh=0.5):
        """`<stem>_mask.png` (palette colours), `<stem>_overlay.png` (mask blended over the
        image) and `<stem>_labels.png` (class ids as grey values)."""
        del score_thresh
        palette = self._palette()
        outputs = {
            f"{stem}_mask.png": visualize.colorize(prediction, palette),
            f"{stem}_overlay.png": visualize.overlay(image, prediction, palette, alpha=alpha),
            f"{stem}_labels.png": prediction.astype(np.uint8),
        }
        for path, array in outputs.items():
            visualize.save_png(path, array)
        return list(outputs)


# ------------------------------------------------------------------------------ from a config


def defaults() -> ml_collections.ConfigDict:
    """The semantic task's config: `loss` and its keys of the trainer's `eval` section."""
    placeholder = ml_collections.config_dict.placeholder
    c = ml_collections.ConfigDict()
    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "ce"  # a name of segjax.losses.LOSSES: "ce", "focal", "dice", "lovasz", "ohem"
    c.loss.aux_weight = 0.4  # weight of "aux_logits" (of each, ICNet's tuple) when the model has them
    c.loss.se_weight = 0.0  # weight of the SE-loss on "se_logits" (EncNet; the paper's 0.2)
    c.loss.label_smoothing = 0.0  # ce/ohem only
    # Options of one loss kind (None: the loss's default); a set field the kind does not take
    # fails naming it.
    c.loss.gamma = placeholder(float)  # focal: (1 - p)^gamma (default 2)
    c.loss.thresh = placeholder(float)  # ohem: keep pixels with p(true class) < thresh (0.7)
    c.loss.top_k = placeholder(float)  # ohem: keep this fraction of the hardest pixels instead
    c.loss.min_kept = placeholder(int)  # ohem: at least this many pixels per image (mmseg)
    # "" (none), "median_frequency" or "inverse_frequency" (from the training split's pixel
    # counts, segjax.data.balance.loss_class_weights), or K comma-separated weights.
    c.loss.class_weights = ""
    c.eval = ml_collections.ConfigDict()
    c.eval.tta = False  # multi-scale + flip, softmax averaged at the original resolution
    c.eval.tta_scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    c.eval.tta_flip = True
    c.eval.sliding_window = False  # predict window x window tiles with the given stride
    c.eval.window = 513
    c.eval.stride = 341
    c.eval.boundary_iou = True  # also report Boundary IoU (Cheng et al. 2021, 2% of the diagonal)
    return c


def loss_kwargs(config: ml_collections.ConfigDict,
                class_weights: Sequence[float] | None = None) -> dict[str, Any]:
    """`{"kind", "aux_weight", **keyword arguments of the loss}` from `config.loss`.

    None fields are unset; `class_weights` is resolved by `resolve_class_weights` and passed in.

    Raises:
      ValueError: an unknown kind, or a field that the kind does not take (naming it).
    """
    cfg = section(config, "loss", "semantic").to_dict()
    kind = cfg.pop("kind")
    aux_weight = cfg.pop("aux_weight")
    cfg.pop("se_weight", None)  # a term of the task (`build`), not an option of the pixel loss
    cfg.pop("class_weights", None)
    if kind not in losses.LOSSES:
        raise ValueError(f"config.loss.kind={kind!r} is not one of {sorted(losses.LOSSES)}")
    accepted = inspect.signature(losses.LOSSES[kind]).parameters
    if class_weights is not None:
        cfg["class_weights"] = tuple(float(w) for w in class_weights)
    kw = {}
    for key, value in cfg.items():
        if value is None or (key == "label_smoothing" and value == 0):
            continue
        if key not in accepted:
            raise ValueError(f"config.loss.{key}={value!r} does not apply to loss kind {kind!r}")
        kw[key] = tuple(value) if isinstance(value, list) else value
    return {"kind": kind, "aux_weight": aux_weight, **kw}


def resolve_class_weights(config: ml_collections.ConfigDict, info,
                          data_dir: str | None) -> tuple[float, ...] | None:
    """`config.loss.class_weights` as K floats, or None when it is "".

    It is "" (unweighted), a method of `segjax.data.balance.LOSS_WEIGHTINGS` computed from the
    pixel counts of the examples actually trained on (the fold's training part, the first
    `num_train_examples`), or K comma-separated numbers.
    """
    from segjax.data import balance, splits

    spec = (section(config, "loss", "semantic").get("class_weights") or "").strip()
    if not spec:
        return None
    if spec in balance.LOSS_WEIGHTINGS:
        ds = config.dataset
        counts = balance.class_pixel_counts(info, data_dir, ds.train_split)
        counts = counts[splits.train_subset(ds, len(counts))]
        weights = tuple(float(w) for w in balance.loss_class_weights(counts, spec))
        print("class weights (" + spec + "): " + ", ".join(f"{w:.3f}" for w in weights),
              flush=True)
        return weights
    try:
        weights = tuple(float(w) for w in spec.split(","))
    except ValueError:
        weights = ()
    if len(weights) != info.num_classes or any(not w >= 0 for w in weights):
        raise ValueError(f"config.loss.class_weights={spec!r} must be '', one of "
                         f"{balance.LOSS_WEIGHTINGS} or {info.num_classes} non-negative "
                         "comma-separated numbers")
    return weights


def check(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the key: an unknown loss kind, an option the kind does not take,
    sliding windows that leave gaps."""
    loss_kwargs(config)
    ev = section(config, "eval", "semantic")
    if ev.sliding_window and ev.stride > ev.window:
        raise ValueError(f"config.eval.stride ({ev.stride}) must be <= config.eval.window "
                         f"({ev.window}) or windows leave gaps")


RANGES = {"loss.aux_weight": "[0, inf)", "loss.se_weight": "[0, inf)",
          "loss.label_smoothing": "[0, 1)", "loss.gamma": "[0, inf) or None", "loss.thresh": "(0, 1] or None",
          "loss.top_k": "(0, 1] or None", "loss.min_kept": "[0, inf) or None",
          "eval.window": "[1, inf)", "eval.stride": "[1, inf)"}


@register("semantic", defaults=defaults, check=check, ranges=RANGES)
def build(config: ml_collections.ConfigDict, info, data_dir: str | None) -> SemanticTask:
    """The semantic task of a run: `config.loss` and `config.eval` on dataset `info`."""
    check(config)
    kw = loss_kwargs(config, resolve_class_weights(config, info, data_dir))
    kind, aux_weight = kw.pop("kind"), kw.pop("aux_weight")
    ev = section(config, "eval", "semantic")
    return SemanticTask(
        num_classes=info.num_classes, ignore_label=info.ignore_label, loss_kind=kind,
        loss_kwargs=kw, aux_weight=aux_weight, se_weight=section(config, "loss", "semantic").se_weight,
        scales=tuple(ev.tta_scales) if ev.tta else (1.0,), flip=bool(ev.tta and ev.tta_flip),
        window=ev.window if ev.sliding_window else None,
        stride=ev.stride if ev.sliding_window else None, boundary_iou=ev.boundary_iou,
        class_names=info.class_names, palette=info.palette)

