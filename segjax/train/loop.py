"""The training loop: `train_and_evaluate(config, workdir)`, for any task.

One run trains `config.model` on `config.dataset` for the task `config.task` (default
"semantic") for `num_train_steps`, logging train metrics every `log_every_steps` (`loss` is the
mean over the steps since the previous log line or checkpoint, so a resumed run logs the same
numbers), evaluating every `eval_every_steps` (and at the end), and checkpointing every
`checkpoint_every_steps` and at every eval. Evaluation is the task's compiled eval step over its
eval batches, or, for a task with `host_evaluation` (whole volumes of differing sizes), its
`evaluate_on_host` with the host copy of the variables. The loop knows nothing of what is
learned: the task (`segjax.tasks`) supplies the loss, the evaluation, the metric that ranks
checkpoints and the pictures. The work directory is described in `segjax.train.workdir`.

Resume is exact: a rerun on the same work directory restores the newest checkpoint that
restores, drops `metrics.jsonl` lines written after it, and continues the train stream at that
step (the data pipeline's `start_step`; JAX keys are `config.seed` folded with the step). A kill
-9 and a rerun therefore end with the same metrics, bit for bit, as an uninterrupted run.

A non-finite loss, gradient norm or updated parameter norm stops the run with
`NonFiniteLossError` naming the first bad step, before any state of that step or later is
checkpointed: the last checkpoint stays the last good one.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from segjax.tasks import build_task
from segjax.train import build, config_utils, pretrained
from segjax.train import evaluate as eval_lib
from segjax.train import parallel as parallel_lib
from segjax.train.checkpoint import Checkpointer
from segjax.train.metric_writers import MetricWriter, Progress, read_metrics
from segjax.train.workdir import (CHECKPOINT_DIR, IncompatibleWorkdirError,
                                  check_and_write_config, predictions_dir)

log = logging.getLogger(__name__)

# What must hold for a step's update to be kept: (metric, description, test).
_FINITE_CHECKS = (("loss", "the loss", np.isfinite),
                  ("grads_finite", "a gradient", lambda v: v == 1.0),
                  ("params_finite", "an updated parameter", lambda v: v == 1.0))


class NonFiniteLossError(FloatingPointError):
    """The loss or the update became NaN or infinite; `step` is the first such step."""

    def __init__(self, step: int, what: str, value: float, last_checkpoint: int | None):
        self.step = step
        where = (f"The last good checkpoint is step {last_checkpoint}"
                 if last_checkpoint is not None else "No checkpoint was written")
        detail = (f"the loss is {value}" if what == "the loss" else
                  f"{what} is not finite (gradient norm {value})")
        super().__init__(f"{detail} at step {step}; training stopped. {where} (lower "
                         "optimizer.base_lr or check the data)")


# Failures with a message that says what to do: the CLI prints them without a traceback.
KNOWN_ERRORS = (NonFiniteLossError, IncompatibleWorkdirError, ValueError, FileNotFoundError)


# What every train step returns; anything else is a task's metric (`Task.update_task_state`),
# logged as its mean since the last log line, like the loss.
_STEP_METRICS = frozenset({"loss", "grad_norm", "lr", "valid_pixels", "grads_finite",
                           "params_finite"})


def _should(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates as `config` says, writing everything to `workdir`.

    Returns the final eval metrics (the task's: miou, pixel_accuracy, iou_per_class, ... for
    "semantic").

    Raises:
      ValueError: a bad config value (naming the key); IncompatibleWorkdirError;
      NonFiniteLossError: the loss or the update became NaN/inf (names the step);
      FileNotFoundError or the data pipeline's error: the dataset is not prepared.
    """
    from segjax.data import pipeline

    config_utils.import_plugins(config)
    config_utils.check_config(config)
    parallel_lib.initialize_distributed(config)
    workdir = os.path.abspath(workdir)
    check_and_write_config(config, workdir)
    process_count = jax.process_count()

    data = pipeline.from_config(config.dataset, process_index=jax.process_index(),
                                process_count=process_count)
    batch_size = config.batch_size
    steps = {name: config_utils.get_steps(config, name, batch_size=batch_size,
                                          num_examples=data.num_train_examples)
             for name in ("num_train", "log_every", "eval_every", "checkpoint_every")}
    if batch_size % process_count or config.eval.batch_size % process_count:
        raise ValueError(f"config.batch_size ({batch_size}) and config.eval.batch_size "
                         f"({config.eval.batch_size}) must be divisible by the {process_count} "
                         "processes")
    par = parallel_lib.Parallel(config.parallelism)
    local_batch = batch_size // process_count
    local_eval_batch = config.eval.batch_size // process_count
    if local_batch % par.local_device_count or local_eval_batch % par.local_device_count:
        raise ValueError(f"per-process batch sizes ({local_batch} train, {local_eval_batch} eval) "
                         f"must be divisible by the {par.local_device_count} local devices "
                         "(config.batch_size, config.eval.batch_size)")

    task = build_task(config, data.info, data.data_dir)
    model = build.build_model(config, data.info.num_classes, task)
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), keep=config.keep_checkpoints,
                        best_metric=task.best_metric)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    try:
        state, start_step = None, None
        if ckpt.all_steps():
            template, schedule = build.abstract_state(config, model, steps["num_train"], task)
            state, start_step = ckpt.restore_latest(template)
        if state is None:
            state, schedule = build.create_state(
                config, model, steps["num_train"], task,
                init=pretrained.initializer(config, model.num_classes))
        else:
            log.info("resuming from checkpoint step %d in %s", start_step, ckpt.directory)
            print(f"resuming from checkpoint step {start_step}", flush=True)
            if ckpt.skipped_message:
                print(ckpt.skipped_message, flush=True)
        run = _Run(config=config, workdir=workdir, task=task, par=par, data=data, ckpt=ckpt,
                   writer=writer, steps=steps, local_batch=local_batch,
                   local_eval_batch=local_eval_batch)
        return run.train(state, start_step, schedule)
    finally:
        ckpt.close()
        writer.close()


