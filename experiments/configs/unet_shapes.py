r"""U-Net (Ronneberger et al. 2015) on the built-in synthetic shapes dataset.

U-Net has no ImageNet backbone and no standard VOC number; this config trains it from scratch
on synthetic shapes (no download, CPU-sized). Expected result: not measured for this file (the
`deeplab_voc.py:demo` preset is the measured CPU demo).

    python -m experiments.deeplab_voc --workdir=/tmp/unet \
      --config=experiments/configs/unet_shapes.py

Presets: default (base_features 16, depth 4, 64x64 crops, 1500 steps, SGD momentum 0.9, lr 0.05
poly 0.9, weight decay 1e-4), `small` (base_features 8, depth 3, 600 steps: about the demo's
cost).
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "small")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for unet_shapes.py; presets: {PRESETS}")
    c = base_config()
    use_synthetic_shapes(c, crop_size=64)
    c.model.name = "unet"
    c.model.base_features = 16
    c.model.depth = 4
    c.batch_size = 16
    c.num_train_steps = 1_500
    c.log_every_steps = 25
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.optimizer.base_lr = 0.05
    c.optimizer.weight_decay = 1e-4
    if preset == "small":
        c.model.base_features = 8
        c.model.depth = 3
        c.num_train_steps = 600
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
    return c
