"""The training loop: `train_and_evaluate(config, workdir)`.

One run trains `config.model` on `config.dataset` for `num_train_steps`, logging train metrics
every `log_every_steps` (`loss` is the mean over the steps since the previous log line or
checkpoint, so a resumed run logs the same numbers), evaluating on the eval split every `eval_every_steps` (and at the end),
and checkpointing every `checkpoint_every_steps` and at every eval. The work directory holds
`config.json`, `checkpoints/`, TensorBoard events, `metrics.jsonl` and `predictions/`.

Resume is exact: a rerun on the same work directory restores the newest checkpoint that
restores, drops `metrics.jsonl` lines written after it, and continues the train stream at that
step (the data pipeline's `start_step`; JAX keys are `config.seed` folded with the step). A kill
-9 and a rerun therefore end with the same metrics, bit for bit, as an uninterrupted run.

A non-finite loss stops the run with `NonFiniteLossError` naming the first bad step; nothing is
checkpointed after the last finite step.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import evaluate as eval_lib
from segjax import losses
from segjax import visualize
from segjax.models import create_model
from segjax.train import config_utils
from segjax.train import optim
from segjax.train import parallel as parallel_lib
from segjax.train import state as state_lib
from segjax.train.checkpoint import Checkpointer
from segjax.train.metric_writers import MetricWriter, Progress

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
PREDICTIONS_DIR = "predictions"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; `step` is the first such step."""

    def __init__(self, step: int, value: float, last_checkpoint: int | None):
        self.step = step
        super().__init__(
            f"loss is {value} at step {step}; training stopped. The last good checkpoint is "
            f"step {last_checkpoint} (lower optimizer.base_lr or check the data)"
            if last_checkpoint is not None else
            f"loss is {value} at step {step}; training stopped before any checkpoint was written "
            "(lower optimizer.base_lr or check the data)")


class IncompatibleWorkdirError(ValueError):
    """The work directory holds a run whose config differs in keys a resume may not change."""


# Failures with a message that says what to do: the CLI prints them without a traceback.
KNOWN_ERRORS = (NonFiniteLossError, IncompatibleWorkdirError, ValueError, FileNotFoundError)

# ---------------------------------------------------------------------------------- building


def dataset_info(config: ml_collections.ConfigDict):
    """`segjax.data.datasets.get_dataset_info` of `config.dataset.name`."""
    from segjax.data import datasets

    return datasets.get_dataset_info(config.dataset.name)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The segjax model named by `config.model` (every non-None field but `name` an override)."""
    return create_model(config.model.name, num_classes=num_classes,
                        **config_utils.model_overrides(config.model))


def optimizer_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`create_optimizer` keyword arguments from `config.optimizer` (unsupported keys fail)."""
    import inspect

    kwargs = config.optimizer.to_dict()
    accepted = inspect.signature(optim.create_optimizer).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"config.optimizer.{unknown[0]} is not an argument of "
                         "segjax.train.optim.create_optimizer")
    return kwargs


