"""Times segjax's compiled train or eval step (and torchvision's twin) on a synthetic batch.

Semantic models: per-pixel cross-entropy; the eval step is a forward pass + argmax. Instance
models (Mask R-CNN): the instance task's loss on random rectangles (`common.synthetic_instances`);
the eval step is the whole detector (boxes, scores, classes, 28x28 masks); torchvision's twin runs
at `min_size=max_size=size`; both sides freeze as the COCO recipe
(`common.TRAINABLE_BACKBONE_LAYERS`) and evaluate with a score threshold of 0
(`common.BENCH_BOX_SCORE_THRESH`, so both run the mask head on every detection slot).

Used by `train_step.py` and `eval_step.py`, which only define flags. One device, plain `jax.jit`,
the global batch on that device; `scaling.py` covers several devices. The twin runs in a child
process on the same batch, the two alternating rounds (see `torch_twin.TwinProcess`).

Every timed train step starts from the same weights: segjax re-runs its compiled step on the
initial state (the updated state is computed and discarded), torchvision steps with lr = 0
(gradients, momentum and weight decay still computed). A detector's work depends on its weights
where torchvision's shapes are dynamic (proposals surviving NMS, sampled ROIs, positives for the
mask head), and on this fixed random batch a random-weight Mask R-CNN trained at lr 1e-3 reaches
NaN losses by its third step, after which torchvision's box and mask heads see 2 ROIs per image
instead of 512 (measured; BENCHMARKS.md). Frozen weights keep both sides on the first step's work.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
from absl import flags

from experiments.benchmarks import common
from segjax.models import create_model
from segjax.train import build, optim, state as state_lib, steps


def _task(model, batch):
    if "boxes" in batch:
        from segjax.tasks.instance import InstanceTask

        return InstanceTask(num_classes=model.num_classes, ignore_label=common.IGNORE_LABEL,
                            max_instances=batch["boxes"].shape[1])
    return common.semantic_task(model.num_classes)


def _variables(model, batch, init_shape):
    variables = state_lib.init_variables(model, jax.random.key(0), init_shape)
    if "boxes" in batch and common.ZERO_RPN_DELTAS and "rpn_head" in variables["params"]:
        variables = common.zero_rpn_deltas(variables)
    return variables


def _segjax_train(model, batch, with_hlo: bool = False):
    """(step_fn, compile_s, flops[, compiled HLO text]) for segjax's train_step (SGD momentum,
    wd 1e-4; CE, or the instance task's five Mask R-CNN losses)."""
    init_shape = (1,) + batch["image"].shape[1:]
    variables = _variables(model, batch, init_shape)
    tx, _ = optim.create_optimizer(variables["params"], base_lr=1e-3, num_steps=10_000,
                                   momentum=0.9, weight_decay=1e-4,
                                   frozen=build.frozen_parameters(model, variables["params"]))
    state = state_lib.create_train_state(model, None, init_shape, tx, variables=variables)
    task = _task(model, batch)
    step_fn = functools.partial(steps.train_step, task=task)
    step = jax.jit(step_fn)  # no donation: every timed step restarts from `state` (module docstring)
    dev_batch = jax.device_put(batch)
    rng = jax.random.key(1)
    flops = common.model_flops(step_fn, state, dev_batch, rng)
    start = time.perf_counter()
    compiled = step.lower(state, dev_batch, rng).compile()
    compile_s = time.perf_counter() - start

    def run():
        common.block(compiled(state, dev_batch, rng))

    run()
    if with_hlo:
        return run, compile_s, flops, compiled.as_text()
    return run, compile_s, flops


def _segjax_eval(model, batch, with_hlo: bool = False):
    """(step_fn, compile_s, flops[, compiled HLO text]) for a forward pass + argmax (what
    evaluation runs)."""
    init_shape = (1,) + batch["image"].shape[1:]
    variables = _variables(model, batch, init_shape)

    def predict(variables, images):
        out = model.apply(variables, images, train=False)
        return out if "logits" not in out else jnp.argmax(out["logits"], axis=-1)

    images = jax.device_put(batch["image"])
    flops = common.model_flops(predict, variables, images)
    start = time.perf_counter()
    compiled = jax.jit(predict).lower(variables, images).compile()
    compile_s = time.perf_counter() - start

    def run():
        common.block(compiled(variables, images))

    run()
    if with_hlo:
        return run, compile_s, flops, compiled.as_text()
    return run, compile_s, flops


