"""The trainer's config: every key `segjax.train.loop.train_and_evaluate` reads, with its default.

A run's config is these keys plus the sections its task declares (`segjax.tasks.register(...,
defaults=...)`); `experiments/configs/common.py:base_config(task)` assembles the two, and
experiment files override a few fields (flax/examples style). Every field is commented here once.
The config is locked by `config_flags`, so a misspelt `--config.KEY=VALUE` fails with the key's
name, and `segjax.train.config_utils.check_config` refuses a key that neither the trainer nor the
task declares. Optional integers are `placeholder(int)` so that they can be set from the command
line.

Step counts: `num_train_steps`, `log_every_steps`, `eval_every_steps` and
`checkpoint_every_steps` may instead be given as `*_epochs` or `*_examples` (set the `_steps`
field to None); `segjax.train.config_utils.get_steps` turns them into steps.

The `model` section is open: every field but `name` is an override of that model's factory,
checked by `segjax.models.create_model`; the `optimizer` section is checked against
`segjax.train.optim.create_optimizer`'s arguments.
"""

from __future__ import annotations

import ml_collections

placeholder = ml_collections.config_dict.placeholder
# Sections whose keys are checked elsewhere (model: the factory's signature; optimizer:
# create_optimizer's), not against the defaults below.
OPEN_SECTIONS = ("model", "optimizer")
# Step-count keys given as epochs or examples instead of steps (`config_utils.get_steps`).
STEP_UNITS = tuple(f"{name}_{unit}" for name in ("num_train", "log_every", "eval_every",
                                                  "checkpoint_every")
                   for unit in ("steps", "epochs", "examples"))


# Ranges of the trainer's keys that have one, as intervals ("[1, inf)": >= 1; "(0, 1]": > 0 and
# <= 1; "... or None": None is allowed too). The type of every key is its default's (a
# placeholder's declared type); `segjax.train.config_utils.check_values` checks both. A task
# declares the ranges of its own sections where it is registered (`segjax.tasks.register`).
RANGES = {
    "seed": "[0, inf)",
    # A step count is > 0 (`config_utils.get_steps`); None when given as *_epochs / *_examples.
    "num_train_steps": "(0, inf) or None",
    "log_every_steps": "(0, inf) or None",
    "eval_every_steps": "(0, inf) or None",
    "checkpoint_every_steps": "(0, inf) or None",
    "batch_size": "[1, inf)",
    "keep_checkpoints": "[1, inf)",
    "model.output_stride": "[1, inf) or None",
    "dataset.crop_size": "[1, inf)",
    "dataset.min_scale": "(0, inf)",
    "dataset.max_scale": "(0, inf)",
    "dataset.num_train_examples": "[1, inf) or None",
    "dataset.fold": "[0, inf) or None",
    "dataset.num_folds": "[2, inf)",
    "dataset.leave_out": "[1, inf) or None",
    "optimizer.base_lr": "[0, inf)",
    "optimizer.decay_factor": "[0, inf)",
    "optimizer.warmup_steps": "[0, inf)",
    "optimizer.power": "[0, inf)",
    "optimizer.end_lr": "[0, inf)",
    "optimizer.momentum": "[0, 1)",
    "optimizer.weight_decay": "[0, inf)",
    "optimizer.backbone_lr_mult": "[0, inf)",
    "eval.batch_size": "[1, inf)",
    "eval.pad_to": "[1, inf)",
    "eval.num_visualizations": "[0, inf)",
    "distributed.num_processes": "[1, inf) or None",
    "distributed.process_id": "[0, inf) or None",
}


