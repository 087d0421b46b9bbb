r"""SegNet (Badrinarayanan et al. 2017) and DeconvNet (Noh et al. 2015) on PASCAL VOC 2012.

Presets (`--config=experiments/configs/segnet_voc.py:PRESET`):

* default (no preset): SegNet (VGG-16 encoder, max-unpooling decoder) on VOC `train_aug`,
  crop 320, batch 16, SGD momentum 0.9, lr 0.01 poly 0.9, weight decay 5e-4, 30k steps,
  VGG-16 ImageNet init for the encoder. The SegNet paper evaluates on CamVid and SUN RGB-D, not
  VOC, so there is no published number for this setting; not measured here.

      python -m experiments.deeplab_voc --workdir=/tmp/segnet \
        --config=experiments/configs/segnet_voc.py --config.init_from=/tmp/vgg16

  (/tmp/vgg16: VGG-16 variables saved with `torchvision_import.save_converted`; see fcn_voc.py.)

* `deconvnet`: DeconvNet, same recipe. Noh et al. report 69.6% mIoU on VOC 2012 *test* with
  their proposal-based inference (72.5% with the CRF ensemble EDeconvNet+CRF); whole-image
  inference as here is weaker. Not measured here.
* `shapes`: SegNet at width 8 on synthetic shapes (CPU-sized; not measured).
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "deconvnet", "shapes")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for segnet_voc.py; presets: {PRESETS}")
    c = base_config()
    c.model.name = "segnet"
    c.dataset.crop_size = 320
    c.num_train_steps = 30_000
    c.optimizer.base_lr = 0.01
    c.optimizer.weight_decay = 5e-4
    c.eval.window = 320
    c.eval.stride = 213
    c.eval.sliding_window = True  # trained on 320 crops: predict VOC images tile by tile
    if preset == "deconvnet":
        c.model.name = "deconvnet"
    elif preset == "shapes":
        use_synthetic_shapes(c)
        c.model.width = 8
        c.eval.sliding_window = False
        c.num_train_steps = 600
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
        c.optimizer.base_lr = 0.05
        c.optimizer.weight_decay = 1e-4
    return c
