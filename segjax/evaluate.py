"""Evaluation at the original resolution: whole-image, multi-scale + flip TTA, sliding window.

Eval batches are padded to one fixed canvas (`eval.pad_to`) with the ignore label and carry a
per-example `valid` flag, so one compiled function serves the whole split: nothing recompiles per
image. Predictions are made on the canvas; padding pixels carry the ignore label and drop out of
the confusion matrix, so the metrics are those of the original-size images.

* Multi-scale TTA: for each scale s the canvas is resized (bilinear, half-pixel centres) to
  round(s * H) x round(s * W), predicted, the logits resized back to H x W, softmaxed and averaged
  over scales (and horizontal flips). Rescaling the whole canvas rescales each image with it
  (images sit at the top-left), up to bilinear mixing of a one-pixel seam with the padding.
* Sliding window: window x window tiles at the given stride (the last tile flush with the
  border), logits averaged where tiles overlap; an image smaller than the window is predicted
  whole.

The eval function runs under `jax.jit` over a 1-D device mesh ("batch"): variables replicated,
the batch sharded along its first axis, the confusion matrix a global sum. It works the same
whether training used pmap or a mesh (eval uses running BatchNorm statistics, no collectives).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from segjax import metrics as metrics_lib
from segjax.models.outputs import LOGITS

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (variables, images [N,h,w,3]) -> logits


def _resize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    if tuple(x.shape[1:3]) == tuple(hw):
        return x
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "bilinear", antialias=False)


def window_offsets(size: int, window: int, stride: int) -> list[int]:
    """Top/left offsets of sliding windows along one axis of `size` pixels.

    Windows start every `stride` pixels and the last one ends flush with the border:
    `window_offsets(10, 4, 3) == [0, 3, 6]`. If `window >= size` there is one window at 0.
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if window >= size:
        return [0]
    n = math.ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(n)]


def sliding_window_logits(apply_fn: ApplyFn, variables: Any, images: jax.Array, *,
                          window: int, stride: int) -> jax.Array:
    """Logits [N, H, W, K] of `images` [N, H, W, C] predicted tile by tile, averaged on overlaps.

    The tiles run in a `lax.scan`, so the model is traced once whatever the number of tiles.
    """
    n, h, w, _ = images.shape
    wh, ww = min(window, h), min(window, w)
    ys, xs = window_offsets(h, wh, stride), window_offsets(w, ww, stride)
    offsets = jnp.asarray([(y, x) for y in ys for x in xs], jnp.int32)
    # One abstract evaluation to learn K without running the model.
    k = jax.eval_shape(lambda v, x: apply_fn(v, x), variables,
                       jax.ShapeDtypeStruct((n, wh, ww, images.shape[3]), images.dtype)).shape[-1]

    def tile(carry, yx):
        total, count = carry
        y, x = yx[0], yx[1]
        crop = lax.dynamic_slice(images, (0, y, x, 0), (n, wh, ww, images.shape[3]))
        logits = apply_fn(variables, crop).astype(jnp.float32)
        prev = lax.dynamic_slice(total, (0, y, x, 0), (n, wh, ww, k))
        total = lax.dynamic_update_slice(total, prev + logits, (0, y, x, 0))
        prev_c = lax.dynamic_slice(count, (y, x), (wh, ww))
        count = lax.dynamic_update_slice(count, prev_c + 1.0, (y, x))
        return (total, count), None

    init = (jnp.zeros((n, h, w, k), jnp.float32), jnp.zeros((h, w), jnp.float32))
    (total, count), _ = lax.scan(tile, init, offsets)
    return total / count[None, :, :, None]


