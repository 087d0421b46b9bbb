r"""3D U-Net train and eval step time on one device, segjax against its torch twin, same run.

    python -m experiments.benchmarks.unet3d_step [--size=64] [--base_features=16] [--depth=3] \
      [--batch=1] [--num_classes=3] [--steps=3] [--rounds=3] [--json]

Defaults: batch 1, 1 channel, a 64^3 patch, base_features 16 (16/32 ... 64/128 channels, bottom
128/256), 3 poolings, 3 classes. Both sides get the same weights (segjax's initialisation copied
into `torch_unet3d.TorchUNet3D`) and the same random volume and labels. Train step: voxel-mean
cross-entropy, train-mode BatchNorm, SGD momentum 0.9 + weight decay 1e-4 (segjax: optax's
`add_decayed_weights` then `sgd`, torch's `SGD(weight_decay=...)`); segjax re-runs its compiled
step on the initial state, torch steps at lr 0, so every timed step sees the same weights (as
`step_bench`). Eval step: forward in eval mode + arg-max. The twin runs in a child process and
the two alternate rounds (`torch_twin.TwinProcess`, `common.median_alternating`); the table gives
images (volumes)/s both ways and segjax/torch.
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from experiments.benchmarks import common
from segjax.models import create_model

MODEL = "unet3d"


def setup(batch: int, size: int, base_features: int, depth: int, num_classes: int, seed: int = 0):
    """(model, variables, image [N, S, S, S, 1] float32, label [N, S, S, S] int32)."""
    model = create_model(MODEL, num_classes=num_classes, base_features=base_features, depth=depth,
                         in_channels=1)
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch, size, size, size, 1)).astype(np.float32)
    label = rng.integers(0, num_classes, size=(batch, size, size, size)).astype(np.int32)
    # An rbg key: threefry's init of a 3-D U-Net compiles for seconds (14 s at 8^3 under load).
    variables = jax.jit(model.init)(jax.random.key(seed, impl="rbg"), image[:1])
    return model, jax.device_get(variables), image, label


def flatten(variables, image: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    """`variables` as `{"<collection>/<layer>/<name>": array}` plus the batch: the twin's `.npz`."""
    flat = {"/".join(k.key for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(dict(variables))[0]}
    return {**flat, "image": image, "label": label}


def segjax_steps(model, variables, image, label, modes=("train", "eval")):
    """{mode: (step_fn, compile_s, flops)} for "train" and/or "eval", each step blocking."""
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(1e-3, momentum=0.9))
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    x, y = jax.device_put(image), jax.device_put(label)

    def train(state, x, y):
        params, batch_stats, opt_state = state

        def loss_fn(p):
            out, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                   mutable=["batch_stats"])
            ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], y)
            return jnp.mean(ce), new["batch_stats"]

        (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state

    def predict(variables, x):
        return jnp.argmax(model.apply(variables, x, train=False)["logits"], axis=-1)

    out = {}
    for mode, fn, args in (("train", train, (state, x, y)), ("eval", predict, (variables, x))):
        if mode not in modes:
            continue
        flops = common.model_flops(fn, *args)
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        out[mode] = (lambda c=compiled, a=args: common.block(c(*a)), time.perf_counter() - start,
                     flops)
    return out


def run(*, batch: int = 1, size: int = 64, base_features: int = 16, depth: int = 3,
        num_classes: int = 3, steps_per_round: int = 3, rounds: int = 3,
        modes=("train", "eval")) -> dict[str, common.Result]:
    """Times the steps of `modes` both ways; returns {mode: Result} ("torchvision_*" fields: the
    torch twin)."""
    from experiments.benchmarks import torch_twin

    for name, value, low in (("batch", batch, 1), ("size", size, 2 ** depth),
                             ("base_features", base_features, 1), ("depth", depth, 1)):
        if value < low:
            raise ValueError(f"--{name} must be >= {low}, got {value}")
    model, variables, image, label = setup(batch, size, base_features, depth, num_classes)
    ours = segjax_steps(model, variables, image, label, modes)
    peak = common.measure_matmul_peak("float32")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        arrays = os.path.join(tmp, "unet3d.npz")
        np.savez(arrays, **flatten(variables, image, label))
        for mode in modes:
            twin = torch_twin.TwinProcess(MODEL, num_classes, batch, size, "float32", mode == "train",
                                          module="experiments.benchmarks.torch_unet3d",
                                          arrays=arrays, base_features=base_features, depth=depth)
            try:
                step, compile_s, flops = ours[mode]
                step()
                js, ts = common.median_alternating(step, twin.seconds_per_step, steps_per_round,
                                                   rounds)
            finally:
                twin.close()
            results[mode] = common.Result(
                model=f"{MODEL}(base_features={base_features}, depth={depth})", mode=mode,
                batch=batch, size=size, dtype="float32", device=common.device_name(),
                segjax_s_per_step=js, compile_s=compile_s, flops_per_step=flops,
                peak_flops=peak, peak_memory_bytes=common.peak_memory_bytes(),
                torchvision_s_per_step=ts, torchvision_compile_s=twin.first_step_s)
    return results


def main() -> None:
    flags.DEFINE_integer("batch", 1, "Volumes per step.")
    flags.DEFINE_integer("size", 64, "Cubic patch side (voxels).")
    flags.DEFINE_integer("base_features", 16, "Features of the first level.")
    flags.DEFINE_integer("depth", 3, "Pooling levels.")
    flags.DEFINE_integer("num_classes", 3, "Classes.")
    flags.DEFINE_integer("steps", 3, "Steps per timed round.")
    flags.DEFINE_integer("rounds", 3, "Alternating rounds (median is reported).")
    flags.DEFINE_bool("json", False, "Print one JSON line per mode last.")
    f = flags.FLAGS

    def run_main(argv):
        del argv
        results = run(batch=f.batch, size=f.size, base_features=f.base_features, depth=f.depth,
                      num_classes=f.num_classes, steps_per_round=f.steps, rounds=f.rounds)
        for result in results.values():
            print(result.table().replace("torchvision", "torch"), flush=True)
            print(flush=True)
        if f.json:
            for result in results.values():
                print(result.as_json(), flush=True)

    from experiments import cli as command

    command.run(run_main, lambda: None)


if __name__ == "__main__":
    main()
