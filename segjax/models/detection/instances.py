"""The instance models' contract (Mask R-CNN, TensorMask, PANet): output keys and ground-truth targets.

Outputs (inference): `boxes` [N, D, 4] (x1, y1, x2, y2, input pixels), `scores` [N, D], `classes`
int32 [N, D] (1..K-1), `num_detections` int32 [N] (valid slots first), `mask_probs` [N, D, 28, 28];
optionally `mask_boxes` [N, D, 4], the frame each mask lives in (TensorMask: its window) where it
is not the detection box.

Targets (training): `{"boxes": [N, M, 4] float (input pixels), "classes": [N, M] int (1..K-1; 0
marks a padding slot), "masks": [N, M, H, W] binary full-image masks (any real/bool/uint8 dtype,
H, W of the images), "num_instances": [N] int}`; M is static, slot j of image i is ground truth
iff `j < num_instances[i]` and `classes[i, j] > 0` (`gt_valid`). A ground-truth box must have
finite coordinates and positive width and height (x2 > x1, y2 > y1; torchvision's rule):
`check_targets` rejects a degenerate one by image index and slot when the targets are concrete
(not traced), and under `jit` the models treat it as a padding slot (never matched), so every
loss and gradient stays finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from segjax.ops.boxes import proper_boxes

BOXES, SCORES, CLASSES, NUM_DETECTIONS, MASK_PROBS = "boxes", "scores", "classes", "num_detections", "mask_probs"
MASK_BOXES = "mask_boxes"
TARGET_KEYS = ("boxes", "classes", "masks", "num_instances")


def check_targets(targets, image_shape):
    """Validated targets: (boxes float32 [N, M, 4], classes int32 [N, M], masks [N, M, H, W],
    num_instances int32 [N]); ValueError naming the key for a missing key or a wrong shape, and,
    when the targets are concrete (not traced under `jit`), naming the image index, slot and box
    of a degenerate ground-truth box (`check_boxes`)."""
    if not isinstance(targets, dict) or any(k not in targets for k in TARGET_KEYS):
        got = sorted(targets) if isinstance(targets, dict) else type(targets).__name__
        raise ValueError(f"Mask R-CNN targets must be a dict with keys {TARGET_KEYS}, got {got}")
    n, h, w = image_shape[0], image_shape[1], image_shape[2]
    boxes, classes = jnp.asarray(targets["boxes"], jnp.float32), jnp.asarray(targets["classes"])
    masks, num = jnp.asarray(targets["masks"]), jnp.asarray(targets["num_instances"])
    m = classes.shape[-1] if classes.ndim == 2 else None
    expected = {"boxes": (n, m, 4), "classes": (n, m), "masks": (n, m, h, w), "num_instances": (n,)}
    for key, arr in zip(TARGET_KEYS, (boxes, classes, masks, num)):
        if tuple(arr.shape) != expected[key]:
            raise ValueError(f"Mask R-CNN targets[{key!r}] must have shape {expected[key]} (N, M = max instances, "
                             f"H, W of the images), got {tuple(arr.shape)}")
    if not any(isinstance(targets[k], jax.core.Tracer) for k in ("boxes", "classes", "num_instances")):
        check_boxes(np.asarray(targets["boxes"], np.float32), np.asarray(targets["classes"]),
                    np.asarray(targets["num_instances"]))
    return boxes, classes.astype(jnp.int32), masks, num.astype(jnp.int32)


def check_boxes(boxes: np.ndarray, classes: np.ndarray, num_instances: np.ndarray) -> None:
    """Raises ValueError naming the first ground-truth slot (image index, slot, box) whose box is
    degenerate: a non-finite coordinate, or x2 <= x1 or y2 <= y1 (padding slots are not checked).

    The message follows torchvision's ("All bounding boxes should have positive height and
    width. Found invalid box ... for target at index ...").
    """
    # NumPy only: called while tracing too (targets closed over by a jitted function are
    # concrete, but a jnp op on them would return a tracer).
    valid = (np.arange(classes.shape[1])[None, :] < num_instances[:, None]) & (classes > 0)
    proper = np.isfinite(boxes).all(-1) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    bad = valid & ~proper
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"Mask R-CNN targets['boxes']: all bounding boxes should have finite coordinates and "
                         f"positive height and width (x2 > x1, y2 > y1). Found invalid box {boxes[i, j].tolist()} "
                         f"for target at index {i} (slot {j}); {int(bad.sum())} such box(es) in the batch")


def gt_valid(classes: jax.Array, num_instances: jax.Array, boxes: jax.Array | None = None) -> jax.Array:
    """bool [N, M]: which target slots hold ground truth (`j < num_instances` and a class > 0,
    and, when `boxes` [N, M, 4] are given, a proper box: `segjax.ops.boxes.proper_boxes`)."""
    valid = (jnp.arange(classes.shape[1])[None, :] < num_instances[:, None]) & (classes > 0)
    return valid if boxes is None else valid & proper_boxes(boxes)


__all__ = ["BOXES", "CLASSES", "MASK_BOXES", "MASK_PROBS", "NUM_DETECTIONS", "SCORES", "TARGET_KEYS", "check_boxes", "check_targets",
           "gt_valid"]
