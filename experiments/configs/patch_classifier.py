r"""The first deck's patch classifier (Farabet et al. 2013's single-scale network) on synthetic
shapes.

Trained through its fully convolutional twin (`PatchClassifier.__call__`): the cross-entropy of
every pixel's patch at once, which is the sliding-window classifier's loss over all patches with
the features shared (tests/models/test_patch.py: the same outputs and gradients both ways).
`python -m experiments.benchmarks.patch_vs_fcn` measures what the sharing saves.

Presets (`--config=experiments/configs/patch_classifier.py:PRESET`):

* default: Farabet et al.'s network (7x7 convolutions, 16/64/256 filters, 46x46 patches) on 64x64
  crops, 1500 steps of 16, SGD momentum 0.9, lr 0.01 poly. Farabet et al. trained it on Stanford
  Background, SIFT Flow and Barcelona (multi-scale, with superpixel/CRF post-processing; none of
  those datasets is in segjax); not measured here.
* `shapes`: a narrow CPU demo (5x5 convolutions, 16/32/64 filters, 32x32 patches), 500 steps of
  8 images.

      python -m experiments.train --workdir=/tmp/patch --config=experiments/configs/patch_classifier.py:shapes
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "shapes")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for patch_classifier.py; presets: {PRESETS}")
    c = base_config()
    use_synthetic_shapes(c, crop_size=64)
    c.model.name = "patch_classifier"
    c.model.features = (16, 64, 256)
    c.model.kernel = 7
    c.batch_size = 16
    c.num_train_steps = 1_500
    c.log_every_steps = 25
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.optimizer.base_lr = 0.01
    c.optimizer.weight_decay = 1e-4
    if preset == "shapes":
        c.model.features = (16, 32, 64)
        c.model.kernel = 5
        c.batch_size = 8
        c.num_train_steps = 500
        c.eval_every_steps = 250
        c.checkpoint_every_steps = 250
    return c
