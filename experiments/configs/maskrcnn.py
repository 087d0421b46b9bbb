r"""Mask R-CNN (He et al. 2017) instance segmentation: the COCO 1x recipe and a CPU demo.

Presets (`--config=experiments/configs/maskrcnn.py:PRESET`); `config.task = "instance"`:

* default (no preset): torchvision's / Detectron's R50-FPN 1x COCO recipe. `maskrcnn_resnet50_fpn`
  (ImageNet-initialised ResNet-50: `--config.init_from=` a `convert_torchvision --model=resnet50`
  directory), batch 16, SGD momentum 0.9, lr 0.02 with linear warm-up over 1000 steps and x0.1 at
  60k and 80k of 90k steps, weight decay 1e-4, horizontal flips; COCO 2017 (`coco2017`, built from
  a manual directory). Published: torchvision 37.9 box AP / 34.6 mask AP, Detectron2 38.6 / 35.2
  (COCO val2017). Deviations: images are randomly rescaled by 1.0-1.67 and cropped to 800x800
  (segjax's pipelines scale relative to the image; COCO's ~640x480 images then have their shorter
  side between about 480 and 800, where the recipe resizes it to exactly 800). As torchvision with
  a pretrained backbone (`model.trainable_backbone_layers=3`): the backbone's BatchNorm is frozen
  (running statistics, fixed scale/offset), conv1 and layer1 are fixed and get no gradient.
  Needs accelerators; not measured here.

      python -m experiments.train --workdir=/tmp/maskrcnn_coco \
        --config=experiments/configs/maskrcnn.py --config.init_from=/tmp/r50

* `demo`: a narrow Mask R-CNN (`maskrcnn_resnet18_fpn`: ResNet-18 at width 32, FPN 64) trained
  from scratch on the built-in `synthetic_shapes` (instance view, 128x128), on a CPU.

      python -m experiments.train --workdir=/tmp/maskrcnn_demo \
        --config=experiments/configs/maskrcnn.py:demo
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "demo")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS; "" is the COCO 1x recipe)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for maskrcnn.py; presets: {PRESETS}")
    c = base_config("instance")
    c.model.name = "maskrcnn_resnet50_fpn"
    c.model.trainable_backbone_layers = 3  # torchvision's default with a pretrained backbone
    c.dataset.name = "coco2017"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.crop_size = 800
    c.dataset.min_scale = 1.0
    c.dataset.max_scale = 1.67
    c.instance.max_instances = 100
    c.batch_size = 16
    c.num_train_steps = 90_000
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 5_000
    c.optimizer.base_lr = 0.02
    c.optimizer.schedule = "step"
    c.optimizer.boundaries = (60_000, 80_000)
    c.optimizer.warmup_steps = 1000
    c.optimizer.weight_decay = 1e-4
    c.eval.batch_size = 8
    c.eval.pad_to = 800

    if preset == "demo":
        use_synthetic_shapes(c, crop_size=128)
        c.instance.max_instances = 8
        c.model.name = "maskrcnn_resnet18_fpn"
        c.model.trainable_backbone_layers = None  # from scratch: everything trains
        # A 2-core CPU budget: at most 8 objects per 128x128 image need neither torchvision's
        # 2000 proposals nor 512 sampled ROIs (128 of them mask-head slots) per image.
        c.model.rpn_pre_nms_top_n_train = c.model.rpn_post_nms_top_n_train = 1000
        c.model.rpn_pre_nms_top_n_test = c.model.rpn_post_nms_top_n_test = 500
        c.model.box_batch_size_per_image = 128
        c.model.box_detections_per_img = 30
        c.batch_size = 8
        c.num_train_steps = 600
        c.log_every_steps = 25
        c.eval_every_steps = 300
        c.checkpoint_every_steps = 300
        c.optimizer.base_lr = 0.02
        c.optimizer.boundaries = (450,)
        c.optimizer.warmup_steps = 50
        c.eval.batch_size = 8
    return c
