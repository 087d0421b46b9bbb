r"""PSPNet on PASCAL VOC 2012 (+SBD `train_aug`).

Presets (`--config=experiments/configs/pspnet_voc.py:PRESET`):

* default (no preset): mmsegmentation's `pspnet_r50-d8_512x512_20k_voc12aug`: pyramid pooling
  (bins 1, 2, 3, 6) on a dilated ResNet-50 (output stride 8), crop 512, batch 16, lr 0.01 poly
  0.9 (min 1e-4), weight decay 5e-4, 20k steps, auxiliary FCN loss 0.4. mmsegmentation's model
  zoo lists about 76.8% val mIoU (ResNetV1c backbone; expect a little less with torchvision's
  ResNet-50). Zhao et al. 2017 report 82.6% on VOC 2012 *test* with ResNet-101, a longer
  schedule and no COCO. Not measured here (needs accelerators).

      python -m segjax.tools.convert_torchvision --model=resnet50 \
        --weights=resnet50-0676ba61.pth --workdir=/tmp/r50
      python -m experiments.deeplab_voc --workdir=/tmp/psp_r50 \
        --config=experiments/configs/pspnet_voc.py --config.init_from=/tmp/r50

* `r101`: the same recipe with ResNet-101 (mmsegmentation: about 78% at 20k steps).
* `shapes`: PSPNet-ResNet18 at width 16 on synthetic shapes (CPU-sized; not measured).
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "r101", "shapes")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for pspnet_voc.py; presets: {PRESETS}")
    c = base_config()
    c.model.name = "pspnet_resnet50"
    c.model.output_stride = 8
    c.model.aux_loss = True
    c.dataset.crop_size = 512
    c.num_train_steps = 20_000
    c.optimizer.base_lr = 0.01
    c.optimizer.end_lr = 1e-4
    c.optimizer.weight_decay = 5e-4
    c.optimizer.decay_norm_and_bias = True  # mmseg's SGD decays every parameter
    c.loss.aux_weight = 0.4
    c.eval.window = 512
    c.eval.stride = 341
    if preset == "r101":
        c.model.name = "pspnet_resnet101"
    elif preset == "shapes":
        use_synthetic_shapes(c)
        c.model.name = "pspnet_resnet18"
        c.model.backbone_width = 16
        c.model.head_channels = 64
        c.num_train_steps = 600
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
        c.optimizer.base_lr = 0.05
        c.optimizer.end_lr = 0.0
        c.optimizer.weight_decay = 1e-4
    return c
