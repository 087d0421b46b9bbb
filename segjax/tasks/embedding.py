"""Proposal-free instance segmentation: a semantic head plus per-pixel instance embeddings.

De Brabandere, Neven & Van Gool 2017 ("Semantic Instance Segmentation with a Discriminative Loss
Function"): the network predicts, for every pixel, its class and a D-dimensional embedding; the
discriminative loss pulls each instance's embeddings to within delta_v of their mean and pushes
the means of different instances 2 delta_d apart (`segjax.losses.metric_learning`). At inference the
foreground pixels of each predicted class are clustered in embedding space (`segjax.cluster`),
and every cluster is one instance, scored by its mean class probability. Evaluation is the same
COCO mask AP as Mask R-CNN's (`segjax.metrics.coco`), so the two families sit in one table.

Batches: train `{"image" [B, H, W, 3], "label" [B, H, W] int32, "instance" [B, H, W] int32}`
(instances renumbered 1..k per image on the host after augmentation, 0 = none; an image with more
than `config.instance.max_instances` fails naming it); eval: the padded segmentation batch with
`"instance"`.

Loss: the semantic cross-entropy over valid pixels (normalised by the global valid-pixel count)
plus `disc_weight` x the discriminative loss (normalised by the global number of images with an
instance), both global on any number of devices. Checkpoints are ranked by `mask_ap`.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import cluster, losses
from segjax.metrics import coco
from segjax.losses import metric_learning
from segjax.models.outputs import EMBEDDINGS, LOGITS
from segjax.tasks.base import Accumulator, StepContext, plain_dict
from segjax.tasks.instance import InstanceTask, check_instance_count
from segjax.tasks.instance import defaults as instance_defaults
from segjax.tasks.registry import register, section

BEST_METRIC = "mask_ap"


def renumber_instances(label: np.ndarray, instance: np.ndarray, *, max_instances: int,
                       ignore_label: int, indices: Sequence[int] | None = None) -> np.ndarray:
    """Instance ids [B, H, W] renumbered 1..k per image (0: no instance, background or ignored).

    Raises:
      ValueError: an image has more than `max_instances` instances (named by `indices`).
    """
    out = np.zeros(np.shape(instance), np.int32)
    for i in range(len(instance)):
        ids = np.where(np.asarray(label[i]) == ignore_label, 0, np.asarray(instance[i]))
        present, inverse = np.unique(ids, return_inverse=True)
        check_instance_count(int(np.sum(present > 0)), max_instances, i, indices)
        # present is sorted with 0 first when there is background: rank -> 1..k.
        ranks = np.arange(len(present)) + (0 if present[0] == 0 else 1)
        out[i] = ranks[inverse.reshape(ids.shape)]
    return out


def embedding_instances(probs: np.ndarray, embeddings: np.ndarray, *, method: str = "threshold",
                        background: int = 0, semantic: np.ndarray | None = None,
                        **cluster_kwargs) -> dict[str, np.ndarray]:
    """Instances of one image from its class probabilities [H, W, K] and embeddings [H, W, D].

    The foreground of each predicted class (argmax, or the class map `semantic` [H, W] when given,
    e.g. the ground truth to measure the embeddings alone) is clustered (`segjax.cluster.
    cluster_instances`); an instance's score is the mean probability of its class over its pixels.
    Returns masks bool [D, H, W], boxes [D, 4] (x1, y1, x2, y2), scores [D], classes int32 [D],
    in decreasing score order.
    """
    pred = np.argmax(probs, axis=-1) if semantic is None else np.asarray(semantic)
    ids, classes = cluster.cluster_instances(embeddings, pred, method=method, background=background,
                                             **cluster_kwargs)
    masks = ids[None] == np.arange(1, len(classes) + 1)[:, None, None]
    scores = np.array([probs[..., c][m].mean() for m, c in zip(masks, classes)], np.float32)
    order = np.argsort(-scores, kind="stable")
    boxes = np.reshape([coco.mask_box(m) for m in masks[order]], (len(order), 4)).astype(np.float32)
    return {"masks": masks[order], "boxes": boxes, "scores": scores[order],
            "classes": classes[order].astype(np.int32)}


class EmbeddingAccumulator(Accumulator):
    """Clusters each valid image's embeddings into instances and feeds them to COCOeval.

    `true_semantic`: cluster the ground-truth class map's pixels instead of the predicted one's
    (ignored pixels left out), so that the AP measures the embeddings alone."""

    def __init__(self, num_classes: int, ignore_label: int, cluster_kwargs: dict,
                 true_semantic: bool = False):
        self._coco = coco.CocoAccumulator(num_classes)
        self._ignore = ignore_label
        self._kwargs = cluster_kwargs
        self._true_semantic = true_semantic

    def update(self, sums, per_example, batch) -> None:
        del sums
        for i in range(len(batch["valid"])):
            if not bool(batch["valid"][i]):
                continue
            h, w = int(batch["height"][i]), int(batch["width"][i])
            gt_classes, gt_masks = coco.instances_from_maps(
                batch["label"][i, :h, :w], batch["instance"][i, :h, :w], ignore_label=self._ignore)
            label = np.asarray(batch["label"][i, :h, :w])
            semantic = np.where(label == self._ignore, 0, label) if self._true_semantic else None
            det = embedding_instances(np.asarray(per_example["probs"][i, :h, :w]),
                                      np.asarray(per_example[EMBEDDINGS][i, :h, :w]),
                                      semantic=semantic, **self._kwargs)
            self._coco.add_image(gt_classes=gt_classes, gt_masks=gt_masks, det_boxes=det["boxes"],
                                 det_scores=det["scores"], det_classes=det["classes"],
                                 det_masks=det["masks"])

    def result(self) -> dict[str, Any]:
        return self._coco.result()


class EmbeddingTask(InstanceTask):
    """Semantic segmentation + discriminative instance embeddings (see the module docstring).

    Args:
      num_classes, ignore_label: the dataset's (class 0 is the background).
      max_instances: M, the static instance slots of the discriminative loss.
      delta_v, delta_d, alpha, beta, gamma: the discriminative loss (paper: 0.5, 1.5, 1, 1, 0.001).
      disc_weight: its weight next to the cross-entropy.
      cluster_kwargs: `segjax.cluster.cluster_instances` arguments at evaluation (method, radius
        or bandwidth, min_pixels).
    """

    name = "embedding"
    best_metric = BEST_METRIC
    model_output = "dense_embeddings"
    train_keys = ("image", "label", "instance")
    eval_keys = ("image",)

    def __init__(self, *, num_classes: int, ignore_label: int, max_instances: int,
                 delta_v: float = 0.5, delta_d: float = 1.5, alpha: float = 1.0, beta: float = 1.0,
                 gamma: float = 0.001, disc_weight: float = 1.0, cluster_kwargs: dict | None = None,
                 class_names: Sequence[str] | None = None, palette: np.ndarray | None = None):
        super().__init__(num_classes=num_classes, ignore_label=ignore_label,
                         max_instances=max_instances, class_names=class_names, palette=palette)
        self.disc = dict(delta_v=delta_v, delta_d=delta_d, alpha=alpha, beta=beta, gamma=gamma)
        self.disc_weight = disc_weight
        self.cluster_kwargs = dict(cluster_kwargs or {})
        method = self.cluster_kwargs.get("method", "threshold")
        if method not in cluster.METHODS:
            raise ValueError(f"config.embedding.cluster.method={method!r} is not one of "
                             f"{cluster.METHODS}")

    # -------------------------------------------------------------------------------- data

    def train_batches(self, data, *, batch_size, seed, start_step) -> Iterator[dict]:
        for batch in data.train(batch_size=batch_size, seed=seed, start_step=start_step,
                                with_instances=True):
            instance = renumber_instances(batch["label"], batch["instance"],
                                          max_instances=self.max_instances,
                                          ignore_label=self.ignore_label, indices=batch["index"])
            yield {"image": batch["image"], "label": batch["label"], "instance": instance}

    # ---------------------------------------------------------------------------- training

    def model_inputs(self, batch, *, train):
        del train
        return (batch["image"],), {}

    def loss(self, outputs, batch, ctx: StepContext):
        """`(sum, count)`: count = this share's valid pixels; the discriminative term is rescaled
        so that the global loss is CE_sum / pixels + disc_weight x disc_sum / images (global)."""
        label = batch["label"].astype(jnp.int32)
        ce_sum, ce_count = losses.cross_entropy(outputs[LOGITS], label,
                                                ignore_label=self.ignore_label)
        d_sum, d_count = metric_learning.discriminative_loss(
            outputs[EMBEDDINGS], batch["instance"].astype(jnp.int32),
            max_instances=self.max_instances, ignore_label=self.ignore_label,
            valid_mask=label != self.ignore_label, **self.disc)
        scale = ctx.global_sum(ce_count) / jnp.maximum(ctx.global_sum(d_count), 1.0)
        return ce_sum + self.disc_weight * d_sum * jax.lax.stop_gradient(scale), ce_count

    # -------------------------------------------------------------------------- evaluation

    def eval_outputs(self, apply_fn, variables, batch):
        out = apply_fn(variables, batch["image"], train=False)
        return {}, {"probs": jax.nn.softmax(out[LOGITS], axis=-1), EMBEDDINGS: out[EMBEDDINGS]}

    def new_accumulator(self) -> EmbeddingAccumulator:
        return EmbeddingAccumulator(self.num_classes, self.ignore_label, self.cluster_kwargs)

    def save_examples(self, out_dir, step, batch, per_example, *, limit, writer=None) -> int:
        """Ground-truth instances | clustered instances (score >= 0.5) | the embeddings' first
        three dimensions as colour, one picture per valid example."""

        def panel(i, h, w):
            emb = np.asarray(per_example[EMBEDDINGS][i, :h, :w])
            det = embedding_instances(np.asarray(per_example["probs"][i, :h, :w]), emb,
                                      **self.cluster_kwargs)
            rgb = np.pad(emb, ((0, 0), (0, 0), (0, max(0, 3 - emb.shape[-1]))))[..., :3]
            lo, hi = rgb.min(axis=(0, 1)), rgb.max(axis=(0, 1))
            colour = ((rgb - lo) / np.maximum(hi - lo, 1e-6) * 255).astype(np.uint8)
            return self.panel(batch, i, h, w, det["masks"], det["boxes"], det["classes"],
                              det["scores"], colour)

        return self.write_panels(out_dir, step, batch, panel, limit=limit, writer=writer)

    # ------------------------------------------------------------- single-image inference

    def predictor(self, model, variables):
        """uint8 image [H, W, 3] -> its instances by the run's clustering
        (`embedding_instances`: masks, boxes, scores, classes), the model compiled once per
        padded size; drawn like Mask R-CNN's detections."""
        from segjax.tasks.base import padded_input

        apply = jax.jit(lambda v, x: model.apply(v, x, train=False))

        def predict(image):
            h, w = np.shape(image)[:2]
            out = apply(variables, padded_input(image))
            return embedding_instances(np.asarray(jax.nn.softmax(out[LOGITS][0, :h, :w], -1)),
                                       np.asarray(out[EMBEDDINGS][0, :h, :w]),
                                       **self.cluster_kwargs)

        return predict


