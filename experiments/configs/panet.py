r"""PANet (Liu, Qi, Qin, Shi, Jia, CVPR 2018) instance segmentation: the authors' COCO 2x recipe and
a CPU demo on the same data and budget as Mask R-CNN's.

Presets (`--config=experiments/configs/panet.py:PRESET`); `config.task = "instance"` (the same task,
COCOeval and pictures as Mask R-CNN):

* default (no preset): the authors' `configs/panet/e2e_panet_R-50-FPN_2x_mask.yaml`
  (github.com/ShuLiu1993/PANet) — `panet_resnet50_fpn` (ImageNet-initialised ResNet-50:
  `--config.init_from=` a `convert_torchvision --model=resnet50` directory; stem and layer1 fixed,
  BatchNorm frozen), batch 16, SGD momentum 0.9, lr 0.02 with linear warm-up over 1000 steps and
  x0.1 at 120k and 160k of 180k steps, weight decay 1e-4, horizontal flips, multi-scale training;
  COCO 2017 (`coco2017`, built from a manual directory). Published (the authors' README, COCO
  2017 val, R-50 2x with multi-scale training): the paper's model 42.1 box AP / 37.8 mask AP,
  the PyTorch re-implementation 43.1 / 38.3. Deviations: the recipe draws the shorter side from
  {400, 600, 800, 1000, 1200} (longer side <= 1400) and tests at 1000; here images are rescaled by
  0.83-2.5 (COCO's ~480-pixel shorter side to 400-1200) and cropped to 1024x1024, and evaluated
  unresized as Mask R-CNN's recipe; the repository's GroupNorm in the FPN and heads is left out
  (the paper used synchronised BatchNorm; segjax's Mask R-CNN has neither); the box head is the
  paper's two fc layers (Fig. 6), where the repository's 2x config uses four convs and one fc.
  Needs accelerators; not measured here.

      python -m experiments.train --workdir=/tmp/panet_coco \
        --config=experiments/configs/panet.py --config.init_from=/tmp/r50

* `shapes`: a narrow PANet (`panet_resnet18_fpn`: ResNet-18 at width 32, FPN 64) trained from
  scratch on the built-in `synthetic_shapes` (instance view, 128x128), on a CPU: exactly
  `maskrcnn.py:demo` (same data, steps, schedule, RPN and ROI budgets) but for the model name, so
  the two compare like for like.

      python -m experiments.train --workdir=/tmp/panet_shapes \
        --config=experiments/configs/panet.py:shapes
"""

from __future__ import annotations

import ml_collections

from experiments.configs import maskrcnn

PRESETS = ("", "shapes")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS; "" is the authors' COCO 2x recipe)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for panet.py; presets: {PRESETS}")
    if preset == "shapes":
        c = maskrcnn.get_config("demo")
        c.model.name = "panet_resnet18_fpn"
        return c
    c = maskrcnn.get_config()  # the instance task, COCO data, optimiser, frozen backbone stages
    c.model.name = "panet_resnet50_fpn"
    c.dataset.crop_size = 1024
    c.dataset.min_scale = 0.83
    c.dataset.max_scale = 2.5
    c.num_train_steps = 180_000
    c.optimizer.boundaries = (120_000, 160_000)
    c.checkpoint_every_steps = 10_000
    c.eval_every_steps = 20_000
    return c
