r"""Unsupervised domain adaptation (`segjax.tasks.uda`): labelled source, unlabelled target.

Preset `shapes` (the CPU demo, a few minutes on 2 cores): DeepLab v3+ (ResNet-18 at the model
zoo's CPU widths) trained with `synthetic_shapes/clean`'s labels and adapted to
`synthetic_shapes/restyled` (the same kind of scenes in another rendering style), scored on
restyled's validation labels; the model zoo's recipe (64x64 crops, batch 16, 300 steps).
Choose the method with `--config.uda.method` and the target with `--config.uda.target`
(`synthetic_shapes/illumination`, `/noise`):

    python -m experiments.train --workdir=/tmp/uda_adv --config=experiments/configs/uda.py:shapes \
      --config.uda.method=adversarial

The papers' setting is GTA5 -> Cityscapes (19 classes, DeepLab v2 ResNet-101 from ImageNet,
512x1024 crops of Cityscapes / 720x1280 of GTA5, batch 1, SGD lr 2.5e-4, 250k iterations):
AdaptSegNet reports 41.4 mIoU single-level (Tsai et al., CVPR 2018, Table 1); those recipes
are the presets of `experiments/configs/uda_gta5.py` (source only, AdaptSegNet, FDA, DACS).
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes
from experiments.configs.model_zoo import cpu_overrides

PRESETS = ("shapes",)


def get_config(preset: str = "shapes") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for uda.py; presets: {PRESETS}")
    c = base_config("uda")
    use_synthetic_shapes(c, "synthetic_shapes/clean", crop_size=64)
    c.uda.target = "synthetic_shapes/restyled"
    c.uda.method = "source_only"
    c.model.name = "deeplabv3plus_resnet18"
    for key, value in cpu_overrides(c.model.name).items():
        c.model[key] = value
    c.batch_size = 16
    c.num_train_steps = 300
    c.log_every_steps = 50
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
    c.keep_checkpoints = 1
    c.optimizer.base_lr = 0.05
    c.optimizer.weight_decay = 1e-4
    c.eval.batch_size = 16
    c.eval.num_visualizations = 4
    return c
