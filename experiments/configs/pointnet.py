r"""PointNet part segmentation (`segjax.tasks.pointcloud`, model `pointnet_seg` with the category one-hot).

Default preset: the paper's ShapeNet-part recipe as far as segjax's trainer can express it (Qi et al.,
CVPR 2017, Sec. 5.1 and the supplementary; 83.7 instance mIoU reported on the test split): 2048 points
per shape, batch 32, 200 epochs over the train split (12,137 shapes: 380 steps an epoch), the
learning rate halved every 20 epochs, the feature-transform regulariser weighted 0.001. The paper uses
Adam at 0.001; segjax's optimiser is SGD with momentum (`segjax.train.optim`), so this preset runs
SGD momentum 0.9 at 0.01 (not tuned: expect to differ from 83.7 until it is). Build the data first:

    python -m segjax.data prepare shapenet_part --data_dir=DATA_DIR --manual_dir=MANUAL_DIR
    python -m experiments.train --workdir=/tmp/pointnet --config=experiments/configs/pointnet.py \
      --config.dataset.data_dir=DATA_DIR

Preset `demo` (no download, minutes on 2 CPU cores): `synthetic_parts` (4 categories, 10 parts,
1024 points per object), a width-16 PointNet (every layer a quarter of the paper's), 512 points per
training shape, batch 16, 600 steps:

    python -m experiments.train --workdir=/tmp/pointnet_demo --config=experiments/configs/pointnet.py:demo

Measured (seed 0, about 7 minutes on 2 shared CPU cores): instance mIoU 0.602 at step 600 (0.522 at
300), point accuracy 0.828; per category airplane 0.15, lamp 0.85, mug 0.46 (the handle is never
predicted), table 0.95.
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config

PRESETS = ("default", "demo")
SHAPENET_TRAIN_SHAPES = 12_137  # the release's train list


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for pointnet.py; presets: {PRESETS}")
    c = base_config("pointcloud")
    c.model.name = "pointnet_seg"
    c.model.num_categories = 16  # ShapeNet-part's categories: their one-hot joins the global feature
    c.dataset.name = "shapenet_part"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "test"
    c.parallelism = "mesh"
    c.batch_size = 32
    steps_per_epoch = -(-SHAPENET_TRAIN_SHAPES // c.batch_size)
    c.num_train_steps = 200 * steps_per_epoch
    c.log_every_steps = 100
    c.eval_every_steps = 10 * steps_per_epoch
    c.checkpoint_every_steps = 10 * steps_per_epoch
    c.optimizer.base_lr = 0.01
    c.optimizer.schedule = "step"
    c.optimizer.boundaries = tuple(e * steps_per_epoch for e in range(20, 200, 20))
    c.optimizer.decay_factor = 0.5
    c.optimizer.weight_decay = 0.0
    c.eval.batch_size = 32
    c.eval.num_visualizations = 0
    c.pointcloud.num_points = 2048
    c.pointcloud.eval_points = 3000
    if preset == "demo":
        c.dataset.name = "synthetic_parts"
        c.dataset.train_split = "train"
        c.dataset.eval_split = "validation"
        c.model.num_categories = 4
        c.model.width = 16
        c.batch_size = 16
        c.num_train_steps = 600
        c.log_every_steps = 50
        c.eval_every_steps = 300
        c.checkpoint_every_steps = 300
        c.keep_checkpoints = 1
        c.optimizer.base_lr = 0.02
        c.optimizer.boundaries = (400,)
        c.eval.batch_size = 16
        c.pointcloud.num_points = 512
        c.pointcloud.eval_points = 1024
    return c
