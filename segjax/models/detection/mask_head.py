"""The ROI heads' mask branch (torchvision's mask_rcnn.py and roi_heads.py mask parts), NHWC.

* `MaskHead`: four 3x3 convs + ReLU (`mask_fcn1..4`, torchvision's `mask_head.{0..3}.0`).
* `MaskPredictor`: 2x2 stride-2 transposed conv + ReLU (`conv5_mask`), 1x1 conv to K
  (`mask_fcn_logits`): 14x14 pooled features -> 28x28 mask logits per class.
* `mask_targets`: `project_masks_on_boxes` — each ROI's matched ground-truth mask ROI-Aligned to
  28 x 28 (torchvision's adaptive sampling, `segjax.ops.roi_align.roi_align_weights`).
* `mask_losses` / `chunked_mask_losses`: `loss_mask` of the training ROIs, the latter running
  the head on the positives only, in geometrically growing chunks (`mask_chunks`).
* `mask_probs`: inference, the sigmoid of each detection's class mask (`maskrcnn_inference`).

Initialisation as torchvision: mask convs kaiming-normal fan_out with zero bias, the transposed
conv and the logits conv kaiming-normal fan_out with torch's default bias.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segjax.losses import detection as loss_lib
from segjax.models.backbones.resnet import conv_kernel_init
from segjax.models.detection.poolers import multiscale_roi_align_table
from segjax.models.detection.roi_heads import torch_default_bias_init
from segjax.models.layers import ConvTranspose, square_conv
from segjax.ops.roi_align import roi_align_weights

MASK_POOL_SIZE = 14  # the pooled ROI features [14, 14, C]
MASK_SIZE = 2 * MASK_POOL_SIZE  # the predictor's transposed conv doubles them: 28 x 28 logits


class MaskHead(nn.Module):
    """3x3 conv + ReLU stack over [K, 14, 14, C] (torchvision's MaskRCNNHeads, dilation 1)."""

    layers: Sequence[int] = (256, 256, 256, 256)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        for i, features in enumerate(self.layers):
            x = nn.relu(square_conv(features, 3, use_bias=True, dtype=self.dtype, kernel_init=conv_kernel_init,
                                    name=f"mask_fcn{i + 1}")(x))
        return x


class MaskPredictor(nn.Module):
    """[K, 14, 14, C] -> mask logits [K, 28, 28, num_classes] (float32)."""

    num_classes: int
    dim_reduced: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ConvTranspose(self.dim_reduced, 2, stride=2, dtype=self.dtype, kernel_init=conv_kernel_init,
                          bias_init=torch_default_bias_init(self.dim_reduced * 4), name="conv5_mask")(x)
        x = nn.relu(x)
        x = square_conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, kernel_init=conv_kernel_init,
                        name="mask_fcn_logits")(x)
        return x.astype(jnp.float32)


