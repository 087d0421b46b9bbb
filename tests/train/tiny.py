"""A tiny segmentation model and batch for the training tests (registered nowhere).

`TinySegNet`: "backbone" (3x3 conv -> segjax BatchNorm -> relu) then "head" (1x1 conv), so it has
the top-level "backbone" key the optimiser's options look for, BatchNorm (sync BN matters), and
optional dropout and an aux head.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from segjax.models.layers import Dropout
from segjax.models.norm import BatchNorm

IGNORE = 255


class Block(nn.Module):
    features: int
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.features, (3, 3), use_bias=False, name="conv")(x)
        x = BatchNorm(use_running_average=not train, axis_name=self.axis_name, name="bn")(x)
        return nn.relu(x)


class TinySegNet(nn.Module):
    num_classes: int = 3
    features: int = 4
    axis_name: str | None = None
    dtype: Any = jnp.float32
    dropout: float = 0.0
    aux: bool = False

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = Block(self.features, self.axis_name, name="backbone")(images, train)
        x = Dropout(self.dropout, self.axis_name)(x, not train) if self.dropout else x
        out = {"logits": nn.Conv(self.num_classes, (1, 1), name="head")(x)}
        if self.aux:
            out["aux_logits"] = nn.Conv(self.num_classes, (1, 1), name="aux_head")(x)
        return out


def make_batch(rng: np.random.Generator, n: int = 8, h: int = 9, w: int = 11, k: int = 3) -> dict[str, np.ndarray]:
    """Random images/labels whose ignored pixels are spread very unevenly over the batch.

    Image i has a fraction (i % 4) / 4 + small noise of its pixels ignored, so with 4 devices
    and 2 images each the devices see very different valid-pixel counts.
    """
    images = rng.normal(size=(n, h, w, 3)).astype(np.float32)
    labels = rng.integers(0, k, size=(n, h, w)).astype(np.int32)
    for i in range(n):
        frac = [0.05, 0.9, 0.3, 0.6][(i // 2) % 4]
        labels[i][rng.random((h, w)) < frac] = IGNORE
    return {"image": images, "label": labels}


def make_task(k: int = 3, **kwargs):
    """The semantic task the training tests use (ignore label `IGNORE`, no Boundary IoU)."""
    from segjax.tasks.semantic import SemanticTask

    kwargs.setdefault("boundary_iou", False)
    return SemanticTask(num_classes=k, ignore_label=IGNORE, **kwargs)
