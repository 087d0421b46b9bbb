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
* `lesion`: `demo` on `synthetic_lesions` (one lesion-like blob per 96x96 image, 2 classes: the
  paper's single-object PH2 setting without the download), 96x96 inputs. Measured in the
  `oracle_ascent` study (docs/oracle.md): from zeros after the paper's 500 ascent steps, Dice
  0.423 / 0.431 / 0.445 (seeds 0 / 1 / 2), and 0.753 / 0.651 / 0.674 with the TV prior
  (`oracle_refine --tv_weight=3`; mean 0.693); `lesion_adv` with `--tv_weight=1` (the weight
  chosen on validation) 0.724 / 0.782 / 0.721 (mean 0.742). The paper reports 0.739 on PH2.

    python -m experiments.train --workdir=/tmp/oracle_lesion \
      --config=experiments/configs/oracle.py:lesion
    python -m experiments.oracle_refine --oracle=/tmp/oracle_lesion --workdir=/tmp/refine_lesion \
      --steps=500 --num_images=32 --batch=32 --tv_weight=3

* `demo_adv`, `lesion_adv`: `demo` and `lesion` trained on their own ascent masks (the
  `oracle_adversarial` task, segjax/tasks/oracle_adversarial.py): every 4th example of each
  batch is the current oracle's mask after 1-5 ascent steps of 0.2 from zeros or from its
  degraded mask, with that mask's soft Dice as the target. Measured in docs/oracle.md ("An
  oracle its own ascent cannot fool").

    python -m experiments.train --workdir=/tmp/oracle_adv \
      --config=experiments/configs/oracle.py:demo_adv
    python -m experiments.oracle_refine --oracle=/tmp/oracle_adv --workdir=/tmp/refine_adv \
      --steps=150

* `ph2`: the default recipe on PH2 resized to 128x128 (`ph2/128`; the authors' 128x128 inputs,
  gossip network, Dice-uniform degradations), for a user who has PH2 in the manual directory
  (`python -m segjax.data prepare ph2/128 --manual_dir=...`, see segjax/data/builders/ph2.py).
  The authors then ascend 500 steps from an all-zero mask (Dice 0.0004 -> 0.739 on PH2):
  `python -m experiments.oracle_refine --oracle=DIR --workdir=OUT --steps=500 --num_images=50`.
  Not measured (PH2 is not on the CI machines).
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config, use_synthetic_shapes

PRESETS = ("", "demo", "lesion", "ph2", "demo_adv", "lesion_adv")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """Returns the config for `preset` (one of PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for oracle.py; presets: {PRESETS}")
    adversarial = preset.endswith("_adv")
    preset = preset.removesuffix("_adv")
    # The adversarial presets are their plain preset under the oracle_adversarial task, whose
    # extra section stays out of the plain presets (their resolved configs are unchanged).
    c = base_config("oracle_adversarial" if adversarial else "oracle")
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
    if preset == "ph2":
        c.dataset.name = "ph2/128"  # 100 / 50 / 50 cases: see segjax/data/builders/ph2.py
    if preset in ("demo", "lesion"):
        c.model.base_features = 8
        c.batch_size = 16
        c.eval.batch_size = 16
        c.num_train_steps = 600
        c.log_every_steps = 50
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
    if preset == "lesion":
        c.dataset.name = "synthetic_lesions"  # 96x96, 1000 train / 200 validation images
        c.dataset.crop_size = 96
        c.eval.pad_to = 96
    return c
