r"""PixelNet (Bansal et al. 2017) on PASCAL VOC 2012 (+SBD `train_aug`).

Presets (`--config=experiments/configs/pixelnet_voc.py:PRESET`):

* default (no preset): `pixelnet_vgg16`: hypercolumns of conv1_2, conv2_2, conv3_3, conv4_3,
  conv5_3 and fc7 of VGG-16 (ImageNet init), a 4096-4096 MLP per pixel, 2000 randomly sampled
  pixels per image in training (the semantic task reads their labels at the model's
  `pixel_index`), dense prediction at evaluation. The paper reports 69.7% mIoU on VOC 2012
  *test* (as cited in segjax issue 27's brief; not re-read from the paper here; its headline
  segmentation numbers are on PASCAL-Context). Schedule: segjax's adaptation (SGD momentum 0.9,
  lr 1e-3 poly 0.9, weight decay 5e-4, batch 5 crops of 321, 40k steps), not the paper's: not
  measured here (needs accelerators and VOC). Dense evaluation runs the 4096-wide MLP on every
  pixel, so keep `eval.batch_size` small.

      python -m experiments.deeplab_voc --workdir=/tmp/pixelnet \
        --config=experiments/configs/pixelnet_voc.py --config.init_from=/tmp/vgg16

* `shapes`: a narrow PixelNet (VGG width 8, fc 64, MLP 64-64, 500 pixels per 64x64 crop) on
  synthetic shapes, trained from scratch on a CPU (no BatchNorm in this VGG, hence the lower lr).
  Not measured beyond a smoke run.

      python -m experiments.train --workdir=/tmp/pixelnet_shapes \
        --config=experiments/configs/pixelnet_voc.py:shapes
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "shapes")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for pixelnet_voc.py; presets: {PRESETS}")
    c = base_config()
    c.model.name = "pixelnet_vgg16"
    c.model.train_samples = 2000  # pixels per image per step (the paper's)
    c.model.mlp_dims = (4096, 4096)
    c.dataset.crop_size = 321
    c.batch_size = 5
    c.num_train_steps = 40_000
    c.optimizer.base_lr = 1e-3
    c.optimizer.power = 0.9
    c.optimizer.weight_decay = 5e-4
    c.eval.window = 321
    c.eval.stride = 214
    if preset == "shapes":
        use_synthetic_shapes(c)
        c.model.backbone_width = 8
        c.model.fc_dim = 64
        c.model.mlp_dims = (64, 64)
        c.model.train_samples = 500
        c.batch_size = 16
        c.num_train_steps = 600
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
        c.optimizer.base_lr = 0.01
        c.optimizer.weight_decay = 1e-4
    return c
