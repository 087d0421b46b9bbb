"""ClassMix (Olsson et al., WACV 2021, "ClassMix: Segmentation-Based Data Augmentation for
Semi-Supervised Learning") across domains, as DACS uses it (Tranheden et al., WACV 2021, "DACS:
Domain Adaptation via Cross-domain Mixed Sampling", Sec. 3; vikolss/DACS `trainUDA.py` and
`utils/transformmasks.py`).

Half of the classes present in the SOURCE label are chosen at random; their source pixels are
pasted onto the target image, and the mixed label is the source label there and the target's
pseudo-label elsewhere.

* How many: DACS takes `int((n + n % 2) / 2)` of the n values present, ceil(n / 2), at least one
  class when one is present (ClassMix's own code takes floor(n / 2)).
* The ignore label: DACS draws from `torch.unique(labels)`, ignore label included (its line
  excluding it is commented out), so with `ignore_is_class=True` (the default, DACS) the ignore
  label counts as one of the n values and, when chosen, the source's ignored pixels are pasted
  with their ignore label (they stay out of the loss); `ignore_is_class=False` leaves them out
  of the draw (and of n), so the target shows through there.
* Label values outside [0, num_classes) and other than `ignore_label` are never chosen (the
  target shows through); a value check cannot run inside jit, so validate labels on the host.

Static shapes, stateless: the choice is a function of the key and the label only (jit-able,
vmap-able; `classmix_batch` folds each example's batch position into the key).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from segjax.ops._args import check_rank


def _slots(label: jax.Array, num_classes: int, ignore_label: int) -> jax.Array:
    """Class ids with the ignore label moved to slot `num_classes`; other outsiders to num_classes + 1."""
    label = label.astype(jnp.int32)
    inside = (label >= 0) & (label < num_classes)
    return jnp.where(label == ignore_label, num_classes, jnp.where(inside, label, num_classes + 1))


def select_classes(key: jax.Array, label: jax.Array, num_classes: int, *, ignore_label: int = 255,
                   ignore_is_class: bool = True) -> jax.Array:
    """Chooses ceil(n / 2) of the n values present in `label`, uniformly without replacement.

    Args:
      key: a PRNG key.
      label: [H, W] integer class ids in [0, num_classes) or `ignore_label`.
      num_classes: K.
      ignore_label: the label of unlabelled pixels.
      ignore_is_class: whether the ignore label is one of the values drawn from (DACS: yes).
    Returns:
      chosen [K + 1] bool: entry k < K for class k, entry K for the ignore label.
    """
    check_rank(label, 2, "label", "H, W")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    slots = _slots(label, num_classes, ignore_label).ravel()
    present = jnp.zeros(num_classes + 1, bool).at[slots].set(True, mode="drop")
    if not ignore_is_class:
        present = present.at[num_classes].set(False)
    n = jnp.sum(present)
    k = (n + n % 2) // 2
    scores = jnp.where(present, jax.random.uniform(key, (num_classes + 1,)), 2.0)
    rank = jnp.argsort(jnp.argsort(scores))
    return present & (rank < k)


def class_mask(label: jax.Array, chosen: jax.Array, *, ignore_label: int = 255) -> jax.Array:
    """[H, W] bool: the pixels whose value is chosen (`chosen` [K + 1] as `select_classes`)."""
    num_classes = chosen.shape[0] - 1
    return jnp.take(chosen, _slots(label, num_classes, ignore_label), mode="fill", fill_value=False)


def classmix(key: jax.Array, source_image: jax.Array, source_label: jax.Array, target_image: jax.Array,
             target_label: jax.Array, *, num_classes: int, ignore_label: int = 255,
             ignore_is_class: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pastes the pixels of half the source's classes onto the target (one example).

    Args:
      key: a PRNG key.
      source_image, target_image: [H, W, C].
      source_label: [H, W] the source's ground truth (the classes are drawn from it).
      target_label: [H, W] the target's pseudo-label.
      num_classes, ignore_label, ignore_is_class: as `select_classes`.
    Returns:
      (image [H, W, C], label [H, W], mask [H, W] bool): mask is True where the source was pasted;
      image = mask ? source : target, label likewise.
    """
    check_rank(source_image, 3, "source_image", "H, W, C")
    if source_image.shape != target_image.shape or source_label.shape != target_label.shape \
            or source_label.shape != source_image.shape[:2]:
        raise ValueError(f"images must agree in shape and labels must match them in H, W, got "
                         f"{source_image.shape}, {source_label.shape}, {target_image.shape}, "
                         f"{target_label.shape}")
    chosen = select_classes(key, source_label, num_classes, ignore_label=ignore_label,
                            ignore_is_class=ignore_is_class)
    mask = class_mask(source_label, chosen, ignore_label=ignore_label)
    image = jnp.where(mask[..., None], source_image, target_image)
    label = jnp.where(mask, source_label, target_label.astype(source_label.dtype))
    return image, label, mask


def classmix_batch(key: jax.Array, source_images: jax.Array, source_labels: jax.Array,
                   target_images: jax.Array, target_labels: jax.Array, *, num_classes: int,
                   ignore_label: int = 255, ignore_is_class: bool = True
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`classmix` over a batch ([N, H, W, C] images, [N, H, W] labels), pairing example i of each.

    Example i uses `jax.random.fold_in(key, i)`: call it on the global batch (jit over a mesh),
    so the mix does not depend on the device count. Returns ([N, H, W, C], [N, H, W], [N, H, W]).
    """
    check_rank(source_images, 4, "source_images", "N, H, W, C")
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(source_images.shape[0]))
    mix = lambda k, si, sl, ti, tl: classmix(k, si, sl, ti, tl, num_classes=num_classes,
                                             ignore_label=ignore_label, ignore_is_class=ignore_is_class)
    return jax.vmap(mix)(keys, source_images, source_labels, target_images, target_labels)
