r"""V-Net (Milletari, Navab & Ahmadi, 3DV 2016) trained with its Dice loss, `volumetric` task.

Default preset: the paper's recipe on prostate MRI. The paper trains on PROMISE12 (50 T2 MR
volumes, whole prostate vs background) and reports Dice 0.869 ± 0.033 on the 30 challenge test
volumes (Table 1); segjax has no PROMISE12 builder, so the preset uses the closest dataset, the
Medical Segmentation Decathlon's Task05_Prostate (`msd/Task05_Prostate`: 32 labelled cases, 2
channels T2 and ADC, labels 1 peripheral zone and 2 transition zone, whose union is the
paper's prostate). Settings of the paper (Sec. 4): volumes of 128x128x64 voxels (here patches
of D, H, W = 64, 128, 128), mini-batches of 2, the Dice loss of eq. 1 (`vnet_dice`, every
class), SGD momentum 0.99, learning rate 1e-4 divided by 10 every 25k iterations (the total of
50k steps is ours). It evaluates with the sliding window (Gaussian, overlap 0.5). Its number on
Task05: not measured (needs the archive and GPU hours).

    export SEGJAX_MSD_ROOT=MANUAL   # holding Task05_Prostate.tar or its folder
    python -m experiments.train --workdir=/tmp/vnet_prostate --config=experiments/configs/vnet.py

Preset `demo`: `synthetic_volumes` (no download), V-Net at depth 2 with 8 base features, 16x32x32
patches, batch 4, 300 steps, the Dice loss, SGD momentum 0.99 with lr 0.01 (the paper's 1e-4 is
for its 25k+ iterations); not measured (about the cost of `unet3d.py:demo`, larger 5x5x5
convolutions).

    python -m experiments.train --workdir=/tmp/vnet_demo --config=experiments/configs/vnet.py:demo
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_volumes

PRESETS = ("", "demo")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for vnet.py; presets: {PRESETS}")
    c = base_config("volumetric")
    c.model.name = "vnet"
    c.volumetric.loss = "vnet_dice"
    c.optimizer.momentum = 0.99
    c.optimizer.weight_decay = 0.0
    if preset == "demo":
        use_volumes(c, "synthetic_volumes", (16, 32, 32), in_channels=1)
        c.model.base_features = 8
        c.model.depth = 2
        c.volumetric.panel_classes = (2, 3)  # the lesions
        c.volumetric.sw_batch_size = 4
        c.volumetric.empty_distance = 75.0  # the volume's diagonal in mm
        c.optimizer.base_lr = 0.01
        c.batch_size = 4
        c.num_train_steps = 300
        c.log_every_steps = 25
        c.eval_every_steps = 300
        c.checkpoint_every_steps = 300
        c.keep_checkpoints = 1
        c.eval.num_visualizations = 2
        return c
    use_volumes(c, "msd/Task05_Prostate", (64, 128, 128), in_channels=2)
    c.model.base_features = 16
    c.model.depth = 4
    c.optimizer.base_lr = 1e-4
    c.optimizer.schedule = "step"
    c.optimizer.boundaries = (25_000,)
    c.optimizer.decay_factor = 0.1
    c.batch_size = 2
    c.num_train_steps = 50_000
    c.log_every_steps = 250
    c.eval_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
    return c
