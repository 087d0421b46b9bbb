"""A user's own model, loss, task and dataset, registered from outside segjax.

Nothing here edits segjax: importing this module registers

* the model `tiny_fcn` (`segjax.models.register`): a three-layer dilated FCN with no BatchNorm
  and no `dtype` argument (it computes in float32; `parallelism="mesh"` needs no `axis_name`);
* the loss `tversky` (`segjax.losses.register`): the Tversky loss of Salehi et al. 2017,
  1 - TP / (TP + alpha FP + beta FN) per class, averaged over the classes;
* the task `foreground` (`segjax.tasks.register`): the semantic task on a two-class dataset,
  its checkpoints ranked by the foreground IoU, with its own config section `foreground`;
* the dataset `shapes_fg` (`segjax.data.register_dataset`): segjax's generated
  `synthetic_shapes` with every shape class mapped to one "shape" class (a `label_map`).

`config.py` beside this file imports it (`base_config(..., imports=("my_segmentation",))`), so
`python -m experiments.train --config=examples/plugin/config.py` trains it, and `predict` and
resuming import it again from the run's config.json. The directory must be on PYTHONPATH.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import segjax
from segjax.data import DatasetInfo, register_dataset
from segjax.tasks.semantic import SemanticAccumulator, SemanticTask

# ----------------------------------------------------------------------------------- model


class TinyFCN(nn.Module):
    """Conv 3x3 -> conv 3x3 (dilation 2) -> 1x1 classifier, at the input resolution."""

    num_classes: int
    features: int = 16

    @nn.compact
    def __call__(self, images, train: bool = False):
        del train
        x = nn.relu(nn.Conv(self.features, (3, 3))(images))
        x = nn.relu(nn.Conv(self.features, (3, 3), kernel_dilation=2)(x))
        return {"logits": nn.Conv(self.num_classes, (1, 1))(x)}


@segjax.models.register("tiny_fcn")
def tiny_fcn(num_classes: int, features: int = 16) -> TinyFCN:
    """The `tiny_fcn` model (`config.model.features` is its one override)."""
    return TinyFCN(num_classes=num_classes, features=features)


# ------------------------------------------------------------------------------------ loss


@segjax.losses.register("tversky")
def tversky(logits, labels, *, ignore_label, valid_mask=None, alpha=0.5, beta=0.5):
    """`(sum, count)` of the Tversky loss over the images of the batch: per image and class,
    1 - TP / (TP + alpha FP + beta FN) on softmax probabilities, averaged over the classes;
    count = images. alpha = beta = 0.5 is the soft Dice loss."""
    k = logits.shape[-1]
    valid = labels != ignore_label
    if valid_mask is not None:
        valid &= valid_mask.reshape((-1,) + (1,) * (labels.ndim - 1)).astype(bool)
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1) * valid[..., None]
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), k) * valid[..., None]
    axes = tuple(range(1, labels.ndim))
    tp = jnp.sum(probs * onehot, axes)
    fp = jnp.sum(probs * (1 - onehot), axes)
    fn = jnp.sum((1 - probs) * onehot, axes)
    index = tp / jnp.maximum(tp + alpha * fp + beta * fn, 1e-6)
    return jnp.sum(1 - jnp.mean(index, -1)), jnp.float32(labels.shape[0])


# ------------------------------------------------------------------------------------ task


class ForegroundAccumulator(SemanticAccumulator):
    """The semantic metrics plus `fg_iou`, the IoU of class 1."""

    def result(self):
        metrics = super().result()
        return {**metrics, "fg_iou": float(metrics["iou_per_class"][1])}


class ForegroundTask(SemanticTask):
    """Two-class segmentation whose checkpoints are ranked by the foreground IoU."""

    name = "foreground"
    best_metric = "fg_iou"

    def new_accumulator(self) -> ForegroundAccumulator:
        return ForegroundAccumulator(self.num_classes)

    def logged_metrics(self, metrics):
        return {**super().logged_metrics(metrics), "fg_iou": metrics["fg_iou"]}

    def summary_line(self, metrics):
        return f"fg_iou {metrics['fg_iou']:.4f}  " + super().summary_line(metrics)


def foreground_defaults() -> ml_collections.ConfigDict:
    """The `foreground` task's config section."""
    c = ml_collections.ConfigDict()
    c.foreground = ml_collections.ConfigDict()
    c.foreground.loss = "tversky"  # a registered loss
    c.foreground.alpha = 0.3  # Tversky: weight of false positives
    c.foreground.beta = 0.7  # ... and of false negatives (recall matters more)
    return c


@segjax.tasks.register("foreground", defaults=foreground_defaults)
def build_foreground(config, info, data_dir) -> ForegroundTask:
    """The foreground task of a run: `config.foreground` on a two-class dataset `info`."""
    del data_dir
    if info.num_classes != 2:
        raise ValueError(f"the foreground task needs a 2-class dataset; {info.name} has "
                         f"{info.num_classes}")
    f = segjax.tasks.section(config, "foreground")
    return ForegroundTask(num_classes=2, ignore_label=info.ignore_label, loss_kind=f.loss,
                          loss_kwargs={"alpha": f.alpha, "beta": f.beta}, aux_weight=0.0,
                          boundary_iou=False, class_names=info.class_names,
                          palette=info.palette)


# --------------------------------------------------------------------------------- dataset


def _shapes_fg() -> DatasetInfo:
    table = np.full(256, -1, np.int32)  # any other raw value is invalid
    table[0], table[1:6], table[255] = 0, 1, 255
    return DatasetInfo(
        name="shapes_fg", tfds_name="synthetic_shapes/tiny", num_classes=2, ignore_label=255,
        class_names=("background", "shape"),
        palette=np.array([[0, 0, 0], [255, 160, 0]], np.uint8), label_map=table,
        instance_key="instance_mask", builder_module="segjax.data.builders.synthetic_shapes",
        notes="synthetic_shapes/tiny with its five shape classes as one.")


register_dataset(_shapes_fg, name="shapes_fg")