def mask_targets(gt_masks: jax.Array, boxes: jax.Array, matched: jax.Array, size: int = MASK_SIZE) -> jax.Array:
    """Mask targets [P, size, size] float32: gt mask `matched[p]` ROI-Aligned on box p.

    Equal to torchvision's `project_masks_on_boxes(gt_masks, boxes, matched, size)`, i.e.
    `roi_align(gt_masks[:, None], [matched, boxes], (size, size), 1.0)` with `aligned=False`
    and the adaptive sampling ratio `ceil(box extent / size)` per box and axis (capped at
    `ceil(max(H, W) / size)`, which any box inside the image satisfies). The averaged bilinear
    weights of each box are separable, so a target is `Wy @ mask @ Wx^T`; boxes are processed
    sequentially in groups (`lax.map`) so no [P, H, W] copy of the masks is made.

    Args:
      gt_masks: [M, H, W] binary (or soft) masks, any real or bool dtype.
      boxes: [P, 4] proposals in mask pixels; matched: [P] int indices into gt_masks.
    """
    m, h, w = gt_masks.shape
    max_grid = -(-max(h, w) // size)
    wy = roi_align_weights(boxes[:, 1], boxes[:, 3], size, h, sampling_ratio=0, max_grid=max_grid)
    wx = roi_align_weights(boxes[:, 0], boxes[:, 2], size, w, sampling_ratio=0, max_grid=max_grid)

    def one(args):
        a, b, idx = args
        mask = gt_masks[idx].astype(jnp.float32)
        return jnp.einsum("ph,hw,qw->pq", a, mask, b, precision=lax.Precision.HIGHEST)

    return lax.map(one, (wy, wx, matched.astype(jnp.int32)), batch_size=16)


def mask_losses(logits: jax.Array, masks: jax.Array, boxes: jax.Array, positive: jax.Array, labels: jax.Array,
                matched: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
    """`loss_mask` (sum [N], count [N]) from the logits [N, Q, 28, 28, K] of every mask slot.

    Args:
      masks: [N, M, H, W] ground-truth masks; boxes: [N, Q, 4] the slots' ROIs; positive: bool
      [N, Q]; labels: int [N, Q] (class); matched: int [N, Q] (ground-truth index).
    """
    size = logits.shape[2]
    targets = jax.vmap(lambda mk, b, j: mask_targets(mk, b, j, size))(masks, boxes, matched)
    return jax.vmap(loss_lib.mask_loss)(logits, labels, targets, positive)


def mask_chunks(total: int, first: int) -> list[tuple[int, int]]:
    """(start, length) of the mask head's chunks over `total` slots: first, first, 2 first, 4 first,
    ... (the last one cut at `total`), so the chunks up to the one holding slot P - 1 span at most
    max(first, 2P) slots."""
    if not isinstance(first, int) or first < 1:
        raise ValueError(f"mask_chunk must be a positive int or None, got {first!r}")
    out, start, length = [], 0, first
    while start < total:
        out.append((start, min(length, total - start)))
        start += length
        length = start  # each chunk as long as all before it: the boundaries double
    return out


def chunked_mask_losses(logits_fn: Callable[[jax.Array], jax.Array], table: jax.Array,
                        geometry: Sequence[tuple[int, int]], masks: jax.Array, boxes: jax.Array,
                        positive: jax.Array, labels: jax.Array, matched: jax.Array, *, chunk: int,
                        scales: Sequence[float], pooler: Callable[..., jax.Array] | None = None
                        ) -> dict[str, tuple[jax.Array, jax.Array]]:
    """`mask_losses` running pooling, targets and the head on the positive slots only.

    The N * Q slots are ordered positives first over the whole batch and cut into chunks of c,
    c, 2c, 4c, ... slots (`mask_chunks`, c = `chunk`), each run under `lax.cond` on holding a
    positive: a chunk without one contributes exactly zero loss and gradient, so skipping it
    changes nothing but the time, and P positives cost at most max(c, 2P) slots (torchvision
    runs the head on the positives only; with static shapes this is the nearest equivalent).

    Args:
      logits_fn: pure map of pooled features [k, 14, 14, C] to mask logits [k, 28, 28, K]
        (the head and predictor applied with their parameters).
      table, geometry: the batch's pyramid (`segjax.ops.roi_align.pyramid_table`, `pyramid_geometry`).
      masks, boxes, positive, labels, matched: as `mask_losses`. scales: the pyramid's levels' scales.
      pooler: `f(table, geometry, boxes [k, 4], image_index [k], output_size)` -> the head's input
        (default: each box at its FPN level, `multiscale_roi_align_table` at `scales`; PANet pools
        every level).
    Returns:
      {"loss_mask": (sum [N], count [N])}, equal to `mask_losses` (tested).
    """
    n, q = positive.shape
    count = jnp.sum(positive, axis=1, dtype=jnp.int32) * (MASK_SIZE * MASK_SIZE)
    total, m = n * q, masks.shape[1]
    order = jnp.argsort(~positive.reshape(total), stable=True)  # positives first
    image = (order // q).astype(jnp.int32)
    take = lambda x: x.reshape(total, *x.shape[2:])[order]  # noqa: E731
    boxes_s, labels_s, pos_s = take(boxes), take(labels), take(positive)
    gt_index = image * m + take(matched)  # into the batch's masks [N * M, H, W]
    flat_masks = masks.reshape(n * m, *masks.shape[2:])
    pool = pooler or functools.partial(multiscale_roi_align_table, scales=scales)

    def chunk_bce(table, b, img, lab, j, pos):
        pooled = pool(table, geometry, b, img, MASK_POOL_SIZE)
        tgt = mask_targets(flat_masks, b, j, MASK_SIZE)
        return loss_lib.mask_bce_per_slot(logits_fn(pooled), lab, tgt, pos)

    sums = []
    for start, length in mask_chunks(total, chunk):
        sl = slice(start, start + length)
        args = (table, boxes_s[sl], image[sl], labels_s[sl], gt_index[sl], pos_s[sl])
        sums.append(lax.cond(jnp.any(pos_s[sl]), chunk_bce,
                             lambda *a, length=length: jnp.zeros((length,), jnp.float32), *args))
    per_slot = jnp.zeros((total,), jnp.float32).at[order].set(jnp.concatenate(sums)).reshape(n, q)
    return {"loss_mask": (jnp.sum(per_slot, axis=1), count)}


def mask_probs(logits: jax.Array, classes: jax.Array, valid: jax.Array) -> jax.Array:
    """[N, D, 28, 28]: sigmoid of each detection's class logits [N, D, 28, 28, K] (0 where not `valid`)."""
    probs = jax.nn.sigmoid(jnp.take_along_axis(logits, classes[:, :, None, None, None], axis=-1)[..., 0])
    return jnp.where(valid[:, :, None, None], probs, 0.0)


__all__ = ["MASK_POOL_SIZE", "MASK_SIZE", "MaskHead", "MaskPredictor", "chunked_mask_losses", "mask_chunks",
           "mask_losses", "mask_probs", "mask_targets"]
