r"""TensorMask's `swap_align2nat` alone at detectron2's P2 sizes: compile and run time, forward and
gradient, the full op and the windowed form the model trains with.

    python -m experiments.benchmarks.swap_align2nat [--height=200 --width=336 --mask_size=15] [--windows=64]

The default is P2 of an 800 x 1344 COCO image with V = 15 (the 60-pixel windows). For each level
l = 0..5 (lambda = 2**l) the full op maps the aligned P2 masks [1, H, W, V*V] to the natural ones
[1, H/lambda, W/lambda, (lambda V)^2], as detectron2's CUDA kernel does for every window; the
windowed form (`swap_align2nat_windows`) computes only `--windows` of them, as TensorMask's mask
loss does on its positives. No reference runs on a CPU (detectron2's kernel is CUDA-only), so
there is no ratio: the numbers say what the op costs inside a step. One JSON line per row with
--json.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from experiments.benchmarks import common
from segjax import jsonio
from segjax.ops import swap_align2nat, swap_align2nat_windows

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_integer("height", 200, "P2 height (800 / 4)")
    flags.DEFINE_integer("width", 336, "P2 width (1344 / 4)")
    flags.DEFINE_integer("mask_size", 15, "mask size V at P2 (window size / 4)")
    flags.DEFINE_integer("windows", 64, "windows per image of the windowed form")
    flags.DEFINE_integer("levels", 6, "levels P2.. (lambda = 1, 2, 4, ...)")
    flags.DEFINE_integer("repeats", 3, "timed runs per row (median)")
    flags.DEFINE_bool("json", False, "one JSON line per row")


def _time(fn, *args, repeats: int) -> tuple[float, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    common.block(compiled(*args))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        common.block(compiled(*args))
        runs.append(time.perf_counter() - start)
    return compile_s, float(np.median(runs))


def main(argv) -> None:
    cli.no_arguments(argv)
    for name in ("height", "width", "mask_size", "windows", "levels", "repeats"):
        if FLAGS[name].value < 1:
            raise ValueError(f"--{name} must be >= 1, got {FLAGS[name].value}")
    h, w, v = FLAGS.height, FLAGS.width, FLAGS.mask_size
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, h, w, v * v)), jnp.float32)
    rng = np.random.default_rng(1)
    print(f"| lambda | form | output | compile s | forward ms | gradient ms |  ({common.device_name()})")
    for lvl in range(FLAGS.levels):
        lam = 2 ** lvl
        ho, wo = -(-h // lam), -(-w // lam)
        ys = jnp.asarray(rng.integers(0, ho, size=(1, FLAGS.windows)))
        xs = jnp.asarray(rng.integers(0, wo, size=(1, FLAGS.windows)))
        forms = {
            "full": (lambda x, lam=lam: swap_align2nat(x, lam), f"[1, {ho}, {wo}, {(lam * v) ** 2}]"),
            "windows": (lambda x, lam=lam: swap_align2nat_windows(x, lam, ys, xs),
                        f"[1, {FLAGS.windows}, {lam * v}, {lam * v}]"),
        }
        for form, (fn, shape) in forms.items():
            compile_s, fwd = _time(fn, x, repeats=FLAGS.repeats)
            _, grad = _time(jax.grad(lambda x, fn=fn: jnp.sum(fn(x) ** 2)), x, repeats=FLAGS.repeats)
            row = {"lambda": lam, "form": form, "output": shape, "compile_s": round(compile_s, 2),
                   "forward_ms": round(fwd * 1e3, 2), "gradient_ms": round(grad * 1e3, 2)}
            if FLAGS.json:
                print(jsonio.dumps(row), flush=True)
            else:
                print(f"| {lam} | {form} | {shape} | {compile_s:.2f} | {fwd * 1e3:.1f} | {grad * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    cli.run(main, define_flags)
