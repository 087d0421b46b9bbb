r"""3D U-Net (Çiçek et al., MICCAI 2016) with nnU-Net's training recipe, `volumetric` task.

Default preset: the Medical Segmentation Decathlon's Task01_BrainTumour (`msd/Task01_BrainTumour`,
4 MR channels FLAIR, T1w, T1gd, T2w; labels as its dataset.json lists them: 1 edema, 2
non-enhancing tumour, 3 enhancing tumour) with nnU-Net's settings (Isensee et al. 2021, Nat.
Methods 18:203): patches 128^3, batch 2, foreground oversampling 1/3, z-score normalisation over
the brain (non-zero voxels), CE + batch soft Dice over the foreground classes, SGD with Nesterov
momentum 0.99, lr 0.01 poly 0.9, weight decay 3e-5, 1000 epochs of 250 iterations (250k steps),
sliding-window evaluation with Gaussian weights and overlap 0.5. The network is the paper's 3D
U-Net (32 base features, 3 poolings, BatchNorm), not nnU-Net's deeper instance-norm U-Net, and
there is no data augmentation (nnU-Net rotates, scales, mirrors and alters intensities) or deep
supervision. Reported: nnU-Net on BraTS 2020 (the BraTS challenge data; labels 1 necrotic core,
2 edema, 4 enhancing tumour, scored as regions) Dice 88.95 whole tumour / 85.06 tumour core /
82.03 enhancing tumour. segjax reports per-label Dice and HD95 (the MSD labels, not the BraTS
regions: whole tumour = labels 1-3, core = 2-3, enhancing = 3, the last directly comparable);
segjax's number on Task01: not measured (needs the 7 GB archive and GPU days).

    export SEGJAX_MSD_ROOT=MANUAL   # holding Task01_BrainTumour.tar or its folder
    python -m experiments.train --workdir=/tmp/unet3d_brats --config=experiments/configs/unet3d.py

Preset `demo`: `synthetic_volumes` (32x48x48 MR-like volumes, organ + two lesion kinds, no
download), a small 3D U-Net (8 base features, 2 poolings), 16x32x32 patches, batch 4, 300 steps
with the same optimiser. Measured (seed 0): mean foreground Dice 0.899 (organ 0.985, lesion A
0.893, lesion B 0.818), mean HD95 10.1 mm, in 22 min on a 2-core CPU shared with other jobs
(628 s of CPU time; docs/volumetric.md, "Training"):

    python -m experiments.train --workdir=/tmp/unet3d_demo --config=experiments/configs/unet3d.py:demo
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_volumes

PRESETS = ("", "demo")


def nnunet_optimizer(c: ml_collections.ConfigDict) -> None:
    """nnU-Net's optimiser: SGD, Nesterov momentum 0.99, lr 0.01 poly 0.9, weight decay 3e-5."""
    c.optimizer.base_lr = 0.01
    c.optimizer.momentum = 0.99
    c.optimizer.nesterov = True
    c.optimizer.power = 0.9
    c.optimizer.weight_decay = 3e-5


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for unet3d.py; presets: {PRESETS}")
    c = base_config("volumetric")
    c.model.name = "unet3d"
    nnunet_optimizer(c)
    c.volumetric.loss = "ce_dice"
    if preset == "demo":
        use_volumes(c, "synthetic_volumes", (16, 32, 32), in_channels=1)
        c.model.base_features = 8
        c.model.depth = 2
        c.volumetric.normalize = "zscore"
        c.volumetric.panel_classes = (2, 3)  # the lesions
        c.volumetric.sw_batch_size = 4
        c.volumetric.empty_distance = 75.0  # the volume's diagonal in mm (BraTS's convention)
        c.batch_size = 4
        c.num_train_steps = 300
        c.log_every_steps = 25
        c.eval_every_steps = 300
        c.checkpoint_every_steps = 300
        c.keep_checkpoints = 1
        c.eval.num_visualizations = 2
        return c
    use_volumes(c, "msd/Task01_BrainTumour", (128, 128, 128), in_channels=4)
    c.model.base_features = 32
    c.model.depth = 3
    c.volumetric.normalize = "zscore_nonzero"
    c.batch_size = 2
    c.num_train_steps = 250_000
    c.log_every_steps = 250
    c.eval_every_steps = 25_000
    c.checkpoint_every_steps = 5_000
    return c
