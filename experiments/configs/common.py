"""The shared base config: every key `segjax.train.loop.train_and_evaluate` reads.

Experiment files import `base_config()` and override a few fields (flax/examples style). Every
field is commented here once. The config is locked by `config_flags`, so a misspelt
`--config.KEY=VALUE` fails with the key's name. Optional integers are `placeholder(int)` so that
they can be set from the command line.

Step counts: `num_train_steps`, `log_every_steps`, `eval_every_steps` and
`checkpoint_every_steps` may instead be given as `*_epochs` or `*_examples` (set the `_steps`
field to None); `segjax.train.config_utils.get_steps` turns them into steps.
"""

from __future__ import annotations

import ml_collections

placeholder = ml_collections.config_dict.placeholder


def base_config() -> ml_collections.ConfigDict:
    """Returns the base config (DeepLab v3+ R101 on VOC train_aug; files override fields)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # fixes parameter init, dropout and every random augmentation
    c.task = "semantic"  # a name in segjax.tasks.TASKS: what is learned and how it is scored
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
    # Instance tasks: ground-truth slots per image (an image with more fails, naming the key).
    c.dataset.max_instances = placeholder(int)
    # k-fold cross-validation (ablations: --sweep=dataset.fold=0,1,2,3,4): when set, train on the
    # other folds of train_split and evaluate on this one (eval_split is then unused). The
    # partition depends only on fold_seed, so runs with different seeds share it.
    c.dataset.fold = placeholder(int)
    c.dataset.num_folds = 5
    c.dataset.fold_seed = 0
    # Leave-p-out instead of k-fold: set to p; fold then picks one of the C(n, p) held-out
    # p-subsets of train_split (all of them over fold = 0 .. C(n, p) - 1, in a fold_seed order).
    c.dataset.leave_out = placeholder(int)

    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "ce"  # "ce", "focal", "dice", "lovasz", "ohem"
    c.loss.aux_weight = 0.4  # weight of "aux_logits" when the model has them
    c.loss.label_smoothing = 0.0  # ce/ohem only
    # Options of one loss kind (None: the loss's default); a set field the kind does not take
    # fails naming it.
    c.loss.gamma = placeholder(float)  # focal: (1 - p)^gamma (default 2)
    c.loss.thresh = placeholder(float)  # ohem: keep pixels with p(true class) < thresh (0.7)
    c.loss.top_k = placeholder(float)  # ohem: keep this fraction of the hardest pixels instead
    c.loss.min_kept = placeholder(int)  # ohem: at least this many pixels per image (mmseg)
    # "" (none), "median_frequency" or "inverse_frequency" (from the training split's pixel
    # counts, segjax.data.balance.loss_class_weights), or K comma-separated weights.
    c.loss.class_weights = ""

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
    c.eval.tta = False  # multi-scale + flip, softmax averaged at the original resolution
    c.eval.tta_scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    c.eval.tta_flip = True
    c.eval.sliding_window = False  # predict window x window tiles with the given stride
    c.eval.window = 513
    c.eval.stride = 341
    c.eval.boundary_iou = True  # also report Boundary IoU (Cheng et al. 2021, 2% of the diagonal)
    c.eval.num_visualizations = 4  # images written to predictions/ and TensorBoard per eval

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # "host:port" ("" = single process or env vars)
    c.distributed.num_processes = placeholder(int)
    c.distributed.process_id = placeholder(int)
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
    c.eval.window = crop_size
    c.eval.stride = crop_size // 2
    c.parallelism = "mesh"
    return c
