"""The shared base config: the trainer's keys plus the sections of the run's task.

Experiment files call `base_config(task)` and override a few fields (flax/examples style). The
trainer's keys are declared and commented once in `segjax/train/defaults.py`; each task declares
its own sections with their defaults where it is registered (`segjax.tasks.register(...,
defaults=...)`: the semantic task's `loss` and `eval.tta*`, the instance task's `instance`, ...).
The config is locked by `config_flags`, so a misspelt `--config.KEY=VALUE` fails with the key's
name, and a key neither declares fails the config check.
"""

from __future__ import annotations

import ml_collections

from segjax import tasks
from segjax.train import config_utils
from segjax.train.defaults import placeholder, trainer_defaults  # noqa: F401 (re-exported)


def base_config(task: str = "semantic", imports: tuple[str, ...] = ()
                ) -> ml_collections.ConfigDict:
    """The trainer's defaults (DeepLab v3+ R101 on VOC train_aug) with `task`'s sections.

    `imports`: the user's modules that register models, losses, tasks or datasets; imported now
    (a task of theirs must be known to supply its sections) and recorded as `config.imports`.
    """
    c = trainer_defaults()
    c.imports = tuple(imports)
    config_utils.import_plugins(c)
    c.task = task
    for key, value in tasks.task_defaults(task).items():
        if key in c:  # a section the trainer shares (eval): the task adds its keys
            c[key].update(value)
        else:
            c[key] = value
    return c


def use_synthetic_shapes(c: ml_collections.ConfigDict, name: str = "synthetic_shapes",
                         crop_size: int = 64) -> ml_collections.ConfigDict:
    """Points `c` at the built-in synthetic shapes dataset (128x128 images, no download)."""
    c.dataset.name = name
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.crop_size = crop_size
    c.dataset.min_scale = 0.75
    c.dataset.max_scale = 1.25
    c.eval.pad_to = 128
    if "window" in c.eval:  # the semantic task's sliding window
        c.eval.window = crop_size
        c.eval.stride = crop_size // 2
    c.parallelism = "mesh"
    return c


def use_volumes(c: ml_collections.ConfigDict, name: str, patch_size: tuple[int, int, int],
                in_channels: int) -> ml_collections.ConfigDict:
    """Points a `volumetric` task config at volumetric dataset `name` (train / validation
    splits) with training patches (and evaluation windows) of `patch_size` (D, H, W) and a model
    of `in_channels` (the dataset's channels). The 2-D `crop_size` and `pad_to` are unused by the
    task; they are set to the patch's height to stay meaningful in config.json."""
    c.dataset.name = name
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.crop_size = patch_size[1]
    c.dataset.hflip = False
    c.eval.pad_to = patch_size[1]
    c.volumetric.patch_size = tuple(patch_size)
    c.model.in_channels = in_channels
    c.parallelism = "mesh"
    return c