def defaults() -> ml_collections.ConfigDict:
    """The embedding task's config: the instance slots and the `embedding` section."""
    placeholder = ml_collections.config_dict.placeholder
    c = instance_defaults()
    c.embedding = ml_collections.ConfigDict()
    # The discriminative loss (De Brabandere et al.'s values).
    c.embedding.delta_v = 0.5
    c.embedding.delta_d = 1.5
    c.embedding.alpha = 1.0
    c.embedding.beta = 1.0
    c.embedding.gamma = 0.001
    c.embedding.disc_weight = 1.0  # its weight next to the semantic cross-entropy
    # Clustering at evaluation (segjax.cluster.cluster_instances): unset fields keep the
    # method's default.
    c.embedding.cluster = ml_collections.ConfigDict()
    c.embedding.cluster.method = "threshold"  # or "mean_shift"
    c.embedding.cluster.radius = placeholder(float)  # threshold
    c.embedding.cluster.bandwidth = placeholder(float)  # mean_shift
    c.embedding.cluster.min_pixels = placeholder(int)  # smaller clusters are dropped
    return c


@register("embedding", defaults=defaults, ranges={
    "instance.max_instances": "[1, inf)", "embedding.delta_v": "[0, inf)",
    "embedding.delta_d": "[0, inf)", "embedding.alpha": "[0, inf)", "embedding.beta": "[0, inf)",
    "embedding.gamma": "[0, inf)", "embedding.disc_weight": "[0, inf)",
    "embedding.cluster.radius": "(0, inf) or None", "embedding.cluster.bandwidth": "(0, inf) or None",
    "embedding.cluster.min_pixels": "[0, inf) or None"})
def build(config, info, data_dir) -> EmbeddingTask:
    """The embedding task of a run: `config.embedding` (loss and clustering) on dataset `info`."""
    del data_dir
    e = section(config, "embedding", "embedding")
    cluster_kwargs = {k: v for k, v in plain_dict(e.cluster).items() if v is not None}
    return EmbeddingTask(
        num_classes=info.num_classes, ignore_label=info.ignore_label,
        max_instances=section(config, "instance", "embedding").max_instances,
        delta_v=float(e.delta_v), delta_d=float(e.delta_d), alpha=float(e.alpha),
        beta=float(e.beta), gamma=float(e.gamma), disc_weight=float(e.disc_weight),
        cluster_kwargs=cluster_kwargs, class_names=info.class_names, palette=info.palette)


__all__ = ["BEST_METRIC", "EmbeddingAccumulator", "EmbeddingTask", "build", "embedding_instances",
           "renumber_instances"]
