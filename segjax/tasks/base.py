"""What a task is: the seam between the task-agnostic trainer and what is being learned.

The loop (`segjax.train.loop`), the steps (`segjax.train.steps`), the parallel layer
(`segjax.train.parallel`), checkpointing and the ablation runner know nothing about semantic
segmentation, instances, mask quality (the oracle) or embeddings. A `Task` knows:

* what a batch holds (`train_keys`, `eval_keys`) and how the model is called on it
  (`model_inputs`);
* the loss of a batch as a `(sum, count)` pair from the model outputs, the whole batch and a
  `StepContext` (PRNG key, global sums and gathers over the data axis);
* what evaluation computes on device (`eval_outputs`: statistics that sum over devices, plus
  per-example outputs), and how the host turns them into metrics (`Accumulator`); or, where a
  fixed-shape step cannot express it (whole volumes of differing sizes), the whole evaluation
  run on the host (`host_evaluation = True` and `evaluate_on_host`);
* which metric ranks checkpoints (`best_metric`), the console line of an evaluation, and the
  example images to write (`save_examples`, through `write_panels`);
* how one image of any size is predicted and drawn (`predictor`, `write_prediction`): what
  `experiments.predict` calls, so that the command has no per-task branch.

Adding a task is one module, in segjax or the user's own code, whose
`@segjax.tasks.register(name, ...)` decorates `build(config, info, data_dir) -> Task` and
declares the task's config section with its defaults (see docs/extending.md).

The sharded-batch rules every task follows (DESIGN §4):
* `loss` sees this device's share of the batch (pmap) or the global batch (jit over a mesh) and
  returns this share's `(sum, count)`; the step divides the global sum by the global count.
  A term normalised by another count (an aux head, a second loss) is rescaled with
  `ctx.global_sum` so that the division stays global.
* Anything that ranks or pairs examples (hard-example mining, triplets) sees the whole batch:
  `ctx.all_gather` the inputs, compute on the global batch, and count only this share's rows
  (`ctx.example_offset`).
* Randomness comes from `ctx.rng` folded with the example's global position
  (`ctx.example_keys`), never the device index, so 1 and N devices draw the same numbers.

A task that learns more than one network, or calls the model more than once per step, uses
three optional hooks (the defaults give the one-call, stateless step every built-in
single-model task uses):
* `train_forward(apply, batch, ctx)`: how the model is called in a train step. `apply(*args,
  **kwargs)` runs the model being trained (BatchNorm statistics threaded from call to call,
  each call its own dropout key), e.g. once on source and once on target images.
* `init_task_state(rng, variables)`: state the task keeps beside the model's (an EMA teacher,
  a discriminator and its optimiser state). It lives in `TaskTrainState.task_state`: replicated,
  checkpointed and restored with the rest, so resume stays exact.
* `update_task_state(task_state, variables, outputs, batch, ctx)`: the task state after the
  model's update (the EMA step, the discriminator's own optimiser step: its gradients summed
  with `ctx.global_sum` like the model's), plus metrics to log. `ctx.task_state` is the state
  before the step, which `train_forward` and `loss` read (the teacher's weights, the frozen
  discriminator of the adversarial term); `ctx.apply_fn` runs the model on other variables
  (or on `ctx.variables`, the model's before the step, without differentiating them).
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pair = tuple[jax.Array, jax.Array]
Batch = Mapping[str, jax.Array]
ApplyFn = Callable[..., Any]


def plain_dict(d: Any) -> dict:
    """A config section (`ml_collections.ConfigDict` or mapping) as a plain dict of kwargs."""
    return d.to_dict() if hasattr(d, "to_dict") else dict(d)


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a loss may need beyond outputs and batch, valid inside one (compiled) step.

    Attributes:
      rng: the step's PRNG key, the same on every device (already folded with the step).
      axis_name: the pmap axis, or None under jit over a mesh (the batch is then one global
        array and every reduction is already global).
      task_state: `TaskTrainState.task_state` before this step (None for tasks that keep none).
      apply_fn: the model's `apply`, for calls on variables other than those being trained
        (e.g. an EMA teacher's); None outside a train step.
      variables: the model's `{"params", "batch_stats"}` before this step, as constants (no
        gradient flows into them): what `apply_fn` runs to query the current model without
        differentiating it (e.g. the oracle's own gradient ascent on a mask); None outside a
        train step.
    """

    rng: jax.Array
    axis_name: str | None = None
    task_state: Any = None
    apply_fn: ApplyFn | None = None
    variables: Any = None

    def global_sum(self, x: Any) -> Any:
        """`x` summed over the data axis (identity under jit over a mesh)."""
        return x if self.axis_name is None else lax.psum(x, self.axis_name)

    def all_gather(self, x: Any) -> Any:
        """The global batch of per-example leaves `[B_local, ...]` -> `[B_global, ...]`, in
        global example order (identity under jit over a mesh)."""
        if self.axis_name is None:
            return x
        return jax.tree.map(lambda v: lax.all_gather(v, self.axis_name, tiled=True), x)

    def example_offset(self, local_batch: int) -> jax.Array:
        """Global position of this share's first example (0 under jit over a mesh)."""
        if self.axis_name is None:
            return jnp.zeros((), jnp.int32)
        return lax.axis_index(self.axis_name) * local_batch

    def example_keys(self, local_batch: int) -> jax.Array:
        """One key per example of this share: `fold_in(rng, global position)`."""
        positions = self.example_offset(local_batch) + jnp.arange(local_batch)
        return jax.vmap(lambda i: jax.random.fold_in(self.rng, i))(positions)


