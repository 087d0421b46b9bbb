"""Semantic segmentation: dense logits against a dense label map, scored by mIoU.

Batches: train `{"image" [B, H, W, 3] float32, "label" [B, H, W] int32}`; eval adds `"valid"`
[B] (False for filler examples), `"height"`, `"width"` (original size) and `"index"`.
Loss: `segjax.losses.LOSSES[config.loss.kind]` on `"logits"`, plus `aux_weight` times the same
loss on `"aux_logits"` when the model has them, each normalised by its own global count.
Evaluation: the confusion matrix (and Boundary IoU counts) of the argmax of
`segjax.tasks.semantic_predict.predict_probs` (whole image, multi-scale + flip TTA or sliding
window), summed as int64 on the host; checkpoints are ranked by `miou`.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import losses, metrics as metrics_lib, visualize
from segjax.tasks import semantic_predict as evaluate
from segjax.models.outputs import AUX_LOGITS, LOGITS
from segjax.tasks.base import Accumulator, StepContext, Task

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
      aux_weight: weight of the loss on "aux_logits" (0 disables it).
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
        """`(sum, count)`: main + aux_weight * aux, each over its own global count.

        The aux term is rescaled by `global count / global aux count`, so that dividing the
        pair's global sum by the global count gives main/count + w * aux/aux_count exactly,
        on any number of devices (the counts differ for OHEM, whose selection depends on the
        head).
        """
        if LOGITS not in outputs:
            raise ValueError(f"outputs must contain {LOGITS!r}, got keys {sorted(outputs)}")
        total, count = self._head_loss(outputs[LOGITS], batch["label"], ctx)
        count = jax.lax.stop_gradient(count)
        if self.aux_weight and outputs.get(AUX_LOGITS) is not None:
            aux_sum, aux_count = self._head_loss(outputs[AUX_LOGITS], batch["label"], ctx)
            ratio = ctx.global_sum(count) / jnp.maximum(ctx.global_sum(aux_count), 1e-12)
            total = total + self.aux_weight * aux_sum * jax.lax.stop_gradient(ratio)
        return total, count

    # ---------------------------------------------------------------------------- evaluation

    def eval_outputs(self, apply_fn, variables, batch):
        def logits_fn(v, images):
            return apply_fn(v, images, train=False)[LOGITS]

        probs = evaluate.predict_probs(logits_fn, variables, batch["image"], scales=self.scales,
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

    def save_examples(self, out_dir, step, batch, per_example, *, limit, writer=None) -> int:
        """One panel per valid example: image | ground truth | prediction, and a legend.

        Written as `<out_dir>/<index>.png`, cropped to the original size, and to TensorBoard.
        """
        from segjax.data.datasets import voc_palette
        from segjax.data.pipeline import denormalize

        palette = voc_palette(self.num_classes) if self.palette is None else self.palette
        written = 0
        pred = per_example["pred"]
        for i in range(len(pred)):
            if written >= limit or not bool(batch["valid"][i]):
                continue
            h, w = int(batch["height"][i]), int(batch["width"][i])
            index = int(batch["index"][i]) if "index" in batch else i
            image = denormalize(np.asarray(batch["image"][i, :h, :w]))
            panel = visualize.comparison_panel(
                image, np.asarray(batch["label"][i, :h, :w]), pred[i, :h, :w],
                palette=palette, class_names=self.class_names,
                ignore_label=self.ignore_label)
            visualize.save_png(os.path.join(out_dir, f"{index:05d}.png"), panel)
            if writer is not None:
                writer.write_images(step, {f"predictions/{index:05d}": panel})
            written += 1
        return written


# ------------------------------------------------------------------------------ from a config


def loss_kwargs(config: ml_collections.ConfigDict,
                class_weights: Sequence[float] | None = None) -> dict[str, Any]:
    """`{"kind", "aux_weight", **keyword arguments of the loss}` from `config.loss`.

    None fields are unset; `class_weights` is resolved by `resolve_class_weights` and passed in.

    Raises:
      ValueError: an unknown kind, or a field that the kind does not take (naming it).
    """
    cfg = config.loss.to_dict()
    kind = cfg.pop("kind")
    aux_weight = cfg.pop("aux_weight")
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

    spec = (config.loss.get("class_weights") or "").strip()
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


def build(config: ml_collections.ConfigDict, info, data_dir: str | None) -> SemanticTask:
    """The semantic task of a run: `config.loss` and `config.eval` on dataset `info`."""
    kw = loss_kwargs(config, resolve_class_weights(config, info, data_dir))
    kind, aux_weight = kw.pop("kind"), kw.pop("aux_weight")
    ev = config.eval
    return SemanticTask(
        num_classes=info.num_classes, ignore_label=info.ignore_label, loss_kind=kind,
        loss_kwargs=kw, aux_weight=aux_weight,
        scales=tuple(ev.tta_scales) if ev.tta else (1.0,), flip=bool(ev.tta and ev.tta_flip),
        window=ev.window if ev.sliding_window else None,
        stride=ev.stride if ev.sliding_window else None, boundary_iou=ev.boundary_iou,
        class_names=info.class_names, palette=info.palette)

