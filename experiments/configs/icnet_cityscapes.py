r"""ICNet (Zhao et al., ECCV 2018, image cascade + cascade feature fusion) on Cityscapes.

The paper reports 69.5% Cityscapes test mIoU (67.7% val) at 30.3 fps on 1024 x 2048 images (one
Titan X) with its PSPNet50-based cascade, kernels pruned by half.

Presets (`--config=experiments/configs/icnet_cityscapes.py:PRESET`):

* default (no preset): mmsegmentation's `icnet_r18-d8_in1k-pre_832x832_160k_cityscapes`, whose
  model zoo lists 74.43% val mIoU: `icnet_resnet18` from ImageNet weights, the label-guidance
  losses at 0.4 and 0.4 and the final loss at 1 (the paper's Eq. 2 weights, `loss.aux_weight` on
  each of the two guidance heads), batch 8, SGD lr 0.01 poly 0.9 (min 1e-4), weight decay 5e-4 on
  every parameter, 160k steps, 832 x 832 crops after a random rescale of 0.5-2.0, whole-image
  evaluation. Differences: segjax's ResNet-18 is torchvision's (mmseg: ResNetV1c with a deep
  stem, max pooling in ceil mode) and its pyramid pooling module is PSPNet's with a 256-channel
  fusion conv (mmseg: 512, then a 1x1 conv to 256). Not measured here (needs accelerators and
  Cityscapes in TFDS).

      python -m segjax.tools.convert_torchvision --model=resnet18 \
        --weights=resnet18-f37072fd.pth --workdir=/tmp/r18
      python -m experiments.train --workdir=/tmp/icnet_r18 \
        --config=experiments/configs/icnet_cityscapes.py --config.init_from=/tmp/r18

* `r50`: the same recipe with `icnet_resnet50`, the paper's backbone depth (mmsegmentation's
  `icnet_r50-d8_in1k-pre_832x832_160k_cityscapes`: 76.29% val mIoU).
* `shapes`: `icnet_resnet18` at width 16 (pyramid 32, CFF 32, full-resolution branch 8, 8, 16) on
  synthetic shapes with 128 x 128 crops (the cascade's 1/32 map is then 4 x 4), the CPU-sized
  check of the recipe (300 steps of batch 16, ~14 img/s on 2 shared CPU cores; 50 steps reached
  0.73 mIoU). `--config.loss.aux_weight=0` is the same-data ablation of the guidance.

      python -m experiments.train --workdir=/tmp/icnet_shapes \
        --config=experiments/configs/icnet_cityscapes.py:shapes
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "r50", "shapes")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for icnet_cityscapes.py; presets: {PRESETS}")
    c = base_config()
    c.model.name = "icnet_resnet18"
    c.model.aux_loss = True  # the two label-guidance heads ("aux_logits", a tuple)
    c.dataset.name = "cityscapes"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.crop_size = 832
    c.batch_size = 8
    c.num_train_steps = 160_000
    c.eval_every_steps = 16_000
    c.checkpoint_every_steps = 16_000
    c.optimizer.base_lr = 0.01
    c.optimizer.end_lr = 1e-4
    c.optimizer.weight_decay = 5e-4
    c.optimizer.decay_norm_and_bias = True  # mmseg's SGD decays every parameter
    c.loss.aux_weight = 0.4
    c.eval.pad_to = 2048  # whole 1024 x 2048 images
    c.eval.batch_size = 8
    c.eval.window = 1024
    c.eval.stride = 683
    if preset == "r50":
        c.model.name = "icnet_resnet50"
    elif preset == "shapes":
        use_synthetic_shapes(c, crop_size=128)
        c.model.backbone_width = 16
        c.model.head_channels = 32
        c.model.fusion_channels = 32
        c.model.branch_channels = (8, 8, 16)
        c.batch_size = 16
        c.num_train_steps = 300
        c.eval_every_steps = 100
        c.checkpoint_every_steps = 100
        c.optimizer.base_lr = 0.05
        c.optimizer.end_lr = 0.0
        c.optimizer.weight_decay = 1e-4
        c.optimizer.decay_norm_and_bias = False
    return c
