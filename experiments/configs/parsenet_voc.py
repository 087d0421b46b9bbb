r"""ParseNet (Liu, Rabinovich & Berg 2015) on PASCAL VOC 2012 (+SBD `train_aug`).

Presets (`--config=experiments/configs/parsenet_voc.py:PRESET`):

* default (no preset): `parsenet_vgg16`, the global context module (global average pooling, L2
  normalisation with learned scales initialised to 10, unpool, concatenate) on fc7 of the
  LargeFOV-reduced VGG-16 at output stride 8, ImageNet VGG-16 init. The paper reports 69.8% mIoU
  on VOC 2012 *test* with the context module (also what public benchmark indexes list for it)
  against 67.0% for its FCN baseline without it (as cited in segjax issue 27's brief; not re-read
  from the paper here). The schedule is segjax's
  adaptation of DeepLab v1's (SGD momentum 0.9, lr 1e-3 poly 0.9, weight decay 5e-4, batch 20
  crops of 321, 20k steps), not the paper's: not measured here (needs accelerators and VOC).

      python -m experiments.deeplab_voc --workdir=/tmp/parsenet \
        --config=experiments/configs/parsenet_voc.py --config.init_from=/tmp/vgg16

  (write /tmp/vgg16 with `segjax.models.backbones.vgg.vgg16_variables_from_torch`, keeping only
  the conv layers: fc6/fc7 here are the reduced 3x3/1024 ones, re-initialised.)
* `baseline`: the same network without the context module (`model.context=False`), the paper's
  comparison.
* `context`: the same network and schedule on PASCAL-Context's 59 classes + background
  (`pascal_context`, FCN's protocol, which the paper follows: 40.4% mIoU with the context module
  against FCN-8s's 37.6%, as public benchmark indexes list them; not re-read from the paper).
  Build the data with `python -m segjax.data prepare pascal_context --manual_dir=...`
  (docs/data.md). Not measured here.
* `shapes`: `parsenet_resnet18` at width 16 on synthetic shapes, the CPU-sized check of the
  recipe (the same backbone and schedule as `fcn_voc.py:shapes`, so `--config.model.context=False`
  is the same-data ablation). Not measured beyond a smoke run.

      python -m experiments.train --workdir=/tmp/parsenet_shapes \
        --config=experiments/configs/parsenet_voc.py:shapes
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "baseline", "context", "shapes")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for parsenet_voc.py; presets: {PRESETS}")
    c = base_config()
    c.model.name = "parsenet_vgg16"
    c.model.output_stride = 8
    c.model.context = True  # the global context module (False: the paper's baseline)
    c.dataset.crop_size = 321
    c.batch_size = 20
    c.num_train_steps = 20_000
    c.optimizer.base_lr = 1e-3
    c.optimizer.power = 0.9
    c.optimizer.weight_decay = 5e-4
    c.eval.window = 321
    c.eval.stride = 214
    if preset == "baseline":
        c.model.context = False
    elif preset == "context":
        c.dataset.name = "pascal_context"
        c.dataset.train_split = "train"
        c.dataset.eval_split = "val"
        c.eval.pad_to = 512  # PASCAL-Context images are at most 500 x 500
    elif preset == "shapes":
        use_synthetic_shapes(c)
        c.model.name = "parsenet_resnet18"
        c.model.backbone_width = 16
        c.batch_size = 16
        c.num_train_steps = 600
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
        c.optimizer.base_lr = 0.05
        c.optimizer.weight_decay = 1e-4
    return c
