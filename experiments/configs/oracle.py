r"""A mask-quality oracle (Fernandes, Cruz & Cardoso, IJCNN 2018): the "oracle" task.

The oracle learns the Dice of (image, degraded mask) pairs derived from a segmentation dataset
(`segjax.tasks.oracle`, `segjax.data.degrade`); `experiments.oracle_refine` then segments by
gradient ascent of its output on the mask (`segjax.tasks.oracle_refine`). The oracle has no
mIoU: its metric is Spearman's rho between predicted and true Dice on degraded validation masks.

    python -m experiments.train --workdir=/tmp/oracle --config=experiments/configs/oracle.py:demo

Presets:
* default: the authors' recipe as far as it is published: 128x128 inputs, the gossip network,
  sigmoid + MSE against Dice, degradations calibrated to a uniform Dice; on synthetic shapes
  (point `dataset.name` at another registered dataset to train on it), 20k steps of batch 32.
  Not measured.
* `demo`: a small gossip oracle (base_features 8, depth 4) on synthetic_shapes, 128x128, batch
  16, 600 steps: ~15 minutes on 2 shared CPU cores. Measured in docs/oracle.md (Spearman on held-out degraded
  masks).
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "demo")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for oracle.py; presets: {PRESETS}")
    c = base_config("oracle")
    use_synthetic_shapes(c, crop_size=128)  # the authors' 128x128 inputs
    c.dataset.min_scale = 1.0  # no rescaling: the degradations' pixel radii keep their meaning
    c.dataset.max_scale = 1.0
    c.model.name = "oracle_gossip"  # or oracle_single / oracle_dual
    c.model.base_features = 16
    c.model.depth = 4
    c.model.hidden = 128
    c.model.dropout = 0.0
    c.oracle.calibration_masks = 64  # train masks fitting the Dice-uniform degradation mix
    c.oracle.eval_copies = 2  # degradations drawn per validation image
    c.oracle.background = 0  # class never picked while another is present
    c.batch_size = 32
    c.num_train_steps = 20_000
    c.log_every_steps = 100
    c.eval_every_steps = 2_000
    c.checkpoint_every_steps = 2_000
    c.optimizer.base_lr = 0.02
    c.optimizer.weight_decay = 1e-4
    c.eval.batch_size = 32
    if preset == "demo":
        c.model.base_features = 8
        c.batch_size = 16
        c.eval.batch_size = 16
        c.num_train_steps = 600
        c.log_every_steps = 50
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
    return c
