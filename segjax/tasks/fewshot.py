"""Few-shot segmentation (PANet-style prototypes): N-way K-shot episodes on held-out classes.

Batches are episodes (one query each), derived on the host from a registered segmentation
dataset:
  `support_image` [B, N, K, H, W, 3], `support_mask` [B, N, K, H, W] (way n's class),
  `support_valid` [B, N, K, H, W] (not the ignore label), `query_image` [B, H, W, 3],
  `query_target` [B, H, W] int32 (0 background, 1 + n way n), `query_valid` [B, H, W],
  `classes` [B, N] (the ways' dataset class ids), `valid` [B].

Classes are split: `config.fewshot.test_classes` are never a way in training (their pixels are
background there, as in PANet's PASCAL-5i protocol); evaluation episodes use only them.
Training: each step reads a pool of `config.fewshot.pool` augmented images from the dataset's
train stream and draws the step's episodes from it (`segjax.data.episodes.EpisodeSampler`,
seeded by (seed, step)). Evaluation: `config.fewshot.eval_episodes` fixed episodes (seed
`config.fewshot.eval_seed`) over the eval split.

Loss: `proto_weight` x (cross-entropy of the query's logits over its valid pixels, plus
`align_weight` x the prototype-alignment cross-entropy over the support's valid pixels, PANet's
PAR), each normalised by its own global pixel count; plus, with `triplet_weight` > 0, a triplet
loss on pixel embeddings (`segjax.losses.triplet_loss`, `triplet` its keyword
arguments: mining, margin, distance, normalize, soft): from every support and query image,
`triplet_pixels` foreground and as many background pixels of the stride-8 feature map (the
episode's masks read at the cells' centres), labelled by the way's dataset class id (background
0; `triplet_background=False` keeps only the foreground pixels, so that no class is pulled
towards "background", which holds the held-out classes' pixels in training), mined over the
*global* batch and normalised by its global count. `proto_weight=0` trains
the encoder by the triplet loss alone (the mining study of ABLATIONS.md). Metrics (PANet's): `fg_miou`, the mean over test classes of the
foreground IoU accumulated over all episodes of that class; `fb_iou`, the mean of background and
foreground IoU; `episode_fg_iou`, the mean per-episode foreground IoU. Checkpoints by `fg_miou`.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import losses
from segjax.data.episodes import EpisodeSampler, class_presence, make_episodes
from segjax.losses import metric_learning
from segjax.tasks.base import Accumulator, StepContext, Task, plain_dict
from segjax.tasks.registry import register, section

BEST_METRIC = "fg_miou"


def sample_pixels(key: jax.Array, labels: jax.Array, valid: jax.Array, per_side: int
                  ) -> tuple[jax.Array, jax.Array]:
    """Up to `per_side` foreground (label > 0) and `per_side` background (label 0) pixels of one
    label map [h, w], drawn uniformly without replacement among the `valid` ones (static shapes:
    Gumbel-style top-k of uniform scores).

    Returns (flat pixel indices int32 [2 per_side], ok bool [2 per_side]); `ok` is False for the
    slots a side had no pixel left for (their index is arbitrary)."""
    flat_l, flat_v = labels.reshape(-1), valid.reshape(-1).astype(bool)
    u = jax.random.uniform(key, flat_l.shape)
    index, ok = [], []
    for side in (flat_l > 0, flat_l == 0):
        top, idx = jax.lax.top_k(jnp.where(side & flat_v, u, -1.0), per_side)
        index.append(idx.astype(jnp.int32))
        ok.append(top >= 0)
    return jnp.concatenate(index), jnp.concatenate(ok)


def episode_counts(pred, target, valid, *, ways: int) -> dict[str, jax.Array]:
    """What `FewShotAccumulator` sums, from query predictions and targets [B, H, W] (0 the
    background, 1 + n way n) over the valid pixels: `inter` / `union` [B, ways] of each way,
    and `fg_inter` / `fg_union` / `bg_inter` / `bg_union` [B] of foreground vs background."""
    n = jnp.arange(1, ways + 1)[None, :, None, None]
    p, t, v = pred[:, None] == n, target[:, None] == n, valid[:, None]  # [B, ways, H, W]
    count = lambda x, m: jnp.sum(x & m, axis=(-2, -1), dtype=jnp.int32)  # noqa: E731
    pf, tf = pred > 0, target > 0
    return {"inter": count(p & t, v), "union": count(p | t, v),
            "fg_inter": count(pf & tf, valid), "fg_union": count(pf | tf, valid),
            "bg_inter": count(~pf & ~tf, valid), "bg_union": count(~pf | ~tf, valid)}


class FewShotAccumulator(Accumulator):
    """Per-class foreground intersection/union over episodes, background IoU, per-episode IoU."""

    def __init__(self, test_classes: Sequence[int]):
        self.test_classes = tuple(int(c) for c in test_classes)
        self.inter = {c: 0 for c in self.test_classes}
        self.union = {c: 0 for c in self.test_classes}
        self.bg = np.zeros(2, np.int64)
        self.fg = np.zeros(2, np.int64)
        self.episode_iou: list[float] = []

    def update(self, sums, per_example, batch) -> None:
        del sums
        for i in range(len(batch["valid"])):
            if not bool(batch["valid"][i]):
                continue
            for n, c in enumerate(np.asarray(per_example["classes"][i])):
                inter, union = int(per_example["inter"][i, n]), int(per_example["union"][i, n])
                self.inter[int(c)] += inter
                self.union[int(c)] += union
                self.episode_iou.append(inter / union if union else 1.0)
            self.bg += [int(per_example["bg_inter"][i]), int(per_example["bg_union"][i])]
            self.fg += [int(per_example["fg_inter"][i]), int(per_example["fg_union"][i])]

    def result(self) -> dict[str, Any]:
        per_class = {c: self.inter[c] / self.union[c] for c in self.test_classes if self.union[c]}
        fb = [x[0] / x[1] for x in (self.bg, self.fg) if x[1]]
        out = {"fg_miou": float(np.mean(list(per_class.values()))) if per_class else 0.0,
               "fb_iou": float(np.mean(fb)) if fb else 0.0,
               "episode_fg_iou": float(np.mean(self.episode_iou)) if self.episode_iou else 0.0,
               "num_episodes": len(self.episode_iou)}
        out.update({f"fg_iou_class_{c}": v for c, v in per_class.items()})
        return out


class FewShotTask(Task):
    """N-way K-shot segmentation episodes (see the module docstring)."""

    name = "fewshot"
    best_metric = BEST_METRIC
    model_output = "episode"
    train_keys = ("support_image", "support_mask", "support_valid", "query_image", "query_target",
                  "query_valid", "classes")
    eval_keys = train_keys

    def __init__(self, *, num_classes: int, ignore_label: int, test_classes: Sequence[int],
                 ways: int = 1, shots: int = 1, pool: int = 64, eval_episodes: int = 200,
                 eval_seed: int = 0, align_weight: float = 1.0, min_pixels: int = 16,
                 background: int = 0, class_names: Sequence[str] | None = None,
                 proto_weight: float = 1.0, triplet_weight: float = 0.0,
                 triplet: dict | None = None, triplet_pixels: int = 8,
                 triplet_background: bool = True):
        self.num_classes, self.ignore_label = num_classes, ignore_label
        self.test_classes = tuple(int(c) for c in test_classes)
        bad = [c for c in self.test_classes if not 0 <= c < num_classes or c == background]
        if bad or not self.test_classes:
            raise ValueError(f"config.fewshot.test_classes={self.test_classes} must be non-empty "
                             f"foreground class ids in 1..{num_classes - 1}")
        self.train_classes = tuple(c for c in range(num_classes)
                                   if c != background and c not in self.test_classes)
        if len(self.train_classes) < ways:
            raise ValueError(f"{ways}-way training needs {ways} training classes; the split leaves "
                             f"{self.train_classes}")
        self.ways, self.shots, self.pool = ways, shots, pool
        self.eval_episodes, self.eval_seed = eval_episodes, eval_seed
        self.align_weight, self.min_pixels = align_weight, min_pixels
        self.proto_weight, self.triplet_weight = proto_weight, triplet_weight
        self.triplet = dict(triplet or {})
        self.triplet_pixels, self.triplet_background = triplet_pixels, triplet_background
        if not proto_weight and not triplet_weight:
            raise ValueError("config.fewshot.proto_weight and triplet_weight are both 0: nothing "
                             "to train")
        mining = self.triplet.get("mining", "hard")
        if mining not in metric_learning.MINING:
            raise ValueError(f"config.fewshot.triplet.mining={mining!r} is not one of "
                             f"{metric_learning.MINING}")
        self.class_names = tuple(class_names or (str(k) for k in range(num_classes)))
        self._eval_cache: dict[Any, tuple[np.ndarray, np.ndarray]] = {}

    # -------------------------------------------------------------------------------- data

    def _sampler(self, labels, classes, seed):
        presence = class_presence(labels, self.num_classes, ignore_label=self.ignore_label,
                                  min_pixels=self.min_pixels)
        need = self.shots + 1
        usable = [c for c in classes if presence[:, c].sum() >= need]
        return EpisodeSampler(presence, usable, ways=self.ways, shots=self.shots,
                              queries=1, seed=seed)

    def train_batches(self, data, *, batch_size, seed, start_step) -> Iterator[dict]:
        step = start_step
        for pool in data.train(batch_size=self.pool, seed=seed, start_step=start_step):
            step += 1
            images, labels = np.asarray(pool["image"]), np.asarray(pool["label"])
            sampler = self._sampler(labels, self.train_classes, seed=[seed, step])
            yield make_episodes(images, labels, sampler, range(batch_size),
                                ignore_label=self.ignore_label)

    def eval_split(self, data, pad_to) -> tuple[np.ndarray, np.ndarray]:
        """The whole eval split in memory (images, labels padded to one size); cached."""
        key = (id(data), pad_to)
        if key not in self._eval_cache:
            images, labels = [], []
            for batch in data.eval(batch_size=16, pad_to=pad_to):
                keep = np.asarray(batch["valid"], bool)
                images.append(np.asarray(batch["image"])[keep])
                labels.append(np.asarray(batch["label"])[keep])
            self._eval_cache = {key: (np.concatenate(images), np.concatenate(labels))}
        return self._eval_cache[key]

    def eval_batches(self, data, *, batch_size, pad_to) -> Iterator[dict]:
        images, labels = self.eval_split(data, pad_to)
        sampler = self._sampler(labels, self.test_classes, seed=self.eval_seed)
        for start in range(0, self.eval_episodes, batch_size):
            idx = list(range(start, min(start + batch_size, self.eval_episodes)))
            batch = make_episodes(images, labels, sampler, idx + [idx[-1]] * (batch_size - len(idx)),
                                  ignore_label=self.ignore_label)
            batch["valid"][len(idx):] = False
            yield batch

    # ---------------------------------------------------------------------------- training

    def model_inputs(self, batch, *, train):
        del train
        return ((batch["support_image"], batch["support_mask"], batch["query_image"]),
                {"support_valid": batch["support_valid"]})

    def loss(self, outputs, batch, ctx: StepContext):
        q_sum, q_count = losses.cross_entropy(
            outputs["logits"], batch["query_target"].astype(jnp.int32),
            ignore_label=self.ignore_label, valid_mask=batch["query_valid"])
        if self.align_weight and "align_logits" in outputs:
            s_sum, s_count = losses.cross_entropy(
                outputs["align_logits"], batch["support_mask"].astype(jnp.int32),
                ignore_label=self.ignore_label, valid_mask=batch["support_valid"])
            scale = ctx.global_sum(q_count) / jnp.maximum(ctx.global_sum(s_count), 1.0)
            q_sum = q_sum + self.align_weight * s_sum * jax.lax.stop_gradient(scale)
        total = self.proto_weight * q_sum
        if self.triplet_weight:
            t_sum, t_count = self.triplet_terms(outputs, batch, ctx)
            scale = ctx.global_sum(q_count) / jnp.maximum(ctx.global_sum(t_count), 1.0)
            total = total + self.triplet_weight * t_sum * jax.lax.stop_gradient(scale)
        return total, q_count

    def triplet_terms(self, outputs, batch, ctx: StepContext):
        """This share's `(sum, count)` of the triplet loss on sampled pixel embeddings, mined over
        the global batch (see the module docstring)."""
        q_feat, s_feat = outputs["query_features"], outputs["support_features"]
        b, n, k = s_feat.shape[:3]
        h, w, c = q_feat.shape[1:]
        stride = batch["query_target"].shape[-1] // w

        def cells(x):  # [..., H, W] -> [..., h, w]: the value at each feature cell's centre
            return x[..., stride // 2::stride, stride // 2::stride][..., :h, :w]

        classes = batch["classes"].astype(jnp.int32)  # [B, N]
        q_target = cells(batch["query_target"]).astype(jnp.int32)
        q_label = jnp.where(q_target > 0, jnp.take_along_axis(
            classes, jnp.maximum(q_target - 1, 0).reshape(b, -1), axis=1).reshape(q_target.shape), 0)
        s_label = jnp.where(cells(batch["support_mask"]) > 0, classes[:, :, None, None, None], 0)
        feats = jnp.concatenate([s_feat.reshape(b, n * k, h * w, c), q_feat.reshape(b, 1, h * w, c)], 1)
        labels = jnp.concatenate([s_label.reshape(b, n * k, h * w), q_label.reshape(b, 1, h * w)], 1)
        valid = jnp.concatenate([cells(batch["support_valid"]).reshape(b, n * k, h * w),
                                 cells(batch["query_valid"]).reshape(b, 1, h * w)], 1)
        images = n * k + 1
        keys = jax.vmap(lambda key: jax.random.split(key, images))(ctx.example_keys(b))
        pick = jax.vmap(jax.vmap(lambda key, l, v: sample_pixels(key, l, v, self.triplet_pixels)))
        index, ok = pick(keys, labels, valid)  # [B, I, 2S]
        emb = jnp.take_along_axis(feats, index[..., None], axis=2).reshape(-1, c)
        lab = jnp.take_along_axis(labels, index, axis=2).reshape(-1)
        ok = ok.reshape(-1)
        if not self.triplet_background:  # foreground pixels only: classes against each other
            ok = ok & (lab > 0)
        rows = emb.shape[0]
        g_emb, g_lab, g_ok = ctx.all_gather((emb, lab, ok))
        first = ctx.example_offset(b) * (rows // b)
        anchor = (jnp.arange(g_emb.shape[0]) >= first) & (jnp.arange(g_emb.shape[0]) < first + rows)
        return metric_learning.triplet_loss(g_emb, g_lab, anchor_mask=anchor, valid=g_ok,
                                             **self.triplet)

    # -------------------------------------------------------------------------- evaluation

    def eval_outputs(self, apply_fn, variables, batch):
        args, kwargs = self.model_inputs(batch, train=False)
        logits = apply_fn(variables, *args, train=False, **kwargs)["logits"]
        pred = jnp.argmax(logits, axis=-1)
        counts = episode_counts(pred, batch["query_target"], batch["query_valid"],
                                ways=logits.shape[-1] - 1)
        return {}, {**counts, "classes": batch["classes"], "pred": pred}

    def new_accumulator(self) -> FewShotAccumulator:
        return FewShotAccumulator(self.test_classes)

    def summary_line(self, metrics):
        return (f"fg_miou {metrics['fg_miou']:.4f}  fb_iou {metrics['fb_iou']:.4f}  "
                f"({metrics['num_episodes']} episodes)")

    def save_examples(self, out_dir, step, batch, per_example, *, limit, writer=None) -> int:
        """support (mask overlaid) | query | truth | prediction, one picture per episode (way n in
        colour n + 1: cyan, white, orange, violet, then VOC's colours)."""
        from segjax import visualize
        from segjax.data.datasets import voc_palette
        from segjax.data.pipeline import denormalize

        # Bright way colours over the unchanged image (background pixels are left as they are).
        palette = np.array([[0, 0, 0], [0, 255, 255], [255, 255, 255], [255, 128, 0], [128, 0, 255]]
                           + [list(c) for c in voc_palette(256)[5:]], np.uint8)

        def show(image, mask):
            return visualize.overlay(image, np.where(mask > 0, mask, 255), palette, alpha=0.6,
                                     ignore_label=255)

        def panel(i, h, w):
            del h, w
            support = denormalize(np.asarray(batch["support_image"][i, 0, 0]))
            s_mask = np.asarray(batch["support_mask"][i, 0, 0]).astype(np.int32)
            query = denormalize(np.asarray(batch["query_image"][i]))
            target = np.asarray(batch["query_target"][i])
            pred = np.asarray(per_example["pred"][i])
            return visualize.side_by_side(show(support, s_mask), visualize.to_uint8_image(query),
                                          show(query, target), show(query, pred))

        def name(i, written):
            names = "_".join(self.class_names[int(c)] for c in np.asarray(batch["classes"][i]))
            return f"{written:05d}_{names}"

        return self.write_panels(out_dir, step, batch, panel, limit=limit, writer=writer,
                                 name=name, tag="fewshot")


def defaults() -> ml_collections.ConfigDict:
    """The few-shot task's config section (PANet's 1-way 1-shot setting)."""
    c = ml_collections.ConfigDict()
    f = c.fewshot = ml_collections.ConfigDict()
    f.test_classes = ()  # held-out classes: never a way in training (must be non-empty)
    f.ways = 1
    f.shots = 1
    f.pool = 64  # augmented images read per step, the step's episodes drawn from them
    f.eval_episodes = 200
    f.eval_seed = 0
    f.align_weight = 1.0  # PANet's prototype alignment loss
    f.min_pixels = 16  # a way needs this many pixels in support and query
    # Metric learning on pixel embeddings: off unless triplet_weight > 0.
    f.proto_weight = 1.0
    f.triplet_weight = 0.0
    f.triplet_pixels = 8  # foreground and background pixels per image
    f.triplet_background = True  # False: foreground pixels only (classes vs classes)
    f.triplet = ml_collections.ConfigDict()  # segjax.losses.triplet_loss's arguments
    f.triplet.mining = "hard"
    f.triplet.margin = 1.0
    f.triplet.distance = "euclidean"
    f.triplet.normalize = False
    f.triplet.soft = False
    return c


@register("fewshot", defaults=defaults, ranges={
    "fewshot.ways": "[1, inf)", "fewshot.shots": "[1, inf)", "fewshot.pool": "[1, inf)",
    "fewshot.eval_episodes": "[1, inf)", "fewshot.min_pixels": "[0, inf)",
    "fewshot.align_weight": "[0, inf)", "fewshot.proto_weight": "[0, inf)",
    "fewshot.triplet_weight": "[0, inf)", "fewshot.triplet_pixels": "[1, inf)",
    "fewshot.triplet.margin": "[0, inf)"})
def build(config, info, data_dir) -> FewShotTask:
    """The few-shot task of a run: `config.fewshot` on dataset `info`."""
    del data_dir
    f = section(config, "fewshot", "fewshot")
    return FewShotTask(num_classes=info.num_classes, ignore_label=info.ignore_label,
                       test_classes=tuple(f.test_classes), ways=int(f.ways), shots=int(f.shots),
                       pool=int(f.pool), eval_episodes=int(f.eval_episodes),
                       eval_seed=int(f.eval_seed), align_weight=float(f.align_weight),
                       min_pixels=int(f.min_pixels),
                       class_names=getattr(info, "class_names", None),
                       proto_weight=float(f.proto_weight), triplet_weight=float(f.triplet_weight),
                       triplet=plain_dict(f.triplet), triplet_pixels=int(f.triplet_pixels),
                       triplet_background=bool(f.triplet_background))



__all__ = ["BEST_METRIC", "FewShotAccumulator", "FewShotTask", "build", "episode_counts",
           "sample_pixels"]
