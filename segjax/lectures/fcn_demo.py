"""Figure 6: FCN-32s, FCN-16s and FCN-8s trained briefly on synthetic shapes, predictions compared.

The three registered FCN-VGG16 models, shrunk (`backbone_width` 8, `fc_dim` 64, no dropout,
fixed bilinear upsampling), are
each trained from the same initial seed with the same recipe on the same few `synthetic_shapes`
images (`synthetic_shapes.generate`, no TFDS preparation): Adam on minibatches, loss
`segjax.losses.cross_entropy`. They differ only in the skips (pool4 for 16s, pool4 + pool3 for
8s), so the held-out predictions show what the skips add: the stride-32 score map alone cannot
place a boundary finer than a 32-pixel cell.

Measured with the defaults (300 steps of 16, 64 train / 16 validation images at 64x64, seed 0;
185 s for all three on a 2-core CPU shared with other jobs): validation mIoU FCN-32s 0.151,
FCN-16s 0.242, FCN-8s 0.747. At 64x64 the stride-32 map is 2x2 cells, so FCN-32s mostly
predicts background.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

FCN_MODELS = (("FCN-32s", "fcn32s_vgg16"), ("FCN-16s", "fcn16s_vgg16"), ("FCN-8s", "fcn8s_vgg16"))
# Fixed bilinear upsampling (as the paper's final upsampling): the coarse score maps show as is.
TINY_OVERRIDES = {"backbone_width": 8, "fc_dim": 64, "dropout_rate": 0.0,
                  "learnable_upsampling": False}


def shapes_batch(split: str, count: int, image_size: int):
    """`count` images of `synthetic_shapes/clean` at `image_size`: (uint8 images [N, S, S, 3],
    labels [N, S, S] int32)."""
    from segjax.data.builders.synthetic_shapes import BUILDER_CONFIGS, generate

    clean = next(c for c in BUILDER_CONFIGS if c.name == "clean")
    config = dataclasses.replace(clean, image_size=image_size)
    examples = [generate(config, split, i) for i in range(count)]
    return (np.stack([e["image"] for e in examples]),
            np.stack([e["label"][..., 0] for e in examples]).astype(np.int32))


def _normalise(images: np.ndarray) -> jax.Array:
    # The pipelines' normalisation (ImageNet mean/std on 0..255), without importing TensorFlow.
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
    return jnp.asarray((images.astype(np.float32) - mean) / std)


def train_fcn(name: str, images: jax.Array, labels: jax.Array, *, steps: int, batch_size: int,
              learning_rate: float, seed: int = 0):
    """Trains the registered FCN `name` (tiny overrides) with Adam on minibatches of `batch_size`
    taken in a seeded random order (one permutation per epoch); returns (model, params, losses
    per step)."""
    import optax

    from segjax import losses
    from segjax.data.builders.synthetic_shapes import NUM_CLASSES
    from segjax.models import create_model

    model = create_model(name, num_classes=NUM_CLASSES, **TINY_OVERRIDES)
    # jax's default partitionable threefry makes compiling `init` ~8x slower on CPU (the tests
    # measured it on these models too).
    with jax.threefry_partitionable(False):
        params = jax.jit(model.init)(jax.random.key(seed), images[:1])["params"]
    opt = optax.adam(learning_rate)
    opt_state = opt.init(params)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x, train=False)["logits"]
        total, count = losses.cross_entropy(logits, y, ignore_label=255)
        return total / count

    @jax.jit
    def step(p, s, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(seed)
    per_epoch = len(images) // batch_size
    history, order = [], None
    for i in range(steps):
        if i % per_epoch == 0:
            order = rng.permutation(len(images))
        idx = order[(i % per_epoch) * batch_size:(i % per_epoch + 1) * batch_size]
        params, opt_state, loss = step(params, opt_state, images[idx], labels[idx])
        history.append(float(loss))
    return model, params, history


def fcn_skips(steps: int = 300, num_train: int = 64, batch_size: int = 16, num_eval: int = 16,
              image_size: int = 64, learning_rate: float = 2e-3, seed: int = 0,
              models=FCN_MODELS) -> dict:
    """Figure 6's data: FCN-32s/16s/8s each trained for `steps` Adam steps (batches of
    `batch_size`) on `num_train` training images, evaluated on `num_eval` validation images
    (`segjax.metrics`). `models`: (title, registry name) pairs, FCN-32s/16s/8s by default.

    Returns `recipe` (what was trained, for index.md), per model `final_loss`, `miou`,
    `pixel_accuracy`, `train_seconds`, and the first validation `image`, its `label` and each
    model's `prediction` [S, S].
    """
    from segjax import metrics
    from segjax.data.builders.synthetic_shapes import NUM_CLASSES

    train_images, train_labels = shapes_batch("train", num_train, image_size)
    eval_images, eval_labels = shapes_batch("validation", num_eval, image_size)
    x_train, y_train = _normalise(train_images), jnp.asarray(train_labels)
    x_eval = _normalise(eval_images)
    out = {"recipe": {
        "dataset": f"synthetic_shapes/clean at {image_size}x{image_size} "
                   f"({num_train} train, {num_eval} validation images)",
        "models": [name for _, name in models], "overrides": dict(TINY_OVERRIDES),
        "optimizer": f"Adam lr {learning_rate}, batch {batch_size}, {steps} steps, seed {seed}",
        "loss": "segjax.losses.cross_entropy"},
        "image": eval_images[0], "label": eval_labels[0], "models": {}}
    for title, name in models:
        start = time.perf_counter()
        model, params, history = train_fcn(name, x_train, y_train, steps=steps,
                                           batch_size=batch_size, learning_rate=learning_rate,
                                           seed=seed)
        seconds = time.perf_counter() - start
        logits = jax.jit(lambda p, x: model.apply({"params": p}, x)["logits"])(params, x_eval)
        pred = np.asarray(jnp.argmax(logits, -1))
        conf = metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(eval_labels), NUM_CLASSES,
                                        ignore_label=255)
        summary = metrics.metrics_from_confusion(np.asarray(conf, np.int64))
        out["models"][title] = {
            "model": name, "final_loss": history[-1], "first_loss": history[0],
            "miou": summary["miou"], "pixel_accuracy": summary["pixel_accuracy"],
            "train_seconds": round(seconds, 1), "prediction": pred[0]}
    return out
