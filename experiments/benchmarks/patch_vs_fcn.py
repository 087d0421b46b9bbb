r"""The first deck's "inefficiency of overlapping patches", measured: one patch classifier's
weights applied by sliding window (every pixel's patch classified on its own) and as its fully
convolutional twin (shared features), on the same images, alternating in one run.

    python -m experiments.benchmarks.patch_vs_fcn [--sizes=32,64,128] [--batch=1] [--json]

Prints per image size: seconds per image both ways, XLA's FLOPs both ways (the sliding window's
as one patch's times the pixels: XLA counts a loop body once), their ratios, and
the largest difference between the two outputs (they are the same function). Defaults are
Farabet et al.'s network (46 x 46 patches, 7 x 7 convolutions with 16, 64, 256 filters).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.benchmarks import common
from segjax import jsonio

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("sizes", ["32", "64", "128"], "Square image sizes.")
    flags.DEFINE_integer("batch", 1, "Images per step.")
    flags.DEFINE_integer("rounds", 3, "Alternating rounds (median is reported).")
    flags.DEFINE_bool("json", False, "Print one JSON line per size.")


def measure(size: int, batch: int = 1, rounds: int = 3, num_classes: int = 8) -> dict:
    """Seconds per image, FLOPs and the largest output difference of the two ways at `size`."""
    from segjax.models import create_model
    from segjax.models.patch import PatchClassifier

    model = create_model("patch_classifier", num_classes=num_classes)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    ways = {"fcn": lambda v, x: model.apply(v, x)["logits"],
            "patches": lambda v, x: model.apply(v, x, method=PatchClassifier.classify_patches)["logits"]}
    compiled = {k: jax.jit(f).lower(variables, x).compile() for k, f in ways.items()}
    # The sliding window runs its patches in a loop (lax.map), which XLA's cost analysis counts
    # once: its FLOPs are one patch's, times the patches.
    one = jnp.zeros((1, model.patch_size, model.patch_size, 3), jnp.float32)
    flops = {"fcn": common.model_flops(ways["fcn"], variables, x),
             "patches": common.model_flops(lambda v, p: model.apply(v, p, method=PatchClassifier.classify_one),
                                           variables, one) * batch * size * size}
    outs = {k: common.block(c(variables, x)) for k, c in compiled.items()}
    times = {k: [] for k in ways}
    for _ in range(rounds):
        for k, c in compiled.items():
            start = time.perf_counter()
            common.block(c(variables, x))
            times[k].append((time.perf_counter() - start) / batch)
    s = {k: float(np.median(t)) for k, t in times.items()}
    return {"size": size, "patch_size": model.patch_size, "fcn_s_per_image": s["fcn"],
            "patches_s_per_image": s["patches"], "time_ratio": s["patches"] / s["fcn"],
            "fcn_gflops": flops["fcn"] / 1e9 / batch, "patches_gflops": flops["patches"] / 1e9 / batch,
            "flops_ratio": flops["patches"] / flops["fcn"],
            "max_abs_difference": float(jnp.max(jnp.abs(outs["fcn"] - outs["patches"]))),
            "device": common.device_name()}


def main(argv) -> None:
    del argv
    rows = [measure(int(s), FLAGS.batch, FLAGS.rounds) for s in FLAGS.sizes]
    print(f"patch classifier ({rows[0]['patch_size']}x{rows[0]['patch_size']} patches) on {rows[0]['device']}: "
          "sliding window vs its fully convolutional twin")
    print("| size | s/image patches | s/image FCN | time ratio | GFLOPs patches | GFLOPs FCN | FLOPs ratio | "
          "max |diff| |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['patches_s_per_image']:.3f} | {r['fcn_s_per_image']:.4f} | "
              f"{r['time_ratio']:.1f}x | {r['patches_gflops']:.2f} | {r['fcn_gflops']:.3f} | "
              f"{r['flops_ratio']:.1f}x | {r['max_abs_difference']:.1e} |")
    if FLAGS.json:
        for r in rows:
            print(jsonio.dumps(r))


if __name__ == "__main__":
    define_flags()
    app.run(main)