def trainer_defaults() -> ml_collections.ConfigDict:
    """The trainer's keys with their defaults (the DeepLab v3+ R101 VOC recipe's values)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # fixes parameter init, dropout and every random augmentation
    # Modules imported before anything is built: the user's own models, losses, tasks and
    # datasets (registered on import). Recorded in config.json, so that a run read back
    # (predict, resume, init_from) imports them too. They must be importable (PYTHONPATH).
    c.imports = ()
    c.task = "semantic"  # a name in segjax.tasks.available_tasks(): what is learned and scored
    c.parallelism = "pmap"  # "pmap" (sync BN via axis_name) or "mesh" (jit over a device Mesh)
    c.batch_size = 16  # global batch (all devices, all processes)
    c.num_train_steps = 30_000
    c.num_train_epochs = placeholder(float)  # alternative to num_train_steps (set that to None)
    c.log_every_steps = 50  # train lines in metrics.jsonl and the console progress line
    c.eval_every_steps = 2_000  # full val evaluation (also at the last step)
    c.checkpoint_every_steps = 2_000  # also at the last step and after every eval
    c.keep_checkpoints = 3  # the last N steps are kept, plus the best by val mIoU
    # "" = from scratch; a dir written by `python -m segjax.tools.convert_torchvision`, or the work
    # dir of another segjax run (its newest checkpoint: transfer between datasets/configs).
    c.init_from = ""

    c.model = ml_collections.ConfigDict()
    c.model.name = "deeplabv3plus_resnet101"  # a name from segjax.models.available_models()
    # Every other model field is passed to create_model as an override unless it is None.
    c.model.output_stride = placeholder(int)
    c.model.dtype = "float32"  # compute dtype ("bfloat16" on accelerators)

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "voc2012"  # or "synthetic_shapes[/config]"
    c.dataset.data_dir = ""  # TFDS data dir ("" = TFDS default, ~/tensorflow_datasets)
    c.dataset.train_split = "train_aug"
    c.dataset.eval_split = "val"
    c.dataset.crop_size = 513  # random crops of crop_size x crop_size
    c.dataset.min_scale = 0.5  # random rescale range before cropping
    c.dataset.max_scale = 2.0
    c.dataset.hflip = True
    c.dataset.photometric = False  # colour jitter
    c.dataset.class_balanced = False
    # Train on only the first N examples of train_split (after the fold); None = all of them.
    c.dataset.num_train_examples = placeholder(int)
    # k-fold cross-validation (ablations: --sweep=dataset.fold=0,1,2,3,4): when set, train on the
    # other folds of train_split and evaluate on this one (eval_split is then unused). The
    # partition depends only on fold_seed, so runs with different seeds share it.
    c.dataset.fold = placeholder(int)
    c.dataset.num_folds = 5
    c.dataset.fold_seed = 0
    # Leave-p-out instead of k-fold: set to p; fold then picks one of the C(n, p) held-out
    # p-subsets of train_split (all of them over fold = 0 .. C(n, p) - 1, in a fold_seed order).
    c.dataset.leave_out = placeholder(int)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.base_lr = 0.007
    c.optimizer.schedule = "poly"  # or "step": x decay_factor at each of boundaries (detection)
    c.optimizer.boundaries = ()  # steps of the "step" schedule, e.g. (60_000, 80_000)
    c.optimizer.decay_factor = 0.1
    c.optimizer.warmup_steps = 0
    c.optimizer.power = 0.9  # poly decay: lr = base_lr * (1 - step / num_steps) ** power
    c.optimizer.end_lr = 0.0  # poly floor (mmsegmentation: min_lr)
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4  # coupled L2 (added to the gradient), as torch SGD
    c.optimizer.decay_norm_and_bias = False
    c.optimizer.backbone_lr_mult = 1.0
    c.optimizer.freeze_backbone = False

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 8  # global eval batch
    c.eval.pad_to = 512  # eval images are padded to pad_to x pad_to (must cover the largest)
    c.eval.num_visualizations = 4  # images written to predictions/ and TensorBoard per eval

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # "host:port" ("" = single process or env vars)
    c.distributed.num_processes = placeholder(int)
    c.distributed.process_id = placeholder(int)
    return c
