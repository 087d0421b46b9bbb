"""Few-shot segmentation by prototypes (PANet: Wang, Liew, Zou, Zhou & Feng, ICCV 2019).

A shared encoder embeds the support and query images. **Masked average pooling** of a support
image's features under its (resized) mask gives a class prototype, and under the complement a
background prototype; with K shots the prototypes are averaged over the shots. The query is
segmented pixel by pixel by the **scaled cosine similarity** to the prototypes (background first,
then the N way classes), trained with cross-entropy. **Prototype alignment** (PAR) reverses the
roles: prototypes pooled from the query under its *predicted* mask segment the support images,
a second cross-entropy term.

Shapes: `ways` N, `shots` K; features [..., h, w, C], masks [..., H, W] in {0, 1} (or soft);
pixels marked invalid (the dataset's ignore label, padding) are excluded from every pool.

Episodes: `EpisodeSampler` draws N-way K-shot episodes from per-image class presence (any
segmentation dataset: `class_presence` of its label maps), restricted to a class subset so that
training and testing use disjoint classes; every draw is a pure function of (seed, episode index).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segjax.ops import resize

EPS = 1e-5  # PANet's denominator guard in masked average pooling


def masked_average_pool(features: jax.Array, masks: jax.Array) -> jax.Array:
    """Mean feature under each mask: features [B, h, w, C], masks [B, H, W] -> [B, C].

    As PANet, the features are resized bilinearly (half-pixel centres) to the mask's size first,
    then `sum(F * M) / (sum(M) + 1e-5)`: an empty mask gives a zero prototype.
    """
    size = masks.shape[-2:]
    up = resize(features, size, method="bilinear", align_corners=False)
    m = masks.astype(up.dtype)[..., None]
    return jnp.sum(up * m, axis=(1, 2)) / (jnp.sum(m, axis=(1, 2)) + EPS)


def prototypes(features: jax.Array, fg_masks: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Background + N class prototypes from N-way K-shot support features.

    Args:
      features: [N, K, h, w, C] support features (way n's K shots).
      fg_masks: [N, K, H, W] foreground masks of way n's class in its support images.
      valid: [N, K, H, W] bool, pixels that count (None: all).

    Returns:
      [1 + N, C]: row 0 the background prototype (the mean over all N * K support images of the
      pool under valid & not foreground), rows 1..N each way's foreground prototype (mean over
      its K shots).
    """
    n, k = fg_masks.shape[:2]
    flat_f = features.reshape(n * k, *features.shape[2:])
    fg = fg_masks.reshape(n * k, *fg_masks.shape[2:]).astype(jnp.float32)
    v = jnp.ones_like(fg) if valid is None else valid.reshape(fg.shape).astype(jnp.float32)
    fg_p = masked_average_pool(flat_f, fg * v).reshape(n, k, -1).mean(axis=1)
    bg_p = masked_average_pool(flat_f, (1.0 - fg) * v).mean(axis=0)
    return jnp.concatenate([bg_p[None], fg_p], axis=0)


def cosine_logits(features: jax.Array, protos: jax.Array, scale: float = 20.0) -> jax.Array:
    """`scale * cos(feature, prototype)`: features [..., C], prototypes [P, C] -> [..., P].

    The norms are clamped at 1e-8 as `torch.nn.functional.cosine_similarity` does, inside the
    square root so that a zero vector (an empty mask's prototype) has a finite gradient."""
    def unit(x):
        return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-16))

    return scale * jnp.einsum("...c,pc->...p", unit(features), unit(protos))


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


def episode_masks(label: np.ndarray, classes: Sequence[int], ignore_label: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """An episode's target and validity for label map(s) [..., H, W] and its way classes:
    target = 1 + n where the pixel is class `classes[n]`, 0 elsewhere; valid = not ignored."""
    target = np.zeros(label.shape, np.int32)
    for n, c in enumerate(classes):
        target[label == c] = n + 1
    return target, label != ignore_label


def class_presence(labels: np.ndarray, num_classes: int, *, ignore_label: int,
                   min_pixels: int = 1) -> np.ndarray:
    """Bool [B, num_classes]: image b shows at least `min_pixels` pixels of class c."""
    labels = np.asarray(labels)
    out = np.zeros((len(labels), num_classes), bool)
    for b, lab in enumerate(labels):
        counts = np.bincount(lab[lab != ignore_label].ravel(), minlength=num_classes)[:num_classes]
        out[b] = counts >= min_pixels
    return out


class EpisodeSampler:
    """N-way K-shot episodes with Q queries over images indexed by class presence.

    Args:
      presence: bool [num_images, num_classes] (`class_presence`).
      classes: the class ids episodes may use (e.g. the training or the held-out classes).
      ways, shots, queries: N, K and queries per episode.
      seed: episode `i` is a pure function of (seed, i).

    `episode(i)` returns (way classes [N], support indices [N, K], query indices [Q]): each
    way's K support images show its class; each query shows the class of way `q % N` (so every
    way is queried in turn); no image appears twice in an episode.

    Raises:
      ValueError: a class with fewer than K + ceil(Q / N) images, or fewer classes than N.
    """

    def __init__(self, presence: np.ndarray, classes: Sequence[int], *, ways: int = 1,
                 shots: int = 1, queries: int = 1, seed: int = 0):
        self.classes = tuple(int(c) for c in classes)
        if ways < 1 or shots < 1 or queries < 1:
            raise ValueError(f"ways, shots and queries must be >= 1, got {ways}, {shots}, {queries}")
        if len(self.classes) < ways:
            raise ValueError(f"{ways}-way episodes need at least {ways} classes, got {self.classes}")
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, seed
        self.pools = {c: np.flatnonzero(presence[:, c]) for c in self.classes}
        need = shots + -(-queries // ways)
        short = {c: len(p) for c, p in self.pools.items() if len(p) < need}
        if short:
            raise ValueError(f"classes {short} (images showing each) have fewer than shots + "
                             f"queries/ways = {need} images: drop them from the episode classes")

    def episode(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, i])
        way_classes = rng.choice(self.classes, size=self.ways, replace=False)
        used: set[int] = set()
        support = np.zeros((self.ways, self.shots), np.int64)
        query = np.zeros((self.queries,), np.int64)
        for n, c in enumerate(way_classes):
            support[n] = self._draw(rng, c, self.shots, used)
        for q in range(self.queries):
            query[q] = self._draw(rng, way_classes[q % self.ways], 1, used)[0]
        return way_classes.astype(np.int64), support, query

    def _draw(self, rng, c, count, used):
        pool = np.array([j for j in self.pools[int(c)] if j not in used])
        if len(pool) < count:
            raise ValueError(f"episode needs {count} more images of class {c}; the pool is exhausted "
                             "(images showing several episode classes were used by another way)")
        picked = rng.choice(pool, size=count, replace=False)
        used.update(int(j) for j in picked)
        return picked


__all__ = ["EpisodeSampler", "class_presence", "cosine_logits", "episode_masks",
           "masked_average_pool", "prototypes"]
