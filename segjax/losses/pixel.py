"""Per-pixel classification losses as `(sum, count)` pairs, registered in `segjax.losses.LOSSES`.

The names `config.loss.kind` selects: "ce" (`cross_entropy`), "focal" (`focal_loss`), "dice"
(`dice_loss`), "lovasz" (`lovasz_softmax`), "ohem" (`ohem_cross_entropy`, which ranks pixels over
the whole batch: registered with `gathers=True`).

Every loss returns the sum of its per-element terms and the normaliser it should be divided by
(scenic style). Under data parallelism the caller adds up both over devices before dividing, so a
sharded batch is normalised globally: a mean of per-device means is wrong whenever ignored
pixels are spread unevenly over the devices.

Shapes: `logits` [N, H, W, K] (any leading dims work: [..., K]), `labels` [N, H, W] integer class
ids with `ignore_label` for pixels that do not count. `valid_mask` (optional, bool) is [N] (whole
images, e.g. padding examples of an eval batch) or the labels' shape.

What the pair means per loss:
  cross_entropy, focal_loss, ohem_cross_entropy: sum over counted pixels; count = number of
    counted pixels (or the sum of their class weights, as in `torch.nn.functional.cross_entropy`).
  dice_loss, lovasz_softmax: these are not sums over pixels; they are computed per image and the
    pair is (sum over images of the per-image loss, number of images with a counted pixel).
Where nothing counts (every pixel ignored or masked, or an empty batch, N = 0) every loss gives
(0, 0) with a zero gradient, so the global `sum / max(count, 1)` is 0.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from segjax.losses.registry import Pair, register


def _check(logits: jax.Array, labels: jax.Array) -> None:
    if logits.ndim < 2 or tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(
            f"logits shape {tuple(logits.shape)} must be labels shape {tuple(labels.shape)} + "
            "[num_classes] (resize logits to the label size first)"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")


def valid_pixels(labels: jax.Array, ignore_label: int, valid_mask: jax.Array | None = None) -> jax.Array:
    """Bool mask (labels' shape) of pixels that count: not `ignore_label` and inside `valid_mask`.

    `valid_mask` is None, bool [N] (per image) or bool with the labels' shape.
    """
    valid = labels != ignore_label
    if valid_mask is not None:
        valid_mask = jnp.asarray(valid_mask, bool)
        if valid_mask.ndim == 1 and labels.ndim > 1:
            if valid_mask.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"valid_mask shape {tuple(valid_mask.shape)} does not match the batch size of "
                    f"labels {tuple(labels.shape)}"
                )
            valid_mask = valid_mask.reshape(valid_mask.shape + (1,) * (labels.ndim - 1))
        elif valid_mask.shape != labels.shape:
            raise ValueError(
                f"valid_mask shape {tuple(valid_mask.shape)} must be [N] or the labels shape "
                f"{tuple(labels.shape)}"
            )
        valid = valid & valid_mask
    return valid


def _log_probs_and_targets(logits, labels, ignore_label, valid_mask):
    _check(logits, labels)
    valid = valid_pixels(labels, ignore_label, valid_mask)
    num_classes = logits.shape[-1]
    safe = jnp.where(valid, labels, 0)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32)
    return log_p, onehot, safe, valid


def _pixel_weights(class_weights, safe, valid):
    if class_weights is None:
        return valid.astype(jnp.float32)
    w = jnp.asarray(class_weights, jnp.float32)
    return jnp.where(valid, w[safe], 0.0)


@register("ce")
def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_label: int,
    class_weights: jax.Array | None = None,
    label_smoothing: float = 0.0,
    valid_mask: jax.Array | None = None,
) -> Pair:
    """Softmax cross-entropy as (sum, count), matching `torch.nn.functional.cross_entropy`.

    `sum / count` equals torch's `reduction="mean"` with `ignore_index=ignore_label`,
    `weight=class_weights` ([K]; count = sum of the weights of the counted pixels' classes) and
    `label_smoothing` (eps: the target is (1 - eps) one-hot + eps / K uniform; with weights the
    uniform part is weighted per class, as torch does). An all-ignored batch gives (0, 0).
    """
    if class_weights is not None and np.shape(class_weights) != (logits.shape[-1],):
        raise ValueError(
            f"class_weights shape {np.shape(class_weights)} must be [num_classes={logits.shape[-1]}]"
        )
    log_p, onehot, safe, valid = _log_probs_and_targets(logits, labels, ignore_label, valid_mask)
    pixel_w = _pixel_weights(class_weights, safe, valid)
    nll = -jnp.sum(log_p * onehot, axis=-1)
    per_pixel = pixel_w * nll
    if label_smoothing:
        k = logits.shape[-1]
        cw = jnp.ones((k,), jnp.float32) if class_weights is None else jnp.asarray(class_weights, jnp.float32)
        smooth = -jnp.sum(log_p * cw, axis=-1) / k
        per_pixel = (1.0 - label_smoothing) * per_pixel + label_smoothing * jnp.where(valid, smooth, 0.0)
    return jnp.sum(per_pixel), jnp.sum(pixel_w)


@register("focal")
def focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_label: int,
    gamma: float = 2.0,
    class_weights: jax.Array | None = None,
    valid_mask: jax.Array | None = None,
) -> Pair:
    """Focal loss (Lin et al. 2017), multi-class softmax form, as (sum, count).

    Per pixel `-w_y (1 - p_y)^gamma log p_y` with p = softmax(logits); count as in
    `cross_entropy` (number of counted pixels, or the sum of their class weights). gamma=0 is
    cross-entropy.
    """
    if gamma < 0:
        raise ValueError(f"focal_loss needs gamma >= 0, got {gamma}")
    log_p, onehot, safe, valid = _log_probs_and_targets(logits, labels, ignore_label, valid_mask)
    pixel_w = _pixel_weights(class_weights, safe, valid)
    log_py = jnp.sum(log_p * onehot, axis=-1)
    # 1 - p computed as -expm1(log p): exact where p is close to 1, and exactly 0 where p rounds
    # to 1. There the derivative of base**gamma is infinite for gamma < 1 (and inf * 0 = NaN
    # in the chain rule), so the power only sees positive bases and the modulator is the
    # constant 0 (gamma > 0) or 1 (gamma = 0) at base 0: a finite, exactly zero gradient.
    base = -jnp.expm1(log_py)
    positive = base > 0
    powered = jnp.power(jnp.where(positive, base, 1.0), gamma)
    modulator = jnp.where(positive, powered, 1.0 if gamma == 0 else 0.0)
    return jnp.sum(-pixel_w * modulator * log_py), jnp.sum(pixel_w)


@register("dice")
def dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_label: int,
    smooth: float = 1.0,
    valid_mask: jax.Array | None = None,
) -> Pair:
    """Softmax Dice loss per image, as (sum over images, number of images with counted pixels).

    For image n and class k over its counted pixels, with p = softmax(logits), g = one-hot labels:
      dice_nk = (2 sum p g + smooth) / (sum p + sum g + smooth),   loss_n = 1 - mean_k dice_nk.
    Images without counted pixels contribute nothing. (Written out because
    `optax.losses.dice_loss(apply_softmax=False)` checks values and fails under jit.)
    """
    log_p, onehot, _, valid = _log_probs_and_targets(logits, labels, ignore_label, valid_mask)
    if labels.ndim < 1:
        raise ValueError("dice_loss needs a leading batch dimension in labels")
    v = valid[..., None].astype(jnp.float32)
    p = jnp.exp(log_p) * v
    g = onehot * v
    axes = tuple(range(1, labels.ndim))
    inter = jnp.sum(p * g, axis=axes)  # [N, K]
    card = jnp.sum(p, axis=axes) + jnp.sum(g, axis=axes)
    dice = (2.0 * inter + smooth) / (card + smooth)
    image_has_pixels = jnp.any(valid.reshape(valid.shape[0], int(np.prod(valid.shape[1:]))), axis=1)
    per_image = jnp.where(image_has_pixels, 1.0 - jnp.mean(dice, axis=-1), 0.0)
    return jnp.sum(per_image), jnp.sum(image_has_pixels.astype(jnp.float32))


def _lovasz_grad(fg_sorted: jax.Array) -> jax.Array:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors ([P])."""
    gts = jnp.sum(fg_sorted)
    intersection = gts - jnp.cumsum(fg_sorted)
    union = gts + jnp.cumsum(1.0 - fg_sorted)
    jaccard = 1.0 - intersection / union
    return jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _lovasz_image(probs: jax.Array, labels: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Lovász-softmax of one image ([P, K], [P], [P]) over its present classes -> (loss, has_any)."""
    k = probs.shape[-1]

    def per_class(c):
        fg = ((labels == c) & valid).astype(jnp.float32)
        errors = jnp.abs(fg - probs[:, c])
        # Uncounted pixels sort last (key -1 < any error) and add zero: the prefix sums that
        # define the gradient of the counted pixels are unchanged.
        keys = jnp.where(valid, errors, -1.0)
        order = jnp.argsort(-jax.lax.stop_gradient(keys))
        grad = jax.lax.stop_gradient(_lovasz_grad(fg[order]))
        loss = jnp.sum(jnp.where(valid, errors, 0.0)[order] * grad)
        return loss, jnp.sum(fg) > 0

    losses, present = jax.vmap(per_class)(jnp.arange(k))
    n_present = jnp.sum(present)
    loss = jnp.sum(jnp.where(present, losses, 0.0)) / jnp.maximum(n_present, 1)
    return loss, n_present > 0


@register("lovasz")
def lovasz_softmax(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_label: int,
    valid_mask: jax.Array | None = None,
) -> Pair:
    """Lovász-softmax loss (Berman et al. 2018), per image over the classes present in it.

    For each image and each class c present in its counted labels: errors e_i = |[y_i = c] -
    p_ic|, sorted decreasingly, dotted with the gradient of the Lovász extension of the Jaccard
    loss; the image's loss is the mean over its present classes. Returns (sum over images, number
    of images with a counted pixel).
    """
    _check(logits, labels)
    valid = valid_pixels(labels, ignore_label, valid_mask)
    n, k = labels.shape[0], logits.shape[-1]
    p = int(np.prod(labels.shape[1:]))  # not -1: an empty batch (n = 0) has no size to infer
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(n, p, k)
    losses, has_any = jax.vmap(_lovasz_image)(probs, labels.reshape(n, p), valid.reshape(n, p))
    return jnp.sum(jnp.where(has_any, losses, 0.0)), jnp.sum(has_any.astype(jnp.float32))


@register("ohem", gathers=True)
def ohem_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_label: int,
    thresh: float | None = 0.7,
    top_k: float | None = None,
    min_kept: int = 0,
    valid_mask: jax.Array | None = None,
    gather: Callable[[jax.Array], jax.Array] | None = None,
) -> Pair:
    """Online hard example mining cross-entropy as (sum, count) over the selected pixels.

    Two selection rules (exactly one of `thresh`/`top_k` is used; `top_k` wins when given), over
    the counted pixels of the whole batch, with `min_kept` counted per image as in
    mmsegmentation's `OHEMPixelSampler` (the batch keeps at least `min_kept * N` pixels):
      thresh: keep pixels whose probability of the true class is below max(thresh, the
        (min_kept * N + 1)-th smallest such probability) - PSPNet's / mmseg's rule.
      top_k: keep the pixels whose loss is at least the k-th largest, k = max(ceil(top_k *
        n_counted), min(min_kept * N, n_counted)) ("bootstrapped" CE), top_k in (0, 1]; pixels
        tied with the k-th are all kept.
    `gather` (e.g. `StepContext.all_gather`) maps this device's per-image arrays to the global
    batch's, so that under data parallelism the thresholds are those of the global batch and
    1 or N devices select the same pixels; None means this call sees the whole batch. Selection
    is not differentiated; count = pixels kept (of this call's share).
    """
    gather = gather or (lambda x: x)
    log_p, onehot, _, valid = _log_probs_and_targets(logits, labels, ignore_label, valid_mask)
    nll = -jnp.sum(log_p * onehot, axis=-1)
    sg_nll = jax.lax.stop_gradient(nll)
    all_nll = gather(jnp.where(valid, sg_nll, -jnp.inf)).reshape(-1)  # the global batch
    n_images = all_nll.shape[0] // max(1, int(np.prod(nll.shape[1:])))
    if all_nll.shape[0] == 0:  # an empty batch (static): nothing to rank or keep
        return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.float32(0.0)
    n_valid = jnp.sum(all_nll > -jnp.inf)
    batch_kept = min_kept * n_images
    if top_k is not None:
        if not 0.0 < top_k <= 1.0:
            raise ValueError(f"top_k must be a fraction in (0, 1], got {top_k}")
        k = jnp.maximum(jnp.ceil(top_k * n_valid).astype(jnp.int32),
                        jnp.minimum(batch_kept, n_valid))
        ranked = jnp.sort(all_nll)[::-1]  # hardest first; uncounted pixels (-inf) last
        kth = ranked[jnp.clip(k - 1, 0, ranked.shape[0] - 1)]
        keep = valid & (sg_nll >= kth) & (k > 0)
    elif thresh is not None:
        prob = jnp.exp(-sg_nll)
        sorted_prob = jnp.sort(jnp.exp(-all_nll))  # uncounted pixels: exp(inf) = inf, last
        idx = jnp.clip(jnp.minimum(batch_kept, n_valid - 1), 0, None)
        min_threshold = jnp.where(n_valid > 0, sorted_prob[idx], 0.0)
        threshold = jnp.maximum(min_threshold, thresh)
        keep = valid & (prob < threshold)
    else:
        raise ValueError("ohem_cross_entropy needs thresh or top_k")
    return jnp.sum(jnp.where(keep, nll, 0.0)), jnp.sum(keep.astype(jnp.float32))