def setup(model_name: str, batch: int, size: int, dtype: str, num_classes: int | None = None):
    """(model, synthetic batch, torchvision twin names) for a benchmark of `model_name`.

    `num_classes` defaults to 21 (VOC) for semantic models and 91 (COCO) for instance models."""
    instance = common.is_instance_model(model_name)
    if num_classes is None:
        num_classes = 91 if instance else 21
    if instance:
        from segjax.models.registry import accepted_overrides

        # Every detection slot filled on both sides (Mask R-CNN's box threshold, TensorMask's score one).
        thresholds = {"box_score_thresh": common.BENCH_BOX_SCORE_THRESH, "score_thresh": common.BENCH_BOX_SCORE_THRESH}
        accepted = accepted_overrides(model_name) or set()
        model = create_model(model_name, num_classes=num_classes, dtype=dtype,
                             trainable_backbone_layers=common.TRAINABLE_BACKBONE_LAYERS,
                             **{k: v for k, v in thresholds.items() if k in accepted})
        return model, common.synthetic_instances(batch, size, num_classes), common.TORCHVISION_DETECTION_TWINS
    model = create_model(model_name, num_classes=num_classes, dtype=dtype)
    return model, common.synthetic_batch(batch, size, num_classes), common.TORCHVISION_TWINS


def run(*, mode: str, model_name: str, batch: int, size: int, dtype: str, compare: str | None,
        num_classes: int | None = None, steps_per_round: int = 3, rounds: int = 3) -> common.Result:
    """Benchmarks `mode` ("train" or "eval") and returns the Result (print `.table()`)."""
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if compare not in (None, "", "torchvision"):
        raise ValueError(f"--compare must be 'torchvision' or empty, got {compare!r}")
    model, data, twins = setup(model_name, batch, size, dtype, num_classes)
    make = _segjax_train if mode == "train" else _segjax_eval
    jax_fn, compile_s, flops = make(model, data)

    twin = None
    if compare == "torchvision":
        if model_name not in twins:
            raise ValueError(f"torchvision has no twin of {model_name!r}; twins: {sorted(twins)}")
        from experiments.benchmarks import torch_twin

        # In its own process: separate heaps, thread pools and peak-memory figures.
        twin = torch_twin.TwinProcess(model_name, model.num_classes, batch, size, dtype,
                                      train=mode == "train")

    peak = common.measure_matmul_peak("bfloat16" if dtype == "bfloat16" and jax.default_backend() != "cpu" else "float32")
    try:
        js, ts = common.median_alternating(jax_fn, twin and twin.seconds_per_step,
                                           steps_per_round, rounds)
    finally:
        if twin is not None:
            twin.close()
    return common.Result(
        model=model_name, mode=mode, batch=batch, size=size, dtype=dtype, device=common.device_name(),
        segjax_s_per_step=js, compile_s=compile_s, flops_per_step=flops, peak_flops=peak,
        peak_memory_bytes=common.peak_memory_bytes(), torchvision_s_per_step=ts,
        torchvision_compile_s=None if twin is None else twin.first_step_s,
    )


def define_step_flags() -> None:
    """The flags of the step benchmarks (defined on use, so that importing this module defines
    none and cannot collide with another script's flags in one process, e.g. under pytest)."""
    flags.DEFINE_string("model", "deeplabv3_resnet50", "Registered segjax model name.")
    flags.DEFINE_integer("batch", 4, "Batch size (one device).")
    flags.DEFINE_integer("size", 256, "Square image size.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
    flags.DEFINE_integer("num_classes", None, "Number of classes (default 21; 91 for instance models).")


def cli(mode: str) -> None:
    """Entry point of `train_step.py` / `eval_step.py`: parse flags, run, print."""

    define_step_flags()
    flags.DEFINE_string("compare", "", "'torchvision' to time the torchvision twin too.")
    flags.DEFINE_bool("json", False, "Print one JSON line last.")
    flags.DEFINE_integer("steps", 3, "Steps per timed round.")
    flags.DEFINE_integer("rounds", 3, "Alternating rounds (median is reported).")
    f = flags.FLAGS

    def main(argv):
        del argv
        if f.compare:
            # The twin runs in another process; on a GPU, JAX would otherwise take 75% of its
            # memory before torch allocates anything. (Read when JAX first touches the device.)
            os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
        result = run(mode=mode, model_name=f.model, batch=f.batch, size=f.size, dtype=f.dtype,
                     compare=f.compare or None, num_classes=f.num_classes,
                     steps_per_round=f.steps, rounds=f.rounds)
        print(result.table(), flush=True)
        if f.json:
            print(result.as_json(), flush=True)

    # The commands' shared preamble: a bad flag or model name ends with one `error:` line.
    from experiments import cli as command

    command.run(main, lambda: None)
