r"""FCN on PASCAL VOC 2012 (+SBD `train_aug`).

Presets (`--config=experiments/configs/fcn_voc.py:PRESET`):

* default (no preset): FCN-8s on VGG-16 after Long, Shelhamer and Darrell (CVPR 2015 / PAMI
  2017): SGD momentum 0.9, fixed lr 1e-4 (poly power 0 = constant) for a per-pixel-mean loss at
  batch 20, weight decay 5e-4, VGG-16 ImageNet init. The paper trains on whole images one at a
  time; here 512x512 crops (mean-padded) in batches of 20. They report 62.2% mIoU on VOC 2012
  test (PAMI version, "at-once" FCN-8s: 67.2%). Not measured here (needs accelerators).

      python -m experiments.deeplab_voc --workdir=/tmp/fcn8s \
        --config=experiments/configs/fcn_voc.py --config.init_from=/tmp/vgg16

  (`convert_torchvision` converts ResNets and the torchvision FCN/DeepLab models; for VGG-16
  write /tmp/vgg16 with `segjax.models.backbones.vgg.vgg16_variables_from_torch` and
  `segjax.models.torchvision_import.save_converted`.)

* `fcn_r50`: mmsegmentation's `fcn_r50-d8_512x512_20k_voc12aug`: FCN head on a dilated
  ResNet-50 (output stride 8), crop 512, batch 16, lr 0.01 poly 0.9 (min 1e-4), weight decay
  5e-4, 20k steps, aux loss 0.4. mmsegmentation's model zoo lists about 67% val mIoU for it
  (ResNetV1c backbone; torchvision's ResNet-50 stem differs). Not measured here.

      python -m segjax.tools.convert_torchvision --model=resnet50 \
        --weights=resnet50-0676ba61.pth --workdir=/tmp/r50
      python -m experiments.deeplab_voc --workdir=/tmp/fcn_r50 \
        --config=experiments/configs/fcn_voc.py:fcn_r50 --config.init_from=/tmp/r50

* `shapes`: FCN-ResNet18 at width 16 on synthetic shapes, a CPU-sized check of the recipe
  machinery (no published reference; not measured).
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "fcn_r50", "shapes")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for fcn_voc.py; presets: {PRESETS}")
    c = base_config()
    c.model.name = "fcn8s_vgg16"
    c.dataset.crop_size = 512
    c.batch_size = 20
    c.num_train_steps = 40_000
    c.optimizer.base_lr = 1e-4
    c.optimizer.power = 0.0  # constant learning rate, as in the paper
    c.optimizer.weight_decay = 5e-4
    c.eval.window = 512
    c.eval.stride = 341
    if preset == "fcn_r50":
        c.model.name = "fcn_resnet50"
        c.model.output_stride = 8
        c.model.aux_loss = True
        c.batch_size = 16
        c.num_train_steps = 20_000
        c.optimizer.decay_norm_and_bias = True  # mmseg's SGD decays every parameter
        c.optimizer.base_lr = 0.01
        c.optimizer.power = 0.9
        c.optimizer.end_lr = 1e-4
        c.loss.aux_weight = 0.4
    elif preset == "shapes":
        use_synthetic_shapes(c)
        c.model.name = "fcn_resnet18"
        c.model.output_stride = 8
        c.model.backbone_width = 16
        c.batch_size = 16
        c.num_train_steps = 600
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
        c.optimizer.base_lr = 0.05
        c.optimizer.power = 0.9
        c.optimizer.weight_decay = 1e-4
    return c
