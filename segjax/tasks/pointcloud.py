"""Point-cloud part segmentation (`config.task = "pointcloud"`): PointNet on ShapeNet-part's format.

Batches (read here from the dataset's TFDS split, not the image pipelines): `points` float32
`[B, P, 3]`, `part` int32 `[B, P]` (global part ids), `category` int32 `[B]`, `valid` bool `[B]`
(and in evaluation `point_valid` bool `[B, P]`).

* Training: every step, each shape's `pointcloud.num_points` points are drawn without
  replacement (with replacement when it has fewer), seeded by `(seed, epoch, example index)`; the
  shapes of an epoch are a permutation seeded by `(seed, epoch)`. PointNet trains on 2048 points.
* Loss: the points' cross-entropy plus `pointcloud.regularizer_weight` (0.001) times Eq. 2's
  ||I - A A^T||_F^2 of the feature transform, as (sum, count) over points: every shape has P
  points, so the regulariser is added P times per shape and the step's global division gives
  CE mean + weight * regulariser mean over shapes on any device count.
* Evaluation: every point of each shape (padded to `pointcloud.eval_points` by repeating its first
  point, which changes neither the max-pooled global feature nor any real point's scores; the
  repeats are masked out), predictions restricted to the shape's category's parts, ShapeNet's
  per-shape part mIoU (`segjax.metrics.parts`): `instance_miou` (ranks checkpoints), `class_miou`,
  `miou_per_category` (a list in `CATEGORY_NAMES` order in metrics.jsonl) and `point_accuracy`.

The dataset's builder module names the categories: `PART_CATEGORY` ([K], each part's category)
and `CATEGORY_NAMES` (`synthetic_parts`, `shapenet_part`).
"""

from __future__ import annotations

import importlib
import zlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax.metrics.parts import PartIoUAccumulator, restrict_to_category, shape_mious
from segjax.models.outputs import LOGITS
from segjax.models.pointnet import FEATURE_TRANSFORM, feature_transform_regularizer
from segjax.tasks.base import Accumulator, Task
from segjax.tasks.registry import register, section


def _rng(seed: int, *keys: int | str) -> np.random.Generator:
    return np.random.default_rng([seed] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k)
                                           for k in keys])


