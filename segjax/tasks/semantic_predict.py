"""The semantic task's prediction at the original resolution: whole image, multi-scale + flip
TTA, sliding window (`predict_probs`).

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

The semantic task's per-batch evaluation statistics (`segjax.tasks.semantic`) and
`experiments.predict` use `predict_probs`; the loop over eval batches that feeds any task's
accumulator is `segjax.train.evaluate`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax


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