def loss_kwargs(config: ml_collections.ConfigDict,
                class_weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Keyword arguments of `segmentation_loss` from `config.loss` (None fields are unset).

    `config.loss.class_weights` is resolved by the caller (`resolve_class_weights`) and passed
    as `class_weights`.
    """
    import inspect

    cfg = config.loss.to_dict()
    kind = cfg.pop("kind")
    aux_weight = cfg.pop("aux_weight")
    cfg.pop("class_weights", None)
    if kind not in losses.LOSSES:
        raise ValueError(f"config.loss.kind={kind!r} is not one of {sorted(losses.LOSSES)}")
    accepted = inspect.signature(losses.LOSSES[kind]).parameters
    if class_weights is not None:
        cfg["class_weights"] = tuple(float(w) for w in class_weights)
    kw = {}
    for key, value in cfg.items():
        if value is None or (key == "label_smoothing" and value == 0):
            continue
        if key not in accepted:
            raise ValueError(f"config.loss.{key}={value!r} does not apply to loss kind {kind!r}")
        kw[key] = tuple(value) if isinstance(value, list) else value
    return {"kind": kind, "aux_weight": aux_weight, **kw}


def resolve_class_weights(config: ml_collections.ConfigDict, info,
                          data_dir: str | None) -> tuple[float, ...] | None:
    """`config.loss.class_weights` as K floats, or None when it is "".

    It is "" (unweighted), a method of `segjax.data.balance.LOSS_WEIGHTINGS` computed from the
    pixel counts of the training split (the examples actually trained on), or K comma-separated
    numbers.
    """
    from segjax.data import balance

    spec = (config.loss.get("class_weights") or "").strip()
    if not spec:
        return None
    k = info.num_classes
    if spec in balance.LOSS_WEIGHTINGS:
        ds = config.dataset
        counts = balance.class_pixel_counts(info, data_dir, ds.train_split)
        train_kw = data_splits(ds)[0]
        if train_kw:
            from segjax.data.pipeline import fold_subset
            counts = counts[fold_subset(len(counts), part=0, **train_kw)]
        if ds.num_train_examples is not None:
            counts = counts[:ds.num_train_examples]
        weights = tuple(float(w) for w in balance.loss_class_weights(counts, spec))
        print("class weights (" + spec + "): " + ", ".join(f"{w:.3f}" for w in weights),
              flush=True)
        return weights
    try:
        weights = tuple(float(w) for w in spec.split(","))
    except ValueError:
        weights = ()
    if len(weights) != k or any(not w >= 0 for w in weights):
        raise ValueError(f"config.loss.class_weights={spec!r} must be '', one of "
                         f"{balance.LOSS_WEIGHTINGS} or {k} non-negative comma-separated numbers")
    return weights


def _merge_pretrained(variables: dict, converted: dict, *, num_classes: int | None = None) -> dict:
    """`variables` with converted pretrained weights put in; strict, never silently partial.

    A converted backbone (no top-level "backbone" key, while the model has one) replaces the
    model's "backbone" subtree (`torchvision_import.merge_backbone`: names and shapes must match
    exactly). A converted whole model must match the model leaf for leaf; the only leaves allowed
    to differ are those whose shapes differ just in a last axis equal to `num_classes` (the class
    layers of a model converted for another label set): they keep their fresh initialisation and
    are named in a printed message.

    Raises:
      ValueError: listing converted leaves the model lacks, model leaves the checkpoint lacks, or
        shape mismatches other than the class layers.
    """
    from flax import traverse_util

    from segjax.models import torchvision_import

    has_backbone = "backbone" in variables.get("params", {})
    if has_backbone and "backbone" not in converted.get("params", {}):
        return torchvision_import.merge_backbone(variables, converted)

    out, missing, unexpected, bad, reinit = {}, [], [], [], []
    for collection in sorted(set(variables) | set(converted)):
        flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables.get(collection, {})))
        src = traverse_util.flatten_dict(converted.get(collection, {}))
        name = lambda path: f"{collection}/" + "/".join(map(str, path))  # noqa: E731
        unexpected += [name(p) for p in src if p not in flat]
        missing += [name(p) for p in flat if p not in src]
        for path, value in src.items():
            if path not in flat:
                continue
            value = np.asarray(value)
            old = flat[path]
            if old.shape == value.shape:
                flat[path] = value.astype(old.dtype)
            elif (num_classes is not None and old.ndim == value.ndim and old.shape[-1] == num_classes
                  and old.shape[:-1] == value.shape[:-1]):
                reinit.append(name(path))
            else:
                bad.append(f"{name(path)}: checkpoint {value.shape} vs model {old.shape}")
        out[collection] = traverse_util.unflatten_dict(flat)
    if missing or unexpected or bad:
        raise ValueError(
            "config.init_from does not match the model (use a checkpoint converted for this "
            f"architecture): missing {missing[:10]}, unexpected {unexpected[:10]}, "
            f"shape mismatches {bad[:10]}")
    if reinit:
        print(f"init_from: class layers re-initialised for {num_classes} classes: {reinit}",
              flush=True)
    return out


def data_splits(ds: ml_collections.ConfigDict) -> tuple[dict, str, dict, str]:
    """(train kwargs, eval split, eval kwargs, eval label) for `config.dataset`.

    Without `ds.fold`: train on `ds.train_split`, evaluate on `ds.eval_split`. With it
    (cross-validation): both read `ds.train_split`, training on all but the held-out part and
    evaluating that part; k-fold holds out fold `ds.fold` of `ds.num_folds`, leave-p-out (with
    `ds.leave_out = p`) the `ds.fold`-th of the C(n, p) p-subsets. metrics.jsonl labels the
    eval lines e.g. "train_aug/fold2of5" or "train_aug/leave2out/fold17".
    """
    if ds.fold is None:
        return {}, ds.eval_split, {}, ds.eval_split
    kw = {"fold": ds.fold, "num_folds": ds.num_folds, "fold_seed": ds.fold_seed,
          "leave_out": ds.leave_out}
    if ds.leave_out is not None:
        if ds.leave_out < 1:
            raise ValueError(f"config.dataset.leave_out={ds.leave_out} must be >= 1 (the p of "
                             "leave-p-out), or None for k-fold")
        if ds.fold < 0:
            raise ValueError(f"config.dataset.fold={ds.fold} must be >= 0")
        return kw, ds.train_split, kw, f"{ds.train_split}/leave{ds.leave_out}out/fold{ds.fold}"
    if not 0 <= ds.fold < ds.num_folds:
        raise ValueError(f"config.dataset.fold={ds.fold} must be in [0, "
                         f"config.dataset.num_folds={ds.num_folds})")
    return kw, ds.train_split, kw, f"{ds.train_split}/fold{ds.fold}of{ds.num_folds}"


def abstract_state(config: ml_collections.ConfigDict, model, num_train_steps: int):
    """(TrainState of ShapeDtypeStructs on the first device, lr schedule) without running init.

    The restore template: tracing only, so resuming skips the compilation of the model's init.
    """
    crop = config.dataset.crop_size
    shape = (1, crop, crop, 3)
    variables = jax.eval_shape(
        lambda: state_lib.init_variables(model, jax.random.key(config.seed), shape))
    tx, schedule = optim.create_optimizer(variables["params"], num_steps=num_train_steps,
                                          **optimizer_kwargs(config))
    abstract = jax.eval_shape(
        lambda v: state_lib.create_train_state(model, None, shape, tx, variables=v), variables)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            abstract)
    return abstract, schedule


def load_pretrained(path: str) -> dict:
    """`{"params", "batch_stats"}` to initialise from (`config.init_from`).

    `path` is either a directory written by `python -m segjax.tools.convert_torchvision`
    (torchvision weights) or the work directory of another segjax training run, whose newest
    checkpoint is used (transfer learning between datasets or configs; class layers of another
    label set are re-initialised by `_merge_pretrained`).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.init_from={path!r} is not a directory (a training work "
                                "dir, or one written by `python -m segjax.tools.convert_torchvision`)")
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        _, _, _, variables = load_for_inference(path, "latest")
        print(f"init_from: the newest checkpoint of the training run in {path}", flush=True)
        return jax.tree.map(np.asarray, variables)
    from segjax.models import torchvision_import

    return torchvision_import.load_converted(path)


