r"""TensorMask (Chen, Girshick, He, Dollár, ICCV 2019) instance segmentation: detectron2's COCO 6x
recipe and a CPU demo.

Presets (`--config=experiments/configs/tensormask.py:PRESET`); `config.task = "instance"` (the same
task, COCOeval and pictures as Mask R-CNN):

* default (no preset): detectron2's `tensormask_R_50_FPN_6x` — `tensormask_resnet50_fpn`
  (ImageNet-initialised ResNet-50: `--config.init_from=` a `convert_torchvision --model=resnet50`
  directory; stem and layer1 fixed, BatchNorm frozen), batch 16, SGD momentum 0.9, lr 0.02 with
  linear warm-up over 1000 steps and x0.1 at 480k and 520k of 540k steps, weight decay 1e-4,
  horizontal flips, scale augmentation; COCO 2017 (`coco2017`, built from a manual directory).
  Published (detectron2's TensorMask README, COCO val2017): R50-FPN 1x 37.6 box AP / 32.4 mask
  AP; 6x 41.4 / 35.8. Deviations: the shorter side is drawn from 640-800 in detectron2, here
  images are rescaled by 1.0-1.67 and cropped to 800x800 (segjax's relative scaling, as the Mask
  R-CNN recipe); `mask_slots` bounds the windows per level, anchor and image that get a mask loss
  (256 here; positives past it count in the normaliser only). Needs accelerators; not measured here.

      python -m experiments.train --workdir=/tmp/tensormask_coco \
        --config=experiments/configs/tensormask.py --config.init_from=/tmp/r50

* `demo`: a narrow TensorMask (`tensormask_resnet18_fpn`: ResNet-18 at width 32, FPN 64) on P2-P5
  with windows of 24-256 pixels (the synthetic objects are 15-65 pixels), trained from scratch on
  the built-in `synthetic_shapes` (instance view, 128x128), on a CPU. Its towers have GroupNorm
  (`model.head_norm="GN"`): detectron2's unnormalised 4-conv towers with N(0, 0.01) weights, at
  this width and from scratch, pass almost no signal and learn only the class prior (measured:
  mask AP 0.0 at step 250, logits within 0.7 of each other over all windows).

      python -m experiments.train --workdir=/tmp/tensormask_demo \
        --config=experiments/configs/tensormask.py:demo

  Measured (2026-12-07, 2 CPU cores shared with tests, 23 min): mask AP 0.775 (AP50 1.00, AP75
  0.99), box AP 0.879 at step 1000; 0.687 at step 250.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import maskrcnn

PRESETS = ("", "demo")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS; "" is detectron2's COCO 6x recipe)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for tensormask.py; presets: {PRESETS}")
    c = maskrcnn.get_config(preset)  # the instance task, data, schedule shape and demo budget
    keep = {"name", "trainable_backbone_layers"}
    for key in list(c.model.keys()):
        if key not in keep:
            del c.model[key]
    c.model.name = "tensormask_resnet50_fpn"
    c.model.mask_slots = 256
    c.num_train_steps = 540_000
    c.optimizer.boundaries = (480_000, 520_000)
    c.checkpoint_every_steps = 10_000
    c.eval_every_steps = 20_000
    if preset == "demo":
        c.model.name = "tensormask_resnet18_fpn"
        c.model.trainable_backbone_layers = None
        c.model.anchor_sizes = ((24, 32), (48, 64), (96, 128), (192, 256))
        c.model.mask_slots = 32
        c.model.head_norm = "GN"  # narrow towers from scratch: see TensorMaskHead
        c.model.topk_candidates = 1000
        c.model.detections_per_img = 30
        c.num_train_steps = 1000
        c.optimizer.boundaries = (750,)
        c.optimizer.warmup_steps = 100
        c.eval_every_steps = 500
        c.checkpoint_every_steps = 500
    return c