class _Run:
    """One call of `train_and_evaluate` after everything is built: the loop and evaluation."""

    def __init__(self, *, config, workdir, task, par, data, ckpt, writer, steps, local_batch,
                 local_eval_batch):
        self.config, self.workdir, self.task, self.par = config, workdir, task, par
        self.data, self.ckpt, self.writer, self.steps = data, ckpt, writer, steps
        self.local_batch, self.local_eval_batch = local_batch, local_eval_batch
        self.eval_step = par.eval_step(task)

    def evaluate(self, step: int, device_state) -> dict[str, Any]:
        """Evaluates `device_state` on the eval split: metrics.jsonl line, console, pictures."""
        remaining = [self.config.eval.num_visualizations if self.writer.enabled else 0]
        out_dir = predictions_dir(self.workdir, step)

        def on_batch(batch, per_example):
            if remaining[0] > 0:
                remaining[0] -= self.task.save_examples(
                    out_dir, step, batch, per_example, limit=remaining[0], writer=self.writer)

        t0 = time.perf_counter()
        if self.task.host_evaluation:  # e.g. whole volumes of differing sizes
            state = self.par.unreplicate(device_state)
            result = self.task.evaluate_on_host(
                state.apply_fn, {"params": state.params, "batch_stats": state.batch_stats},
                self.data, on_batch=on_batch)
        else:
            batches = self.task.eval_batches(self.data, batch_size=self.local_eval_batch,
                                             pad_to=self.config.eval.pad_to)
            result = eval_lib.evaluate(self.par, self.eval_step, device_state, self.task,
                                       batches, on_batch=on_batch)
        self.writer.write(step, self.data.eval_label, self.task.logged_metrics(result),
                          extra_scalars={"eval_seconds": time.perf_counter() - t0})
        if self.writer.enabled:
            print(f"eval step {step}: {self.task.summary_line(result)}", flush=True)
        return result

    def train(self, state, start_step: int | None, schedule) -> dict[str, Any]:
        config, writer, ckpt = self.config, self.writer, self.ckpt
        num_steps = self.steps["num_train"]
        restored = start_step is not None
        start_step = int(start_step or 0)
        if start_step > num_steps:
            raise ValueError(f"the work dir's checkpoint is at step {start_step}, beyond "
                             f"config.num_train_steps={num_steps}; raise num_train_steps or use "
                             "a new --workdir")
        writer.truncate_after(start_step)
        last_checkpoint = start_step if restored else None

        train_step = self.par.train_step(self.task, learning_rate_fn=schedule)
        rng = jax.random.fold_in(jax.random.key(config.seed), 1)  # 0 was used for init
        device_state = self.par.replicate(state)
        del state
        train_iter = self.task.train_batches(self.data, batch_size=self.local_batch,
                                             seed=config.seed, start_step=start_step)
        progress = Progress(num_steps, config.batch_size, first_step=start_step,
                            enabled=writer.enabled)
        pending: list[tuple[int, dict]] = []  # device metrics of steps not yet checked/logged
        result: dict[str, Any] = {}

        def check_pending() -> dict[str, np.ndarray]:
            """Fetches pending metrics; raises NonFiniteLossError at the first bad step."""
            fetched = jax.device_get([m for _, m in pending])
            for (s, _), m in zip(pending, fetched):
                for key, what, ok in _FINITE_CHECKS:
                    if not ok(float(np.asarray(m[key]))):
                        value = float(np.asarray(m["loss" if key == "loss" else "grad_norm"]))
                        raise NonFiniteLossError(s, what, value, last_checkpoint)
            stacked = {k: np.stack([np.asarray(m[k]) for m in fetched]) for k in fetched[0]}
            pending.clear()
            return stacked

        every = self.steps
        for step in range(start_step + 1, num_steps + 1):
            batch = next(train_iter)
            device_state, metrics = train_step(device_state, self.par.shard_batch(batch), rng)
            pending.append((step, metrics))
            do_log = _should(step, every["log_every"], num_steps)
            do_eval = _should(step, every["eval_every"], num_steps)
            do_ckpt = do_eval or _should(step, every["checkpoint_every"], num_steps)
            if not (do_log or do_eval or do_ckpt):
                continue
            stacked = check_pending()  # before anything of this step is saved
            if do_log:
                line = {"loss": float(stacked["loss"].mean())}
                for key in ("grad_norm", "lr", "valid_pixels"):
                    if key in stacked:
                        line[key] = float(stacked[key][-1])
                for key in sorted(set(stacked) - _STEP_METRICS):  # the task's own
                    line[key] = float(stacked[key].mean())
                images_per_s = progress.update(step, line["loss"])
                writer.write(step, "train", line, extra_scalars={"images_per_s": images_per_s})
            if do_eval or do_ckpt:
                t0 = time.perf_counter()
                if do_eval:
                    result = self.evaluate(step, device_state)
                best = self.task.best_metric
                ckpt.save(step, self.par.unreplicate(device_state),
                          metrics={best: result[best]} if do_eval else None)
                last_checkpoint = step
                progress.exclude(time.perf_counter() - t0)
        if not result:  # the run had already finished: report its final eval, never re-run it
            done = [r for r in read_metrics(self.workdir) if r["step"] == num_steps
                    and r["split"] == self.data.eval_label]
            result = done[-1] if done else self.evaluate(num_steps, device_state)
        ckpt.wait()
        self._print_where(num_steps)
        return result

    def _print_where(self, step: int) -> None:
        """Tells the user where the run's results are."""
        if not self.writer.enabled:
            return
        best = self.ckpt.best_step()
        print(f"done: metrics in {os.path.join(self.workdir, 'metrics.jsonl')}; checkpoints in "
              f"{self.ckpt.directory} (best by {self.task.best_metric}: step {best}); pictures "
              f"in {predictions_dir(self.workdir, step)}", flush=True)