def create_state(config: ml_collections.ConfigDict, model, num_train_steps: int):
    """Fresh host `TrainState` (step 0) and the lr schedule; `config.init_from` merged in."""
    rng = jax.random.key(config.seed)
    crop = config.dataset.crop_size
    variables = state_lib.init_variables(model, rng, (1, crop, crop, 3))
    if config.init_from:
        variables = _merge_pretrained(variables, load_pretrained(config.init_from),
                                      num_classes=model.num_classes)
    tx, schedule = optim.create_optimizer(variables["params"], num_steps=num_train_steps,
                                          **optimizer_kwargs(config))
    state = state_lib.create_train_state(model, rng, (1, crop, crop, 3), tx, variables=variables)
    return state, schedule


# ---------------------------------------------------------------------------------- work dir


def check_and_write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses to resume checkpoints written under an incompatible config; writes config.json.

    Without checkpoints (e.g. a run that failed before its first save) any config may reuse the
    work dir. config.json is (re)written by process 0.

    Raises:
      IncompatibleWorkdirError: naming the keys that differ.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
    has_checkpoints = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
    if has_checkpoints and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        new = json.loads(config.to_json())
        bad = config_utils.incompatible_keys(old, new)
        if bad:
            details = ", ".join(f"{k}: {config_utils.flatten(old).get(k)!r} -> "
                                f"{config_utils.flatten(new).get(k)!r}" for k in bad)
            raise IncompatibleWorkdirError(
                f"{workdir} holds a run with a different config ({details}); use a new --workdir "
                "or the same values to resume")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config.to_json(indent=2, sort_keys=True))
        os.replace(tmp, path)


