r"""Base configs of the study questions in `experiments/ablations/` (synthetic shapes, CPU-sized).

Every preset trains a small model from scratch on `synthetic_shapes` (64x64 crops of the 128x128
images, batch 16, SGD momentum 0.9, poly lr) in well under a minute on a 2-core CPU, so that a
study of a few cells times three seeds fits in about a quarter of an hour. Each preset declares
the model options its study sweeps, with the model's own default, so that they can be set from
the command line (`--config.model.upsampling=bilinear`) and swept (`--sweep=model.upsampling=...`).
The mIoU each preset reaches on each dataset config is measured in ABLATIONS.md.

Presets (`--config=experiments/configs/shapes_ablation.py:PRESET`):

* `unet` (default): U-Net, base_features 8, depth 3, 300 steps, lr 0.05; `model.upsampling`.
* `segnet`: SegNet at VGG width 8, 300 steps, lr 0.05; `model.unpooling`.
* `fcn`: FCN-8s at VGG width 8 with fc6/fc7 of 64 channels, 300 steps, lr 0.02;
  `model.learnable_upsampling`.
* `deeplab`: DeepLab v3+ with a ResNet-18 of width 16 and 64-channel ASPP/decoder, output
  stride 16, 300 steps, lr 0.05; `model.output_stride`, `model.atrous_rates`,
  `model.image_pooling`.

    python -m experiments.deeplab_voc --workdir=/tmp/unet_abl \
      --config=experiments/configs/shapes_ablation.py:unet
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, placeholder, use_synthetic_shapes

PRESETS = ("", "unet", "segnet", "fcn", "deeplab")


def short_shapes_recipe(base_lr: float = 0.05) -> ml_collections.ConfigDict:
    """The recipe every study preset shares (and `model_zoo.py`): synthetic shapes, 64x64 crops,
    batch 16, 300 steps of SGD at `base_lr` (poly), weight decay 1e-4, one evaluation at the end,
    no pictures. The model is the caller's to set."""
    c = base_config()
    use_synthetic_shapes(c, crop_size=64)
    c.batch_size = 16
    c.num_train_steps = 300
    c.log_every_steps = 50
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
    c.keep_checkpoints = 1
    c.optimizer.base_lr = base_lr
    c.optimizer.weight_decay = 1e-4
    c.eval.batch_size = 16
    c.eval.num_visualizations = 0
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS; "" is `unet`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for shapes_ablation.py; presets: {PRESETS}")
    preset = preset or "unet"
    c = short_shapes_recipe()
    if preset == "unet":
        c.model.name = "unet"
        c.model.base_features = 8
        c.model.depth = 3
        c.model.upsampling = "transposed"
    elif preset == "segnet":
        c.model.name = "segnet"
        c.model.width = 8
        c.model.unpooling = "max"
    elif preset == "fcn":
        c.model.name = "fcn8s_vgg16"
        c.model.backbone_width = 8
        c.model.fc_dim = 64
        c.model.learnable_upsampling = True
        c.optimizer.base_lr = 0.02
    elif preset == "deeplab":
        c.model.name = "deeplabv3plus_resnet18"
        c.model.backbone_width = 16
        c.model.head_channels = 64
        c.model.output_stride = 16
        c.model.atrous_rates = placeholder(tuple)  # None: the defaults scaled to output_stride
        c.model.image_pooling = True
    return c
