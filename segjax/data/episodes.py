"""Few-shot episodes, host-side (NumPy): N-way K-shot episodes drawn from any segmentation
dataset, for the few-shot task (`segjax.tasks.fewshot`; the model and its prototype maths are
`segjax.models.fewshot`).

`EpisodeSampler` draws N-way K-shot episodes from per-image class presence (`class_presence` of
the dataset's label maps), restricted to a class subset so that training and testing use
disjoint classes; every draw is a pure function of (seed, episode index). `episode_masks` turns
a query's label map into the episode's target (0 background, 1 + n way n) and validity, and
`make_episodes` assembles a batch of episodes (the few-shot task's batch layout) from a pool of
images and label maps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

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


def make_episodes(images: np.ndarray, labels: np.ndarray, sampler: EpisodeSampler,
                  indices: Sequence[int], *, ignore_label: int) -> dict[str, np.ndarray]:
    """The batch of episodes `indices` of `sampler` over `images` [P, H, W, 3], `labels` [P, H, W]."""
    rows = []
    for i in indices:
        classes, support, query = sampler.episode(int(i))
        s_lab = labels[support]  # [N, K, H, W]
        s_mask = np.stack([s_lab[n] == c for n, c in enumerate(classes)]).astype(np.float32)
        q_target, q_valid = episode_masks(labels[query[0]], classes, ignore_label)
        rows.append({"support_image": images[support], "support_mask": s_mask,
                     "support_valid": s_lab != ignore_label, "query_image": images[query[0]],
                     "query_target": q_target, "query_valid": q_valid,
                     "classes": classes.astype(np.int32)})
    out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    out["valid"] = np.ones(len(rows), bool)
    return out


__all__ = ["EpisodeSampler", "class_presence", "episode_masks", "make_episodes"]