def sample_points(num_stored: int, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """`num_points` indices into a shape of `num_stored` points: without replacement when it has
    enough, else all of them then draws with replacement."""
    if num_stored >= num_points:
        return rng.choice(num_stored, num_points, replace=False)
    return np.concatenate([rng.permutation(num_stored), rng.choice(num_stored, num_points - num_stored)])


class _PartAccumulator(Accumulator):
    def __init__(self, category_names):
        self.parts = PartIoUAccumulator(category_names)
        self.correct = self.points = 0

    def update(self, sums, per_example, batch):
        self.parts.update(per_example["miou"], batch["category"], batch["valid"])
        self.correct += int(np.asarray(sums["correct"], np.int64).sum())
        self.points += int(np.asarray(sums["points"], np.int64).sum())

    def result(self):
        return {**self.parts.result(), "point_accuracy": self.correct / max(self.points, 1)}


class PointCloudTask(Task):
    """See the module docstring."""

    name = "pointcloud"
    best_metric = "instance_miou"
    model_output = "points"
    train_keys = ("points", "part", "category")
    eval_keys = ("points", "part", "category", "point_valid")

    def __init__(self, *, info, data_dir, train_split: str, num_points: int, eval_points: int,
                 regularizer_weight: float, use_categories: bool):
        module = importlib.import_module(info.builder_module)
        self.info, self.data_dir, self.train_split = info, data_dir, train_split
        self.part_category = np.asarray(module.PART_CATEGORY, np.int32)
        self.category_names = tuple(module.CATEGORY_NAMES)
        self.num_points, self.eval_points = num_points, eval_points
        self.regularizer_weight, self.use_categories = regularizer_weight, use_categories

    def model_inputs(self, batch, *, train):
        del train
        return (batch["points"],), ({"categories": batch["category"]} if self.use_categories else {})

    def init_inputs(self, image_shape):
        del image_shape
        return (jnp.zeros((1, self.num_points, 3), jnp.float32),), (
            {"categories": jnp.zeros((1,), jnp.int32)} if self.use_categories else {})

    def _source(self, split: str):
        from segjax.data.records import prepare

        return prepare(self.info, self.data_dir).as_data_source(split)

    def train_batches(self, data, *, batch_size: int, seed: int, start_step: int):
        del data  # the image pipelines' streams: this task reads the split itself
        source = self._source(self.train_split)
        n, global_batch = len(source), batch_size * jax.process_count()
        orders: dict[int, np.ndarray] = {}
        step = start_step
        while True:
            rows = []
            for j in range(batch_size):
                q = step * global_batch + jax.process_index() * batch_size + j
                epoch = q // n
                if epoch not in orders:
                    orders = {epoch: _rng(seed, "order", epoch).permutation(n)}
                index = int(orders[epoch][q % n])
                ex = source[index]
                pick = sample_points(len(ex["part"]), self.num_points, _rng(seed, "points", epoch, index))
                rows.append((ex["points"][pick], ex["part"][pick], ex["category"]))
            yield {"points": np.stack([r[0] for r in rows]).astype(np.float32),
                   "part": np.stack([r[1] for r in rows]).astype(np.int32),
                   "category": np.array([r[2] for r in rows], np.int32), "valid": np.ones(batch_size, bool)}
            step += 1

    def eval_batches(self, data, *, batch_size: int, pad_to):
        del pad_to  # every point of a shape, padded to pointcloud.eval_points
        source = self._source(data.eval_split)
        n, global_batch = len(source), batch_size * jax.process_count()
        for k in range(-(-n // global_batch)):
            batch = {"points": np.zeros((batch_size, self.eval_points, 3), np.float32),
                     "part": np.zeros((batch_size, self.eval_points), np.int32),
                     "point_valid": np.zeros((batch_size, self.eval_points), bool),
                     "category": np.zeros(batch_size, np.int32), "valid": np.zeros(batch_size, bool)}
            for j in range(batch_size):
                q = k * global_batch + jax.process_index() * batch_size + j
                if q >= n:
                    continue
                ex = source[q]
                m = len(ex["part"])
                if m > self.eval_points:
                    raise ValueError(f"{self.info.name} {data.eval_split} example {q} has {m} points, more than "
                                     f"config.pointcloud.eval_points={self.eval_points}: raise it")
                batch["points"][j, :m], batch["points"][j, m:] = ex["points"], ex["points"][0]
                batch["part"][j, :m], batch["part"][j, m:] = ex["part"], ex["part"][0]
                batch["point_valid"][j, :m] = True
                batch["category"][j], batch["valid"][j] = ex["category"], True
            yield batch

    def loss(self, outputs, batch, ctx):
        del ctx
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs[LOGITS], batch["part"])
        reg = feature_transform_regularizer(outputs[FEATURE_TRANSFORM])
        points = batch["part"].shape[1]
        return jnp.sum(ce) + self.regularizer_weight * points * jnp.sum(reg), jnp.asarray(ce.size, jnp.float32)

    def eval_outputs(self, apply_fn, variables, batch):
        args, kwargs = self.model_inputs(batch, train=False)
        logits = apply_fn(variables, *args, train=False, **kwargs)[LOGITS]
        pred = restrict_to_category(logits, batch["category"], self.part_category)
        valid = batch["point_valid"]
        sums = {"correct": jnp.sum((pred == batch["part"]) & valid, dtype=jnp.int32),
                "points": jnp.sum(valid, dtype=jnp.int32)}
        return sums, {"miou": shape_mious(pred, batch["part"], batch["category"], jnp.asarray(self.part_category),
                                          valid)}

    def new_accumulator(self):
        return _PartAccumulator(self.category_names)

    def logged_metrics(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """As computed, `miou_per_category` as a list in `CATEGORY_NAMES` order (null: no shape)."""
        per = metrics["miou_per_category"]
        return {**metrics, "miou_per_category": [per.get(name) for name in self.category_names]}

    def summary_line(self, metrics: Mapping[str, Any]) -> str:
        return (f"instance mIoU {metrics['instance_miou']:.4f}, class mIoU {metrics['class_miou']:.4f}, "
                f"point accuracy {metrics['point_accuracy']:.4f}")


def defaults() -> ml_collections.ConfigDict:
    """The `pointcloud` section."""
    c = ml_collections.ConfigDict()
    c.pointcloud = ml_collections.ConfigDict()
    c.pointcloud.num_points = 2048  # points per training shape (PointNet's)
    c.pointcloud.eval_points = 3000  # evaluation pads every shape to this many points (all are scored)
    c.pointcloud.regularizer_weight = 0.001  # Eq. 2's weight (the paper's)
    # The part-segmentation variant: the category one-hot goes to the model, whose num_categories
    # must then be set (pointnet_seg refuses categories without it, and the reverse, by name).
    c.pointcloud.use_categories = True
    return c


RANGES = {"pointcloud.num_points": "[1, inf)", "pointcloud.eval_points": "[1, inf)",
          "pointcloud.regularizer_weight": "[0, inf)"}


@register("pointcloud", defaults=defaults, ranges=RANGES)
def build(config: ml_collections.ConfigDict, info, data_dir: str | None) -> PointCloudTask:
    """The point-cloud task of a run (`config.pointcloud`, module docstring)."""
    p = section(config, "pointcloud", "pointcloud")
    return PointCloudTask(info=info, data_dir=data_dir, train_split=config.dataset.train_split,
                          num_points=int(p.num_points),
                          eval_points=int(p.eval_points), regularizer_weight=float(p.regularizer_weight),
                          use_categories=bool(p.use_categories))
