"""Stateless, per-example augmentation for segmentation (TensorFlow ops inside tf.data).

Every random choice comes from a `[2]` int seed derived from `(seed, epoch, example index)`, so
the same example in the same epoch is augmented identically in any process, thread or order.
Images stay in 0..255 float32 here; normalisation happens after.
"""
from __future__ import annotations

from segjax.data._tf import tf


def example_seed(seed, epoch, index) -> tf.Tensor:
    """int64 `[2]` stateless seed for one example in one epoch (scalars or scalar tensors)."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def pad_to_size(image, label, height, width, *, fill, ignore_label):
    """Pads image `[H, W, 3]` with `fill` (per channel) and label `[H, W]` with `ignore_label`
    at the bottom/right up to at least `height` x `width`."""
    pad_h = tf.maximum(height - tf.shape(image)[0], 0)
    pad_w = tf.maximum(width - tf.shape(image)[1], 0)
    fill = tf.constant(fill, tf.float32)
    image = tf.pad(image - fill, [[0, pad_h], [0, pad_w], [0, 0]]) + fill
    label = tf.pad(label - ignore_label, [[0, pad_h], [0, pad_w]]) + ignore_label
    return image, label


def photometric_distort(image, seed):
    """Random brightness (+-32), contrast, saturation (0.5..1.5) and hue (+-18 deg) on an image
    `[H, W, 3]` in 0..255; returns 0..255 float32."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    x = image / 255.0
    x = tf.image.stateless_random_brightness(x, 32.0 / 255.0, seeds[0])
    x = tf.image.stateless_random_contrast(x, 0.5, 1.5, seeds[1])
    x = tf.image.stateless_random_saturation(tf.clip_by_value(x, 0.0, 1.0), 0.5, 1.5, seeds[2])
    x = tf.image.stateless_random_hue(x, 18.0 / 360.0, seeds[3])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def train_augment(image, label, seed, *, crop_size, min_scale=0.5, max_scale=2.0, hflip=True,
                  photometric=False, ignore_label=255, fill=(0.0, 0.0, 0.0),
                  image_resize="bilinear"):
    """Scale, (photometric,) pad, crop and flip one example.

    Args:
      image: `[H, W, 3]` uint8 or float (0..255).
      label: `[H, W]` int32 class ids.
      seed: int `[2]` stateless seed (see `example_seed`).
      crop_size: `(h, w)` output size in pixels.
      min_scale, max_scale: the scale factor is uniform in this range.
      fill: per-channel image value for padding (the dataset mean, so it normalises to 0).
      image_resize: `"bilinear"` (training) or `"nearest"` (exact alignment tests).

    Returns:
      image float32 `[h, w, 3]` in 0..255 and label int32 `[h, w]` (`ignore_label` in padding).
    """
    crop_h, crop_w = crop_size
    seeds = tf.random.experimental.stateless_split(seed, 5)
    image = tf.cast(image, tf.float32)
    label = tf.cast(label, tf.int32)
    if min_scale != 1.0 or max_scale != 1.0:
        scale = tf.random.stateless_uniform([], seeds[0], min_scale, max_scale)
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        size = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
        image = tf.image.resize(image, size, method=image_resize)
        label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    if photometric:
        image = photometric_distort(image, seeds[1])
    image, label = pad_to_size(image, label, crop_h, crop_w, fill=fill, ignore_label=ignore_label)
    shape = tf.shape(label)
    top = tf.random.stateless_uniform([], seeds[2], 0, shape[0] - crop_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[3], 0, shape[1] - crop_w + 1, dtype=tf.int32)
    image = image[top:top + crop_h, left:left + crop_w]
    label = label[top:top + crop_h, left:left + crop_w]
    if hflip:
        flip = tf.random.stateless_uniform([], seeds[4]) < 0.5
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        label = tf.cond(flip, lambda: label[:, ::-1], lambda: label)
    image = tf.ensure_shape(image, [crop_h, crop_w, 3])
    label = tf.ensure_shape(label, [crop_h, crop_w])
    return image, label