def predict_probs(apply_fn: ApplyFn, variables: Any, images: jax.Array, *,
                  scales: Sequence[float] = (1.0,), flip: bool = False,
                  window: int | None = None, stride: int | None = None) -> jax.Array:
    """Class probabilities [N, H, W, K] of `images` [N, H, W, C] at their own resolution.

    With one scale, no flip and no window this is `softmax(apply_fn(variables, images))`.
    Otherwise the softmax of every (scale, flip) prediction, resized back to H x W, is averaged;
    `window`/`stride` switch each prediction to `sliding_window_logits`.
    """
    _, h, w, _ = images.shape

    def logits_of(x):
        if window is not None:
            return sliding_window_logits(apply_fn, variables, x, window=window,
                                         stride=stride or window)
        return apply_fn(variables, x).astype(jnp.float32)

    total = None
    for s in scales:
        hw = (max(1, round(s * h)), max(1, round(s * w)))
        x = _resize(images, hw)
        for flipped in ((False, True) if flip else (False,)):
            xi = x[:, :, ::-1] if flipped else x
            logits = logits_of(xi)
            if flipped:
                logits = logits[:, :, ::-1]
            probs = jax.nn.softmax(_resize(logits, (h, w)), axis=-1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


def model_apply_fn(model) -> ApplyFn:
    """`(variables, images) -> logits` of a segjax model in eval mode."""

    def apply(variables, images):
        return model.apply(variables, images, train=False)[LOGITS]

    return apply


def make_eval_fn(model, *, num_classes: int, ignore_label: int, mesh: Mesh | None = None,
                 scales: Sequence[float] = (1.0,), flip: bool = False,
                 window: int | None = None, stride: int | None = None,
                 boundary_iou: bool = False, boundary_dilation_ratio: float = 0.02):
    """A jitted `eval_fn(variables, batch) -> (confusion int32 [K, K], pred int32 [B, H, W],
    boundary)`, `boundary` being None or, with `boundary_iou`, the Boundary IoU counts
    `(intersection, union)` int32 [K] of `segjax.metrics.boundary_iou_counts`.

    `batch` holds "image" [B, H, W, 3], "label" [B, H, W] (ignore in padding) and "valid" bool
    [B]; `variables` is {"params", "batch_stats"}. With a `mesh` (axis "batch") the variables are
    expected replicated and the batch sharded over it (see `shard_eval_batch`); the confusion
    matrix is the global sum either way.

    Boundary IoU treats ignored pixels (padding, VOC's object outlines) like the outside of the
    image in both the prediction and the labels, so padding cannot change it; its boundary width
    is `boundary_dilation_ratio` times the diagonal of the padded batch. `eval_fn.trace_count()` counts compilations (one per
    distinct input shape) for recompile guards.
    """
    apply_fn = model_apply_fn(model)
    traces = [0]

    def eval_fn(variables, batch):
        traces[0] += 1
        probs = predict_probs(apply_fn, variables, batch["image"], scales=tuple(scales), flip=flip,
                              window=window, stride=stride)
        pred = jnp.argmax(probs, axis=-1).astype(jnp.int32)
        conf = metrics_lib.confusion_matrix(pred, batch["label"], num_classes,
                                            ignore_label=ignore_label,
                                            valid_mask=batch.get("valid"))
        boundary = None
        if boundary_iou:
            outside = batch["label"] == ignore_label
            boundary = metrics_lib.boundary_iou_counts(
                jnp.where(outside, -1, pred), batch["label"], num_classes,
                ignore_label=ignore_label, dilation_ratio=boundary_dilation_ratio,
                valid_mask=batch.get("valid"))
        return conf, pred, boundary

    if mesh is None:
        jitted = jax.jit(eval_fn)
    else:
        replicated = NamedSharding(mesh, P())
        jitted = jax.jit(eval_fn, out_shardings=(replicated, NamedSharding(mesh, P("batch")),
                                                 replicated))
    jitted.trace_count = lambda: traces[0]
    return jitted


def eval_mesh() -> Mesh:
    """A 1-D mesh over every device (all processes), axis "batch"."""
    return Mesh(np.asarray(jax.devices()), ("batch",))


def shard_eval_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays from process-local eval batch arrays, sharded along the batch axis.

    Only the keys the eval function reads are transferred ("image", "label", "valid").
    """
    sharding = NamedSharding(mesh, P("batch"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
            for k in ("image", "label", "valid") if k in batch}


def replicate_on(tree: Any, mesh: Mesh) -> Any:
    """`tree` (host or device arrays, unreplicated) placed fully replicated on `mesh`."""
    sharding = NamedSharding(mesh, P())
    # From a callback, so that it also works when the mesh spans several processes.
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), sharding, lambda idx, x=np.asarray(x): x[idx]), tree)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order (all rows on one process)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for s in shards:
        start = s.index[0].start or 0
        if start not in seen:
            seen.add(start)
            rows.append(np.asarray(s.data))
    return np.concatenate(rows)


def evaluate(eval_fn, variables: Any, batches: Iterable[Mapping[str, np.ndarray]], *,
             num_classes: int, mesh: Mesh,
             on_batch: Callable[[Mapping[str, np.ndarray], Callable[[], np.ndarray]], None] | None = None,
             ) -> dict[str, Any]:
    """Runs `eval_fn` over `batches` and returns `metrics_from_confusion` of the int64 sum
    (plus boundary_iou and boundary_iou_per_class when `eval_fn` computes them).

    Args:
      eval_fn: from `make_eval_fn(..., mesh=mesh)`.
      variables: replicated on `mesh` (`replicate_on`).
      batches: process-local eval batches (`segjax.data.pipeline.eval_batches`).
      num_classes: K.
      mesh: the eval mesh.
      on_batch: optional `(batch, get_pred)` callback, e.g. to save visualisations;
        `get_pred()` fetches this process's predictions int32 [B_local, H, W].

    Returns:
      miou, pixel_accuracy, iou_per_class, ... (see `segjax.metrics.metrics_from_confusion`).
    """
    acc = metrics_lib.ConfusionAccumulator(num_classes)
    traces_before = eval_fn.trace_count() if hasattr(eval_fn, "trace_count") else None
    for batch in batches:
        conf, pred, boundary = eval_fn(variables, shard_eval_batch(batch, mesh))
        acc.update(np.asarray(conf))
        if boundary is not None:
            acc.update_boundary(*(np.asarray(c) for c in boundary))
        if on_batch is not None:
            on_batch(batch, lambda pred=pred: local_rows(pred))
    if traces_before is not None and eval_fn.trace_count() > max(traces_before, 1):
        # Static shapes are the contract: a retrace means batches of differing shapes.
        raise RuntimeError(f"the eval function was traced {eval_fn.trace_count()} times; eval "
                           "batches must all have one shape (pad them with eval.pad_to)")
    return acc.result()
