"""The patch classifier of the first lecture deck, and its shared-computation FCN twin.

Before fully convolutional networks, a pixel was labelled by a CNN that classified the patch
around it (Farabet, Couprie, Najman, LeCun, PAMI 2013: a 3-stage network on 46 x 46 patches;
Pinheiro & Collobert, ICML 2014), applied by sliding a window over every pixel. The deck's two
objections: no context beyond the patch ("impossible without context") and waste: neighbouring
patches overlap almost entirely, and each one recomputes the same features.

`PatchClassifier` holds one set of weights and applies it both ways:

* `classify_patches(images)`: the sliding window, literally. Every pixel's P x P patch (the image
  zero-padded by P // 2 before and P - 1 - P // 2 after, so pixel (y, x) is at (P // 2, P // 2)
  of its patch) is cut out and classified on its own: valid convolutions, 2 x 2 max pooling at
  stride 2, a last "fully connected" convolution whose kernel covers the remaining F x F map, a
  ReLU and a linear classifier.
* `__call__(images)`: the same function at every pixel at once, as one network over the whole
  image (Giusti et al. 2013's max-pooling fragments; the "shift-and-stitch" equivalence of Long
  et al. 2015): stride-1 pooling whose window is dilated by the product of the earlier strides,
  and every later convolution dilated likewise. Each intermediate value is computed once and
  shared by all the patches that contain it. The outputs equal `classify_patches` exactly (up to
  float summation order), gradients included.

Defaults are Farabet et al.'s single-scale network: 7 x 7 convolutions with 16, 64 and 256
filters and two 2 x 2 poolings, so a patch is 46 x 46 (46 = 2 (2 * 7 + 6) + 6: `patch_size`).
Registered as `patch_classifier` (dense output, the semantic task's contract).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax import ops
from segjax.models.outputs import LOGITS
from segjax.models.registry import register


def _dilated_max_pool2(x: jax.Array, d: int) -> jax.Array:
    """2 x 2 max pooling at stride 1 whose window taps are `d` apart: [N, H - d, W - d, C]."""
    h, w = x.shape[1] - d, x.shape[2] - d
    return jnp.maximum(jnp.maximum(x[:, :h, :w], x[:, :h, d:d + w]),
                       jnp.maximum(x[:, d:d + h, :w], x[:, d:d + h, d:d + w]))


class PatchClassifier(nn.Module):
    """Conv (valid) + ReLU + 2x2/2 max pool per stage in `features[:-1]`, then a convolution over
    the remaining map (`features[-1]` channels, the "fully connected" layer) + ReLU and a linear
    classifier; see the module docstring for the two ways of applying it."""

    num_classes: int
    features: Sequence[int] = (16, 64, 256)
    kernel: int = 7
    dtype: Any = jnp.float32
    in_channels: int = 3
    chunk: int = 64  # patches classified per step by `classify_patches` (memory bound)
    axis_name: str | None = None  # the trainer's pmap axis; no BatchNorm here to synchronise

    @property
    def patch_size(self) -> int:
        """P: the input size at which the last convolution's output is 1 x 1."""
        size = self.kernel  # the last conv covers `kernel` x `kernel` of the final map
        for _ in self.features[:-1]:
            size = 2 * size + self.kernel - 1  # undo a 2x2/2 pool, then a valid conv
        return size

    def setup(self):
        if len(self.features) < 1 or self.kernel < 1:
            raise ValueError(f"PatchClassifier needs features and kernel >= 1, got {self.features}, {self.kernel}")
        chans = (self.in_channels, *self.features)
        init = nn.initializers.lecun_normal()
        self.kernels = [self.param(f"conv{i}_kernel", init, (self.kernel, self.kernel, cin, cout))
                        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:]))]
        self.biases = [self.param(f"conv{i}_bias", nn.initializers.zeros, (cout,))
                       for i, cout in enumerate(self.features)]
        self.classifier = self.param("classifier_kernel", init, (self.features[-1], self.num_classes))
        self.classifier_bias = self.param("classifier_bias", nn.initializers.zeros, (self.num_classes,))

    def _check(self, images):
        if images.ndim != 4 or images.shape[-1] != self.in_channels:
            raise ValueError(f"PatchClassifier needs images [N, H, W, {self.in_channels}], got {images.shape}")

    def _padded(self, images):
        p = self.patch_size
        lo, hi = p // 2, p - 1 - p // 2
        return jnp.pad(images.astype(self.dtype), ((0, 0), (lo, hi), (lo, hi), (0, 0)))

    def _classify(self, logits_in):
        w = self.classifier.astype(self.dtype)
        return (logits_in @ w + self.classifier_bias.astype(self.dtype)).astype(jnp.float32)

    def classify_one(self, patches: jax.Array) -> jax.Array:
        """Logits [B, K] of patches [B, P, P, C], each on its own (the patch network)."""
        x = patches.astype(self.dtype)
        for i, (k, b) in enumerate(zip(self.kernels, self.biases)):
            x = nn.relu(ops.conv2d(x, k.astype(self.dtype), padding="VALID") + b.astype(self.dtype))
            if i < len(self.kernels) - 1:
                x = ops.max_pool(x, 2, 2)
        return self._classify(x[:, 0, 0])

    def classify_patches(self, images: jax.Array) -> dict[str, jax.Array]:
        """The sliding window: every pixel's patch cut out and classified, `chunk` at a time."""
        self._check(images)
        n, h, w, c = images.shape
        p = self.patch_size
        padded = self._padded(images)
        ys, xs = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
        where = jnp.stack([jnp.repeat(jnp.arange(n), h * w), jnp.tile(ys.ravel(), n), jnp.tile(xs.ravel(), n)], 1)
        total = where.shape[0]
        steps = -(-total // self.chunk)
        where = jnp.pad(where, ((0, steps * self.chunk - total), (0, 0)))

        def cut(ixy):
            return jax.lax.dynamic_slice(padded, (ixy[0], ixy[1], ixy[2], 0), (1, p, p, c))[0]

        def step(block):
            return self.classify_one(jax.vmap(cut)(block))

        logits = jax.lax.map(step, where.reshape(steps, self.chunk, 3)).reshape(-1, self.num_classes)
        return {LOGITS: logits[:total].reshape(n, h, w, self.num_classes)}

    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """The same classifier at every pixel as one fully convolutional pass (shared features)."""
        self._check(images)
        x, d = self._padded(images), 1
        for i, (k, b) in enumerate(zip(self.kernels, self.biases)):
            x = nn.relu(ops.conv2d(x, k.astype(self.dtype), padding="VALID", dilation=d) + b.astype(self.dtype))
            if i < len(self.kernels) - 1:
                x = _dilated_max_pool2(x, d)
                d *= 2
        return {LOGITS: self._classify(x)}


@register("patch_classifier")
def patch_classifier(*, num_classes: int, features: Sequence[int] = (16, 64, 256), kernel: int = 7,
                     dtype: Any = jnp.float32, in_channels: int = 3, chunk: int = 64,
                     axis_name: str | None = None) -> PatchClassifier:
    """Farabet et al.'s patch classifier (`PatchClassifier`): `features`, `kernel`, `chunk`.
    `axis_name` is accepted as every model's; the network has no BatchNorm to synchronise."""
    return PatchClassifier(num_classes=num_classes, features=tuple(features), kernel=kernel, dtype=dtype,
                           in_channels=in_channels, chunk=chunk, axis_name=axis_name)