def _denormalize(image: np.ndarray) -> np.ndarray:
    """uint8 RGB from a pipeline image (inverse of `segjax.data.pipeline.preprocess_image`)."""
    from segjax.data.pipeline import IMAGE_MEAN, IMAGE_STD

    return np.clip(np.rint(image * IMAGE_STD + IMAGE_MEAN), 0, 255).astype(np.uint8)


def save_predictions(workdir: str, step: int, batch, pred: np.ndarray, *, palette, ignore_label,
                     limit: int, writer: MetricWriter | None = None) -> int:
    """Writes `<workdir>/predictions/step_<step>/<index>_{pred,gt,overlay}.png` for valid rows.

    Predictions are cropped to each image's original height/width. Returns how many were written
    (at most `limit`).
    """
    out_dir = os.path.join(workdir, PREDICTIONS_DIR, f"step_{step:07d}")
    written = 0
    for i in range(len(pred)):
        if written >= limit or not bool(batch["valid"][i]):
            continue
        h, w = int(batch["height"][i]), int(batch["width"][i])
        index = int(batch["index"][i]) if "index" in batch else i
        image = _denormalize(np.asarray(batch["image"][i, :h, :w]))
        p, g = pred[i, :h, :w], np.asarray(batch["label"][i, :h, :w])
        mask = visualize.colorize(p, palette)
        gt = visualize.colorize(g, palette, ignore_label=ignore_label)
        over = visualize.overlay(image, p, palette)
        visualize.save_png(os.path.join(out_dir, f"{index:05d}_pred.png"), mask)
        visualize.save_png(os.path.join(out_dir, f"{index:05d}_gt.png"), gt)
        visualize.save_png(os.path.join(out_dir, f"{index:05d}_overlay.png"), over)
        if writer is not None:
            writer.write_images(step, {f"predictions/{index:05d}":
                                       visualize.side_by_side(image, gt, mask, over)})
        written += 1
    return written


# ---------------------------------------------------------------------------------- the loop


