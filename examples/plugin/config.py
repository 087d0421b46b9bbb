r"""An out-of-tree config: the user's model, loss, task and dataset (`my_segmentation.py`).

    PYTHONPATH=examples/plugin python -m experiments.train --workdir=/tmp/plugin \
      --config=examples/plugin/config.py
    PYTHONPATH=examples/plugin python -m experiments.predict --run=/tmp/plugin \
      --images='imgs/*.png' --workdir=/tmp/plugin_pred

Trains `tiny_fcn` with the Tversky loss on `shapes_fg` (segjax's generated 48x48 shapes, one
foreground class) for 200 steps on a CPU (about a minute); the foreground IoU it reaches is
printed at each evaluation (not measured for the docs: this config demonstrates the plugin
mechanism, and tests/test_plugins.py runs it end to end).
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    """The plugin demo's config."""
    c = base_config("foreground", imports=("my_segmentation",))
    c.parallelism = "mesh"  # tiny_fcn has no BatchNorm to synchronise (and no axis_name)
    c.model.name = "tiny_fcn"
    c.model.features = 16
    c.dataset.name = "shapes_fg"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.crop_size = 32
    c.dataset.min_scale = c.dataset.max_scale = 1.0
    c.eval.pad_to = 48
    c.eval.batch_size = 8
    c.batch_size = 8
    c.num_train_steps = 200
    c.log_every_steps = 20
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.optimizer.base_lr = 0.05
    return c
