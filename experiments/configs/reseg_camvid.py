r"""ReSeg (Visin et al., CVPR Workshops 2016: ReNet layers on VGG-16 features) on CamVid.

Presets (`--config=experiments/configs/reseg_camvid.py:PRESET`):

* default (no preset): the authors' CamVid recipe (the paper defers its hyperparameters to
  github.com/fvisin/reseg, `evaluate_camvid_with_cb.py`): `reseg_vgg16` with its defaults (VGG-16
  up to conv3_3 with frozen ImageNet weights, 2 ReNet layers of 100 GRU units per direction on
  1 x 1 patches, 2 transposed convs of 50 filters, 2 x 2 stride 2), whole 360 x 480 images, batch 5,
  no augmentation, no weight decay, median-frequency class balancing. Reported on the CamVid test
  set (11 classes): 58.8% mIoU, 88.7% global accuracy. Differences: the authors train with
  Adadelta and early stopping (patience 500 updates, up to 5000 epochs); segjax's optimizer is SGD
  (momentum 0.9, lr 0.01 poly 0.9, 30k steps, about 400 epochs of the 367 training images), and
  it crops squares, so each image is padded to 480 x 480 with the ignore label (scale fixed at 1).
  Not measured here.

  segjax has no CamVid builder: `camvid` in segjax/data/datasets.py holds the label facts of
  SegNet's 360 x 480 release (11 classes, 11 'Unlabelled' -> ignore) and its notes say how to plug
  a TFDS builder in (a builder named `camvid` with `image`, `segmentation_mask`, `image_id`;
  splits train/validation/test; the paper's numbers are on test, so evaluate that split for them).
  ImageNet VGG-16 for the frozen backbone: convert torchvision's `vgg16` with
  `segjax.models.backbones.vgg.vgg16_variables_from_torch(sd, include_fc=False)`, keep conv1_1 ..
  conv3_3 and save them with `segjax.models.torchvision_import.save_converted` to /tmp/vgg16_conv3.

      python -m experiments.train --workdir=/tmp/reseg_camvid \
        --config=experiments/configs/reseg_camvid.py --config.init_from=/tmp/vgg16_conv3

* `shapes`: `reseg_vgg16` at backbone width 8 with 16 GRU units per direction and 16-filter
  upsampling on synthetic shapes, trained from scratch (nothing frozen): the CPU-sized check of the
  recipe. Not measured beyond a smoke run.

      python -m experiments.train --workdir=/tmp/reseg_shapes \
        --config=experiments/configs/reseg_camvid.py:shapes
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "shapes")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for reseg_camvid.py; presets: {PRESETS}")
    c = base_config()
    c.model.name = "reseg_vgg16"  # the authors' CamVid model (its defaults)
    c.dataset.name = "camvid"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"  # the paper's numbers are on "test"
    c.dataset.crop_size = 480  # whole 360 x 480 images, padded to a square with the ignore label
    c.dataset.min_scale = 1.0
    c.dataset.max_scale = 1.0
    c.dataset.hflip = False
    c.batch_size = 5
    c.num_train_steps = 30_000
    c.eval_every_steps = 1_000
    c.checkpoint_every_steps = 1_000
    c.optimizer.base_lr = 0.01
    c.optimizer.weight_decay = 0.0
    c.optimizer.freeze_backbone = True  # the authors keep the ImageNet VGG-16 layers fixed
    c.loss.class_weights = "median_frequency"
    c.eval.pad_to = 480
    c.eval.batch_size = 5
    c.eval.sliding_window = False
    if preset == "shapes":
        use_synthetic_shapes(c)
        c.model.backbone_width = 8
        c.model.hidden = 16
        c.model.upsample_filters = (16, 16)
        c.dataset.hflip = True
        c.batch_size = 8
        c.num_train_steps = 600
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
        c.optimizer.base_lr = 0.05
        c.optimizer.weight_decay = 1e-4
        c.optimizer.freeze_backbone = False  # random init: nothing pretrained to keep
        c.loss.class_weights = ""
        c.eval.batch_size = 8
    return c