def _should(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates as `config` says, writing everything to `workdir`.

    Returns the final eval metrics (miou, pixel_accuracy, iou_per_class, ...).

    Raises:
      ValueError: a bad config value (naming the key); IncompatibleWorkdirError;
      NonFiniteLossError: the loss became NaN/inf (names the step);
      FileNotFoundError or the data pipeline's error: the dataset is not prepared.
    """
    from segjax.data import pipeline

    config_utils.check_config(config)
    parallel_lib.initialize_distributed(config)
    workdir = os.path.abspath(workdir)
    check_and_write_config(config, workdir)
    is_main = jax.process_index() == 0
    process_count = jax.process_count()

    info = dataset_info(config)
    ds = config.dataset
    data_dir = ds.data_dir or None
    # Fails at once, with what to download, when the dataset is not prepared (and generates the
    # synthetic one); before any model is built or compiled.
    num_examples = pipeline.num_examples(ds.name, ds.train_split, data_dir)
    if ds.num_train_examples is not None:
        if ds.num_train_examples < 1:
            raise ValueError(f"config.dataset.num_train_examples={ds.num_train_examples} must be >= 1")
        num_examples = min(num_examples, ds.num_train_examples)
    pipeline.num_examples(ds.name, data_splits(ds)[1], data_dir)
    batch_size = config.batch_size
    num_steps = config_utils.get_steps(config, "num_train", batch_size=batch_size,
                                       num_examples=num_examples)
    every = {name: config_utils.get_steps(config, name, batch_size=batch_size,
                                          num_examples=num_examples)
             for name in ("log_every", "eval_every", "checkpoint_every")}
    if batch_size % process_count or config.eval.batch_size % process_count:
        raise ValueError(f"config.batch_size ({batch_size}) and config.eval.batch_size "
                         f"({config.eval.batch_size}) must be divisible by the {process_count} "
                         "processes")
    local_batch = batch_size // process_count
    local_eval_batch = config.eval.batch_size // process_count

    par = parallel_lib.Parallel(config.parallelism)
    if local_batch % par.local_device_count or local_eval_batch % par.local_device_count:
        raise ValueError(f"per-process batch sizes ({local_batch} train, {local_eval_batch} eval) "
                         f"must be divisible by the {par.local_device_count} local devices "
                         "(config.batch_size, config.eval.batch_size)")

    model = build_model(config, info.num_classes)
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), keep=config.keep_checkpoints)
    writer = MetricWriter(workdir, enabled=is_main)
    try:
        state, start_step = None, None
        if ckpt.all_steps():
            template, schedule = abstract_state(config, model, num_steps)
            state, start_step = ckpt.restore_latest(template)
        if state is None:
            state, schedule = create_state(config, model, num_steps)
        else:
            log.info("resuming from checkpoint step %d in %s", start_step, ckpt.directory)
            print(f"resuming from checkpoint step {start_step}", flush=True)
            if ckpt.skipped_message:
                print(ckpt.skipped_message, flush=True)
        return _run(config, workdir, state, start_step, schedule, ckpt, writer, par, model, info,
                    num_steps, every, local_batch, local_eval_batch, data_dir)
    finally:
        ckpt.close()
        writer.close()


def _run(config, workdir, state, start_step, schedule, ckpt, writer, par, model, info,
         num_steps, every, local_batch, local_eval_batch, data_dir):
    from segjax.data import pipeline

    restored = start_step is not None
    start_step = int(start_step or 0)
    if start_step > num_steps:
        raise ValueError(f"the work dir's checkpoint is at step {start_step}, beyond "
                         f"config.num_train_steps={num_steps}; raise num_train_steps or use a new "
                         "--workdir")
    writer.truncate_after(start_step)
    last_checkpoint = start_step if restored else None

    ds = config.dataset
    loss_fn = functools.partial(
        losses.segmentation_loss, ignore_label=info.ignore_label,
        **loss_kwargs(config, resolve_class_weights(config, info, data_dir)))
    train_step = par.train_step(loss_fn, learning_rate_fn=schedule)
    rng = jax.random.fold_in(jax.random.key(config.seed), 1)  # 0 was used for init
    device_state = par.replicate(state)
    del state

    mesh = eval_lib.eval_mesh()
    eval_cfg = config.eval
    eval_fn = eval_lib.make_eval_fn(
        model.clone(axis_name=None), num_classes=info.num_classes, ignore_label=info.ignore_label,
        mesh=mesh, scales=tuple(eval_cfg.tta_scales) if eval_cfg.tta else (1.0,),
        flip=bool(eval_cfg.tta and eval_cfg.tta_flip),
        window=eval_cfg.window if eval_cfg.sliding_window else None,
        stride=eval_cfg.stride if eval_cfg.sliding_window else None,
        boundary_iou=eval_cfg.boundary_iou)

    train_fold, eval_split, eval_fold, eval_label = data_splits(ds)

    def run_eval(step: int, host_state) -> dict[str, Any]:
        variables = eval_lib.replicate_on(
            {"params": host_state.params, "batch_stats": host_state.batch_stats}, mesh)
        batches = pipeline.eval_batches(
            ds.name, split=eval_split, batch_size=local_eval_batch, pad_to=eval_cfg.pad_to,
            data_dir=data_dir, process_index=jax.process_index(),
            process_count=jax.process_count(), **eval_fold)
        remaining = [eval_cfg.num_visualizations if writer.enabled else 0]

        def on_batch(batch, get_pred):
            if remaining[0] > 0:
                remaining[0] -= save_predictions(
                    workdir, step, batch, get_pred(), palette=info.palette,
                    ignore_label=info.ignore_label, limit=remaining[0], writer=writer)

        t0 = time.perf_counter()
        result = eval_lib.evaluate(eval_fn, variables, batches, num_classes=info.num_classes,
                                   mesh=mesh, on_batch=on_batch)
        keys = ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou", "iou_per_class",
                "num_pixels", "boundary_iou", "boundary_iou_per_class")
        writer.write(step, eval_label, {k: result[k] for k in keys if k in result},
                     extra_scalars={"eval_seconds": time.perf_counter() - t0})
        if writer.enabled:
            boundary = (f"  boundary_iou {result['boundary_iou']:.4f}"
                        if "boundary_iou" in result else "")
            print(f"eval step {step}: miou {result['miou']:.4f}  pixel_accuracy "
                  f"{result['pixel_accuracy']:.4f}{boundary}", flush=True)
        return result

    train_iter = pipeline.train_batches(
        ds.name, split=ds.train_split, batch_size=local_batch, crop_size=ds.crop_size,
        seed=config.seed, data_dir=data_dir, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count(),
        min_scale=ds.min_scale, max_scale=ds.max_scale, hflip=ds.hflip,
        photometric=ds.photometric, class_balanced=ds.class_balanced,
        max_examples=ds.num_train_examples, **train_fold)
    progress = Progress(num_steps, config.batch_size, first_step=start_step,
                        enabled=writer.enabled)
    pending: list[tuple[int, dict]] = []  # device metrics of steps not yet checked/logged
    result: dict[str, Any] = {}

    def check_pending() -> dict[str, np.ndarray]:
        """Fetches pending metrics; raises NonFiniteLossError at the first bad step."""
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched):
            loss = float(np.asarray(m["loss"]))
            if not np.isfinite(loss):
                raise NonFiniteLossError(s, loss, last_checkpoint)
        stacked = {k: np.stack([np.asarray(m[k]) for m in fetched]) for k in fetched[0]}
        pending.clear()
        return stacked

    for step in range(start_step + 1, num_steps + 1):
        batch = next(train_iter)
        device_state, metrics = train_step(device_state, par.shard_batch(batch), rng)
        pending.append((step, metrics))
        do_log = _should(step, every["log_every"], num_steps)
        do_eval = _should(step, every["eval_every"], num_steps)
        do_ckpt = do_eval or _should(step, every["checkpoint_every"], num_steps)
        if not (do_log or do_eval or do_ckpt):
            continue
        stacked = check_pending()
        if do_log:
            line = {"loss": float(stacked["loss"].mean())}
            for key in ("grad_norm", "lr", "valid_pixels"):
                if key in stacked:
                    line[key] = float(stacked[key][-1])
            images_per_s = progress.update(step, line["loss"])
            writer.write(step, "train", line, extra_scalars={"images_per_s": images_per_s})
        if do_eval or do_ckpt:
            t0 = time.perf_counter()
            host_state = par.unreplicate(device_state)
            if do_eval:
                result = run_eval(step, host_state)
            ckpt.save(step, host_state,
                      metrics={"miou": result["miou"]} if do_eval else None)
            last_checkpoint = step
            progress.exclude(time.perf_counter() - t0)
    if not result:  # the run had already finished: report its final eval
        from segjax.train.metric_writers import read_metrics

        done = [r for r in read_metrics(workdir) if r["step"] == num_steps
                and r["split"] == ds.eval_split]
        result = done[-1] if done else run_eval(num_steps, par.unreplicate(device_state))
    return result


# ---------------------------------------------------------------------------------- inference


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to `<workdir>/config.json`."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a training work dir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_for_inference(workdir: str, checkpoint: str = "latest"):
    """(config, dataset info, model, variables) of a trained run, for prediction.

    Args:
      workdir: a work directory of `train_and_evaluate`.
      checkpoint: "latest" (newest step that restores), "best" (highest val mIoU) or a step.

    Nothing in the work dir is modified.
    """
    config = load_config(workdir)
    info = dataset_info(config)
    model = build_model(config, info.num_classes)
    abstract, _ = abstract_state(config, model, 1)
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), read_only=True)
    try:
        if checkpoint == "latest":
            state, step = ckpt.restore_latest(abstract, quarantine=False)
            if state is None:
                raise FileNotFoundError(f"no restorable checkpoint under {ckpt.directory}")
        else:
            step = ckpt.best_step() if checkpoint == "best" else int(checkpoint)
            if step is None:
                raise FileNotFoundError(f"no checkpoint with eval metrics under {ckpt.directory}")
            state = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    log.info("loaded checkpoint step %s from %s", step, workdir)
    return config, info, model, {"params": state.params, "batch_stats": state.batch_stats}
