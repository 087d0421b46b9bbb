"""DACS's confidence-weighted pseudo-labels and mean teacher (Tranheden et al., WACV 2021, Sec. 3;
vikolss/DACS `trainUDA.py`).

* `confident_pseudo_labels`: the teacher's argmax as the target label, and one weight for all
  target pixels, the fraction of pixels whose max softmax probability is at least 0.968
  (`torch.sum(max_probs.ge(0.968)) / np.size(targets_u)`, over the whole batch; `ge`, so a
  probability of exactly 0.968 counts).
* `mix_pixel_weights`: the weights of a mixed label, 1 on the pasted source pixels (ground
  truth) and the pseudo-label weight elsewhere (DACS mixes `onesWeights` and `pixelWiseWeight`
  with the same mask).
* `ema_update`: the teacher's weights, theta' <- a theta' + (1 - a) theta with
  a = min(1 - 1 / (step + 1), 0.99) (`update_ema_variables`: the true average early on).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from segjax.ops._args import check_rank

DACS_CONFIDENCE_THRESHOLD = 0.968
DACS_EMA_DECAY = 0.99


def confident_pseudo_labels(teacher_logits: jax.Array, threshold: float = DACS_CONFIDENCE_THRESHOLD, *,
                            axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Pseudo-labels and their weight from the (EMA) teacher's logits on target images.

    Args:
      teacher_logits: [N, H, W, K]; no gradient flows back (the teacher is not trained by it).
      threshold: the confidence, 0.968 in DACS.
      axis_name: under pmap/shard_map, the data axis to sum the counts over (the weight is a
        fraction of the global batch, DESIGN's global normalisation).
    Returns:
      (labels [N, H, W] int32, weight float32 scalar in [0, 1]).
    """
    check_rank(teacher_logits, 4, "teacher_logits", "N, H, W, K")
    probs = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), axis=-1)
    labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    confident = jnp.sum(jnp.max(probs, axis=-1) >= threshold).astype(jnp.float32)
    total = jnp.float32(labels.size)
    if axis_name is not None:
        confident, total = jax.lax.psum((confident, total), axis_name)
    return labels, confident / total


def mix_pixel_weights(mask: jax.Array, weight: jax.Array) -> jax.Array:
    """[N, H, W] float32: 1 where the source was pasted (`mask`), `weight` on the target's pixels."""
    return jnp.where(mask, 1.0, jnp.asarray(weight, jnp.float32))


def ema_update(teacher, student, step, decay: float = DACS_EMA_DECAY):
    """The mean teacher's parameters after `step` (0-based) updates of the student, any pytree.

    a = min(1 - 1 / (step + 1), decay); returns a * teacher + (1 - a) * student leaf by leaf.
    """
    a = jnp.minimum(1.0 - 1.0 / (jnp.asarray(step, jnp.float32) + 1.0), decay)
    return jax.tree.map(lambda t, s: a * t + (1.0 - a) * s, teacher, student)
