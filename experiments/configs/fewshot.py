r"""Few-shot segmentation (PANet-style prototypes, Wang et al. 2019): the "fewshot" task.

1-way 1-shot episodes on synthetic shapes: trained on circles, squares and triangles, evaluated
on the held-out stars and crosses (`fewshot.test_classes`), whose pixels are background during
training. Metric: foreground IoU per held-out class accumulated over the episodes, averaged (the
foreground mIoU, `fg_miou`, PANet's mean-IoU), plus FB-IoU. Demo: fg mIoU 0.316 ± 0.225 over
seeds 0-2 (0.398 / 0.219 / 0.330; ABLATIONS.md).

    python -m experiments.train --workdir=/tmp/fewshot --config=experiments/configs/fewshot.py:demo

Presets:
* default: the PANet recipe's shape on a ResNet-18 encoder (width 64), 1-way 1-shot, 30k
  episodes of batch 1 in the paper; here batch 8, 20k steps, SGD lr 1e-3 momentum 0.9, wd 5e-4,
  alignment weight 1. Not measured.
* `demo`: a narrow encoder (width 16), whole 128x128 images, 8 episodes per step drawn from
  48-image pools, 300 steps, 200 evaluation episodes; ~3 CPU minutes.
* `shape_only`: the demo on `synthetic_shapes/shape_only`, where colour is random (shape is the
  only cue to transfer).
* `metric`: the demo's encoder trained by a triplet loss on sampled pixel embeddings alone
  (8 foreground + 8 background pixels per image, labelled by class, mined over the global batch;
  L2-normalised, margin 0.3), evaluated by the same 1-shot prototypes. The mining study:

      python -m experiments.ablate --base=experiments/configs/fewshot.py:metric \
        --workdir=/tmp/mining --sweep='fewshot.triplet.mining=all,hard,semi_hard' \
        --seeds=0,1,2 --metric=fg_miou
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "demo", "shape_only", "metric")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for fewshot.py; presets: {PRESETS}")
    c = base_config("fewshot")
    use_synthetic_shapes(c, crop_size=64)
    c.model.name = "fewshot_resnet18"
    c.model.width = 64
    c.fewshot.test_classes = (4, 5)  # star, cross: never a way in training
    c.fewshot.ways = 1
    c.fewshot.shots = 1
    c.fewshot.pool = 48  # augmented images read per step, the step's episodes drawn from them
    c.fewshot.eval_episodes = 200
    c.fewshot.eval_seed = 0
    c.fewshot.align_weight = 1.0
    c.fewshot.min_pixels = 16
    # Metric learning on pixel embeddings (segjax.tasks.fewshot): off unless triplet_weight > 0.
    c.fewshot.proto_weight = 1.0
    c.fewshot.triplet_weight = 0.0
    c.fewshot.triplet_pixels = 8  # foreground and background pixels per image
    c.fewshot.triplet_background = True  # False: foreground pixels only (classes vs classes)
    c.fewshot.triplet.mining = "hard"
    c.fewshot.triplet.margin = 0.3
    c.fewshot.triplet.distance = "euclidean"
    c.fewshot.triplet.normalize = True  # unit vectors, as the cosine prototypes compare them
    c.fewshot.triplet.soft = False
    c.batch_size = 8
    c.num_train_steps = 20_000
    c.log_every_steps = 100
    c.eval_every_steps = 2_000
    c.checkpoint_every_steps = 2_000
    c.optimizer.base_lr = 1e-3
    c.optimizer.weight_decay = 5e-4
    c.eval.batch_size = 20
    if preset in ("demo", "shape_only", "metric"):
        c.model.width = 16
        # Whole 128x128 images: at stride 8 a 64x64 crop leaves an 8x8 feature map, too coarse
        # for these objects (measured: fg mIoU 0.26 after 400 steps vs 0.40 after 300 here).
        c.dataset.crop_size = 128
        c.dataset.min_scale = c.dataset.max_scale = 1.0
        c.num_train_steps = 300
        c.log_every_steps = 50
        c.eval_every_steps = 150
        c.checkpoint_every_steps = 150
        c.optimizer.base_lr = 0.02
        c.optimizer.warmup_steps = 20
    if preset == "shape_only":
        c.dataset.name = "synthetic_shapes/shape_only"
    if preset == "metric":  # the encoder trained by the triplet loss alone, tested by prototypes
        c.fewshot.proto_weight = 0.0
        c.fewshot.triplet_weight = 1.0
    return c
