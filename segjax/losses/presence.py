"""Image-level class presence and EncNet's SE-loss (Zhang et al. 2018) as a `(sum, count)` pair.

The SE-loss asks a per-image head to predict which classes appear in the image: binary
cross-entropy between `se_logits` [N, K] and the presence vector of the label map. Presence is
mmsegmentation's / PyTorch-Encoding's `torch.histc(label, bins=K, min=0, max=K-1) > 0`: ids in
[0, K) count, the ignore label (and anything else outside [0, K)) does not. Their mean over the
N x K entries is the authors' loss; the pair is (sum over entries, N * K).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from segjax.losses.registry import Pair


def class_presence(labels: jax.Array, num_classes: int) -> jax.Array:
    """float32 [N, K]: 1 where class k occurs in image n's label map (`labels` [N, ...] integer).

    Ids outside [0, num_classes) (the ignore label) are not counted; an all-ignored image gives
    a zero row.
    """
    n = labels.shape[0]
    flat = labels.reshape(n, -1)
    bins = jnp.where((flat >= 0) & (flat < num_classes), flat, num_classes)  # K: the dump bin
    hit = jnp.zeros((n, num_classes + 1), jnp.float32).at[jnp.arange(n)[:, None], bins].set(1.0)
    return hit[:, :num_classes]


def se_loss(se_logits: jax.Array, labels: jax.Array, *, num_classes: int | None = None) -> Pair:
    """Binary cross-entropy of `se_logits` [N, K] against `class_presence(labels, K)`.

    Returns `(sum over the N * K entries, N * K)` (float32); `num_classes` defaults to K.
    Computed stably from the logits: max(z, 0) - z y + log(1 + exp(-|z|)).
    """
    k = se_logits.shape[-1] if num_classes is None else num_classes
    if se_logits.ndim != 2 or se_logits.shape != (labels.shape[0], k):
        raise ValueError(f"se_logits shape {tuple(se_logits.shape)} must be [N, num_classes] = "
                         f"{(labels.shape[0], k)} for labels {tuple(labels.shape)}")
    z = se_logits.astype(jnp.float32)
    y = class_presence(labels, k)
    terms = jnp.maximum(z, 0.0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
    return jnp.sum(terms), jnp.asarray(z.size, jnp.float32)
