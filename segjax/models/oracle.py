"""Mask-quality oracles (Fernandes, Cruz & Cardoso, IJCNN 2018): `q(image, mask)` in (0, 1).

An oracle regresses the Dice of a (soft) binary mask against the unknown ground truth of its
image (trained by the oracle task, `segjax.tasks.oracle`); segmentation is then gradient ascent
of `q` on the mask (`segjax.tasks.oracle_refine`). Three architectures, after the authors'
single-stream, dual-stream and "gossip" networks (the widths, depths and pooling are this
file's, not a copy of theirs):

* `oracle_single`: one CNN on `concat(image, mask)`;
* `oracle_dual`: an image stream and a mask stream, joined after global pooling;
* `oracle_gossip` (the authors' default): two streams, one fed `concat(image, mask)`, the other
  `concat(image, 1 - mask)`; at every level each stream's first convolution reads
  `concat(own features, the other stream's features)` (the exchange), so each stream sees what
  the other found inside / outside the mask.

Every level is two 3x3 conv + BatchNorm + ReLU blocks (the first strided by 2 from level 1 on),
widths `base_features * 2**level`; then global average pooling, a hidden dense layer with
dropout, and a sigmoid unit. BatchNorm (`segjax.models.norm.BatchNorm`) and `Dropout`
(`segjax.models.layers.Dropout`) take `axis_name`, so data-parallel training is device-count
invariant.

`model.apply(variables, image [N, H, W, C], mask [N, H, W] float in [0, 1], train=...)` returns
`{"quality": [N]}`. `mask=None` is the all-zero mask (the ascent's usual start). Any H, W.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from segjax.models.layers import Dropout
from segjax.models.norm import BatchNorm
from segjax.models.registry import register

QUALITY = "quality"


class _Block(nn.Module):
    """3x3 conv -> BatchNorm (norm="batch"; no conv bias) or nothing (norm="none") -> ReLU."""

    features: int
    stride: int = 1
    axis_name: str | None = None
    dtype: Any = jnp.float32
    norm: str = "batch"

    @nn.compact
    def __call__(self, x, train: bool):
        batch_norm = self.norm == "batch"
        x = nn.Conv(self.features, (3, 3), strides=self.stride, padding=1, use_bias=not batch_norm,
                    dtype=self.dtype, kernel_init=nn.initializers.he_normal())(x)
        if batch_norm:
            x = BatchNorm(axis_name=self.axis_name, dtype=self.dtype)(
                x, use_running_average=not train)
        return nn.relu(x)


class _Head(nn.Module):
    """Pooled features [N, C] -> hidden dense + ReLU + dropout -> sigmoid quality [N]."""

    hidden: int
    dropout: float
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # bfloat16 -> float32, float64 kept
        x = nn.relu(nn.Dense(self.hidden, dtype=x.dtype)(x))
        x = Dropout(self.dropout, axis_name=self.axis_name)(x, deterministic=not train)
        return nn.sigmoid(nn.Dense(1, dtype=x.dtype)(x)[:, 0])


class _Oracle(nn.Module):
    """Common fields and input checks (see the module docstring)."""

    num_classes: int = 1  # unused: an oracle outputs one quality per (image, mask)
    base_features: int = 16
    depth: int = 4
    hidden: int = 128
    dropout: float = 0.0
    in_channels: int = 3
    axis_name: str | None = None
    dtype: Any = jnp.float32
    # "batch" (segjax's BatchNorm, synchronised over axis_name; it computes in float32 whatever
    # `dtype` is) or "none" (conv bias only: exact float64 forward passes, for gradient checks).
    norm: str = "batch"

    def _inputs(self, image, mask):
        if self.norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {self.norm!r}")
        if image.ndim != 4 or image.shape[-1] != self.in_channels:
            raise ValueError(f"image must be [N, H, W, {self.in_channels}], got shape "
                             f"{tuple(image.shape)}")
        if mask is None:
            mask = jnp.zeros(image.shape[:3], image.dtype)
        if mask.shape != image.shape[:3]:
            raise ValueError(f"mask must be [N, H, W] = {tuple(image.shape[:3])}, got shape "
                             f"{tuple(mask.shape)}")
        return image.astype(self.dtype), mask.astype(self.dtype)[..., None]

    def _widths(self):
        return [self.base_features * 2 ** i for i in range(self.depth)]

    def _stream(self, x, train, prefix):
        for i, f in enumerate(self._widths()):
            x = _Block(f, 2 if i else 1, self.axis_name, self.dtype, self.norm, name=f"{prefix}{i}a")(x, train)
            x = _Block(f, 1, self.axis_name, self.dtype, self.norm, name=f"{prefix}{i}b")(x, train)
        return jnp.mean(x, axis=(1, 2))

    def _head(self, pooled, train):
        q = _Head(self.hidden, self.dropout, self.axis_name, name="head")(pooled, train)
        return {QUALITY: q}


class SingleStreamOracle(_Oracle):
    """One CNN on concat(image, mask)."""

    @nn.compact
    def __call__(self, image, mask=None, train: bool = False):
        image, mask = self._inputs(image, mask)
        return self._head(self._stream(jnp.concatenate([image, mask], -1), train, "s"), train)


class DualStreamOracle(_Oracle):
    """An image CNN and a mask CNN, concatenated after global pooling."""

    @nn.compact
    def __call__(self, image, mask=None, train: bool = False):
        image, mask = self._inputs(image, mask)
        pooled = jnp.concatenate([self._stream(image, train, "img"),
                                  self._stream(mask, train, "msk")], -1)
        return self._head(pooled, train)


class GossipOracle(_Oracle):
    """Streams on (image, mask) and (image, 1 - mask) exchanging features at every level.

    Level i: `a_i = Block(concat(a, b))`, `b_i = Block(concat(b, a))` (both from the previous
    level's a, b), each followed by a second Block of its own stream. Swapping the two streams'
    parameters (and the halves of the head's first kernel) is the same network on `1 - mask`.
    """

    @nn.compact
    def __call__(self, image, mask=None, train: bool = False):
        image, mask = self._inputs(image, mask)
        a = jnp.concatenate([image, mask], -1)
        b = jnp.concatenate([image, 1.0 - mask], -1)
        for i, f in enumerate(self._widths()):
            stride = 2 if i else 1
            a, b = (_Block(f, stride, self.axis_name, self.dtype, self.norm, name=f"a{i}x")(
                        jnp.concatenate([a, b], -1), train),
                    _Block(f, stride, self.axis_name, self.dtype, self.norm, name=f"b{i}x")(
                        jnp.concatenate([b, a], -1), train))
            a = _Block(f, 1, self.axis_name, self.dtype, self.norm, name=f"a{i}b")(a, train)
            b = _Block(f, 1, self.axis_name, self.dtype, self.norm, name=f"b{i}b")(b, train)
        pooled = jnp.concatenate([jnp.mean(a, axis=(1, 2)), jnp.mean(b, axis=(1, 2))], -1)
        return self._head(pooled, train)


def _factory(cls):
    def make(*, num_classes: int = 1, base_features: int = 16, depth: int = 4,
             hidden: int = 128, dropout: float = 0.0, in_channels: int = 3,
             axis_name: str | None = None, dtype: Any = jnp.float32, norm: str = "batch"
             ) -> nn.Module:
        return cls(num_classes=num_classes, base_features=base_features, depth=depth,
                   hidden=hidden, dropout=dropout, in_channels=in_channels,
                   axis_name=axis_name, dtype=dtype, norm=norm)

    make.__doc__ = f"{cls.__name__} (see segjax.models.oracle)."
    return make


oracle_single = register("oracle_single", output="score")(_factory(SingleStreamOracle))
oracle_dual = register("oracle_dual", output="score")(_factory(DualStreamOracle))
oracle_gossip = register("oracle_gossip", output="score")(_factory(GossipOracle))