class Accumulator(abc.ABC):
    """Host-side accumulation of evaluation outputs over batches."""

    @abc.abstractmethod
    def update(self, sums: Mapping[str, Any], per_example: Mapping[str, Any],
               batch: Mapping[str, Any]) -> None:
        """Adds one batch: `sums` are global (summed over devices), `per_example` and `batch`
        this process's rows (numpy)."""

    @abc.abstractmethod
    def result(self) -> dict[str, Any]:
        """The metrics of everything added (JSON-serialisable values)."""


class Task(abc.ABC):
    """A learning problem the trainer can run (see the module docstring).

    Subclasses set `name`, `best_metric`, `train_keys`, `eval_keys` and implement the abstract
    methods. Instances are built once per run by the task module's `build` and are immutable.
    """

    name: str = ""
    best_metric: str = ""  # ranks checkpoints; higher is better
    # What the task consumes of the model: a key of `segjax.models.registry.OUTPUTS` (the model
    # registry's own terms); the trainer refuses a model that returns something else.
    model_output: str = "dense"
    train_keys: tuple[str, ...] = ("image",)
    eval_keys: tuple[str, ...] = ("image",)
    # True: the trainer evaluates through `evaluate_on_host` instead of the compiled eval step
    # over `eval_batches` (for evaluation that a fixed-shape step cannot express: whole volumes
    # of differing sizes).
    host_evaluation: bool = False

    def check_batch(self, batch: Batch, keys: tuple[str, ...]) -> None:
        """Raises ValueError naming the missing keys."""
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"{self.name} batch is missing key(s) {missing}; it has "
                             f"{sorted(batch)}")

    def model_inputs(self, batch: Batch, *, train: bool) -> tuple[tuple, dict]:
        """`(args, kwargs)` of `model.apply(variables, *args, train=..., **kwargs)`."""
        del train
        return (batch["image"],), {}

    def train_forward(self, apply: Callable[..., Any], batch: Batch, ctx: StepContext
                      ) -> Mapping[str, jax.Array]:
        """The model outputs a train step's `loss` sees; `apply(*args, **kwargs)` runs the
        model being trained with `train=True` (see the module docstring). The default is one
        call on `model_inputs(batch, train=True)`."""
        del ctx
        args, kwargs = self.model_inputs(batch, train=True)
        return apply(*args, **kwargs)

    def init_task_state(self, rng: jax.Array, variables: Mapping[str, Any]) -> Any:
        """The task's own state at step 0 from the model's initial `variables` (default None).
        Must be a pure function of its arguments: resume rebuilds its shapes by tracing it."""
        del rng, variables
        return None

    def update_task_state(self, task_state: Any, variables: Mapping[str, Any],
                          outputs: Mapping[str, jax.Array], batch: Batch, ctx: StepContext
                          ) -> tuple[Any, dict[str, jax.Array]]:
        """`(task state after the step, metrics)`: called in the train step after the model's
        update with its new `variables` ({"params", "batch_stats"}) and the step's `outputs`
        (of `train_forward`, gradients stopped). Metrics are global scalars (logged as the mean
        since the last log line). Default: unchanged, none."""
        del variables, outputs, batch, ctx
        return task_state, {}

    def init_inputs(self, image_shape: tuple[int, ...]) -> tuple[tuple, dict]:
        """Dummy `(args, kwargs)` to initialise the model for images of `image_shape`."""
        return (jnp.zeros(image_shape, jnp.float32),), {}

    def train_batches(self, data, *, batch_size: int, seed: int, start_step: int):
        """This process's training batches (`data`: `segjax.data.pipeline.DataStreams`).

        The default is the dataset's segmentation stream; a task whose batches hold something
        else (degraded masks and their quality, episodes, instances) derives them here, on the
        host, deterministically from `(seed, step, example index)` so that resuming at
        `start_step` reproduces the stream.
        """
        return data.train(batch_size=batch_size, seed=seed, start_step=start_step)

    def eval_batches(self, data, *, batch_size: int, pad_to):
        """This process's evaluation batches, all of one shape, with a `"valid"` flag."""
        return data.eval(batch_size=batch_size, pad_to=pad_to)

    @abc.abstractmethod
    def loss(self, outputs: Mapping[str, jax.Array], batch: Batch, ctx: StepContext) -> Pair:
        """This share's `(sum, count)`; loss = global sum / global count."""

    @abc.abstractmethod
    def eval_outputs(self, apply_fn: ApplyFn, variables: Any, batch: Batch,
                     ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """`(sums, per_example)` of one eval batch on device.

        `apply_fn(variables, *args, train=False, **kwargs)` is the model. `sums` are summed over
        devices by the parallel layer (integer counts stay int32 per batch); `per_example`
        leaves have the batch as their first axis and come back to the host by rows.
        """

    def evaluate_on_host(self, apply_fn: ApplyFn, variables: Any, data, *,
                         on_batch: Callable | None = None) -> dict[str, Any]:
        """The metrics of one evaluation run on the host, for tasks with `host_evaluation`.

        `apply_fn(variables, *args, train=False)` is the model, `variables` its (host)
        {"params", "batch_stats"}, `data` the run's `DataStreams`; `on_batch(batch,
        per_example)` is the trainer's picture callback (`save_examples`), called as the
        compiled evaluation calls it.
        """
        del apply_fn, variables, data, on_batch
        raise NotImplementedError(f"the {self.name!r} task evaluates through eval_outputs")

    @abc.abstractmethod
    def new_accumulator(self) -> Accumulator:
        """A fresh host accumulator for one evaluation."""

    def summary_line(self, metrics: Mapping[str, Any]) -> str:
        """The console summary of an evaluation."""
        value = metrics.get(self.best_metric)
        return f"{self.best_metric} {value:.4f}" if value is not None else ""

    def logged_metrics(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """What of `metrics` goes into metrics.jsonl (default: everything)."""
        return dict(metrics)

    def save_examples(self, out_dir: str, step: int, batch: Mapping[str, Any],
                      per_example: Mapping[str, Any], *, limit: int, writer=None) -> int:
        """Writes up to `limit` example pictures of valid rows to `out_dir`; returns how many."""
        del out_dir, step, batch, per_example, limit, writer
        return 0

    @staticmethod
    def write_panels(out_dir: str, step: int, batch: Mapping[str, Any],
                     panel: Callable[[int, int, int], np.ndarray], *, limit: int, writer=None,
                     name: Callable[[int, int], str] | None = None,
                     tag: str = "predictions") -> int:
        """Writes `panel(i, h, w)` of up to `limit` valid rows of `batch`; returns how many.

        Each picture goes to `<out_dir>/<name>.png` and, with a `writer`, to TensorBoard as
        `<tag>/<name>`; `name(i, written)` defaults to the row's example index (`%05d`). `h, w`
        are the row's original size when the batch has `"height"`/`"width"` (padded eval
        batches), else None.
        """
        from segjax import visualize

        if name is None:
            def name(i, written):
                del written
                return f"{int(batch['index'][i]) if 'index' in batch else i:05d}"
        written = 0
        for i in range(len(batch["valid"])):
            if written >= limit or not bool(batch["valid"][i]):
                continue
            h, w = ((int(batch["height"][i]), int(batch["width"][i])) if "height" in batch
                    else (None, None))
            image = panel(i, h, w)
            stem = name(i, written)
            visualize.save_png(os.path.join(out_dir, f"{stem}.png"), image)
            if writer is not None:
                writer.write_images(step, {f"{tag}/{stem}": image})
            written += 1
        return written

    # ------------------------------------------------------------- single-image inference

    def predictor(self, model, variables) -> Callable[[np.ndarray], Any]:
        """A function from one uint8 RGB image `[H, W, 3]` of any size to this task's
        prediction of it (whatever `write_prediction` draws), compiled once.

        Raises:
          ValueError: the task does not predict single images (its inputs are not one image).
        """
        del model, variables
        raise ValueError(f"the {self.name!r} task does not predict single images (its model "
                         "needs more than one image as input); predict handles tasks that do")

    def write_prediction(self, stem: str, image: np.ndarray, prediction: Any, *,
                         alpha: float = 0.5, score_thresh: float = 0.5) -> list[str]:
        """Writes the pictures (and data files) of one `predictor` result as `<stem>_*`;
        returns the paths. `alpha` is the overlay opacity, `score_thresh` the lowest score of
        a drawn detection (tasks without scores ignore it)."""
        del stem, image, prediction, alpha, score_thresh
        raise ValueError(f"the {self.name!r} task does not predict single images")


def class_palette(num_classes: int, palette: np.ndarray | None) -> np.ndarray:
    """The dataset's `palette`, or VOC's colour map for `num_classes` when it has none."""
    from segjax.data.datasets import voc_palette

    return voc_palette(num_classes) if palette is None else palette


def padded_input(image: np.ndarray, multiple: int = 32) -> np.ndarray:
    """One uint8 RGB image `[H, W, 3]` normalised like the pipelines' and padded bottom/right
    with 0 (the mean pixel after normalisation, as evaluation pads) to a multiple of
    `multiple`: float32 `[1, H', W', 3]`. Predictions are cropped back to `[:H, :W]`."""
    from segjax.data.records import preprocess_image

    h, w = np.shape(image)[:2]
    ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    x = np.zeros((1, ph, pw, 3), np.float32)
    x[0, :h, :w] = preprocess_image(image)
    return x
