r"""EncNet (Zhang et al. 2018, context encoding + SE-loss) on Cityscapes.

Presets (`--config=experiments/configs/encnet_cityscapes.py:PRESET`):

* default (no preset): mmsegmentation's `encnet_r50-d8_512x1024_40k_cityscapes`: the context
  encoding module (K = 32 codewords, D = 512) on a dilated ResNet-50 (output stride 8), SE-loss
  weight 0.2 (`loss_se_decode`), auxiliary FCN loss on layer3 weight 0.4 (mmseg's
  `auxiliary_head`; the authors' PyTorch-Encoding scripts use 0.2), batch 8, lr 0.01 poly 0.9
  (min 1e-4), weight decay 5e-4 on every parameter, 40k steps, random rescale 0.5-2.0, whole-image
  evaluation. mmsegmentation's model zoo lists 75.67% val mIoU for it (ResNetV1c backbone; expect
  a little less with torchvision's ResNet-50). Differences: segjax crops squares, so the crop is
  768 x 768 (mmseg: 512 x 1024, the same area within 13%). Not measured here (needs
  accelerators and Cityscapes in TFDS).

      python -m segjax.tools.convert_torchvision --model=resnet50 \
        --weights=resnet50-0676ba61.pth --workdir=/tmp/r50
      python -m experiments.train --workdir=/tmp/encnet_r50 \
        --config=experiments/configs/encnet_cityscapes.py --config.init_from=/tmp/r50

* `r101`: the same recipe with ResNet-101 (mmsegmentation: 78.55% val mIoU at 40k steps).
* `context`: the paper's PASCAL-Context result, 51.7% mIoU on the 59 classes without background
  (EncNet-ResNet-101, SE-loss, multi-scale test; paper Table 3), on `pascal_context59`
  (`python -m segjax.data prepare pascal_context --manual_dir=...`, docs/data.md). The data side is
  mmsegmentation's `pascal_context` pipeline (images rescaled around 520, random scale 0.5-2.0,
  480 x 480 crops, whole-image evaluation); the schedule is its 80k one for PASCAL-Context (batch
  16, lr 0.004 poly 0.9, weight decay 1e-4); SE-loss 0.2 and auxiliary 0.2 as the authors'
  PyTorch-Encoding scripts. Not measured here.
* `shapes`: `encnet_resnet18` at width 16 (K = 8, D = 64) on synthetic shapes, the CPU-sized check
  of the recipe, with the SE-loss at 0.2. `--config.loss.se_weight=0` is the same-data ablation.

      python -m experiments.train --workdir=/tmp/encnet_shapes \
        --config=experiments/configs/encnet_cityscapes.py:shapes
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "r101", "context", "shapes")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for encnet_cityscapes.py; presets: {PRESETS}")
    c = base_config()
    c.model.name = "encnet_resnet50"
    c.model.output_stride = 8
    c.model.aux_loss = True
    c.model.se_loss = True  # the SE head ("se_logits"), trained with loss.se_weight
    c.dataset.name = "cityscapes"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.crop_size = 768
    c.batch_size = 8
    c.num_train_steps = 40_000
    c.eval_every_steps = 4_000
    c.checkpoint_every_steps = 4_000
    c.optimizer.base_lr = 0.01
    c.optimizer.end_lr = 1e-4
    c.optimizer.weight_decay = 5e-4
    c.optimizer.decay_norm_and_bias = True  # mmseg's SGD decays every parameter
    c.loss.aux_weight = 0.4
    c.loss.se_weight = 0.2
    c.eval.pad_to = 2048  # whole 1024 x 2048 images
    c.eval.batch_size = 8
    c.eval.window = 1024
    c.eval.stride = 683
    if preset == "r101":
        c.model.name = "encnet_resnet101"
    elif preset == "context":
        c.model.name = "encnet_resnet101"
        c.dataset.name = "pascal_context59"
        c.dataset.eval_split = "val"
        c.dataset.crop_size = 480
        c.batch_size = 16
        c.num_train_steps = 80_000
        c.eval_every_steps = 8_000
        c.checkpoint_every_steps = 8_000
        c.optimizer.base_lr = 0.004
        c.optimizer.weight_decay = 1e-4
        c.loss.aux_weight = 0.2
        c.eval.pad_to = 512  # PASCAL-Context images are at most 500 x 500
        c.eval.batch_size = 16
    elif preset == "shapes":
        use_synthetic_shapes(c)
        c.model.name = "encnet_resnet18"
        c.model.backbone_width = 16
        c.model.head_channels = 64
        c.model.num_codes = 8
        c.batch_size = 16
        c.num_train_steps = 600
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
        c.optimizer.base_lr = 0.05
        c.optimizer.end_lr = 0.0
        c.optimizer.weight_decay = 1e-4
        c.optimizer.decay_norm_and_bias = False
    return c
