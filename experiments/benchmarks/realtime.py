"""The real-time pair (ENet, ICNet) against the networks they were built to outrun, on this machine.

  python -m experiments.benchmarks.realtime [--models=enet,icnet_resnet18,...] [--height=512]
      [--width=1024] [--steps=3] [--reference=pspnet_resnet50]

For each model (registry defaults, 19 classes as on Cityscapes; ICNet without its guidance heads,
which only training reads): the compiled eval forward + argmax on one `height` x `width` image,
frames per second as the median of `--steps` timed calls after a warm-up call, forward GFLOPs
(XLA's count, as in model_table), and the speed-up over `--reference` measured in the same run.
The papers time GPUs: ICNet 30.3 fps at 1024 x 2048 on a Titan X; ENet 135.4 fps at 640 x 360 and
46.8 at 1280 x 720 on a Titan X (its Table 2). A 2-core CPU runs the same comparison at a size it
can afford; the ratios, not the fps, are what carries over.
"""

from __future__ import annotations

import statistics

import numpy as np
from absl import app, flags

from experiments.benchmarks import common
from segjax.models import create_model
from segjax.models.registry import accepted_overrides

DEFAULT_MODELS = ("enet", "icnet_resnet18", "icnet_resnet50", "pspnet_resnet18", "pspnet_resnet50",
                  "deeplabv3plus_resnet50")


def define_flags() -> None:
    """The command's flags (defined when it runs as a command)."""
    global _MODELS, _H, _W, _STEPS, _REF
    _MODELS = flags.DEFINE_list("models", list(DEFAULT_MODELS), "Models to time.")
    _H = flags.DEFINE_integer("height", 512, "Image height.")
    _W = flags.DEFINE_integer("width", 1024, "Image width.")
    _STEPS = flags.DEFINE_integer("steps", 3, "Timed calls per model (median).")
    _REF = flags.DEFINE_string("reference", "pspnet_resnet50", "Speed-ups are over this model.")


def time_eval(name: str, height: int, width: int, steps: int, num_classes: int = 19) -> dict:
    """{"fps", "gflops", "compile_s"} of model `name`'s compiled eval forward + argmax
    (`step_bench`'s eval step)."""
    from experiments.benchmarks import step_bench

    overrides = {"aux_loss": False} if "aux_loss" in (accepted_overrides(name) or set()) else {}
    model = create_model(name, num_classes=num_classes, **overrides)
    image = np.random.default_rng(0).normal(size=(1, height, width, 3)).astype(np.float32)
    run, compile_s, flops = step_bench._segjax_eval(model, {"image": image})  # run once: warm
    seconds = statistics.median(common.time_calls(run, 1) for _ in range(steps))
    return {"fps": 1.0 / seconds, "gflops": (flops or float("nan")) / 1e9, "compile_s": compile_s}


def main(argv):
    del argv
    names = list(_MODELS.value)
    if _REF.value not in names:
        names.append(_REF.value)
    rows = {}
    for name in names:
        rows[name] = time_eval(name, _H.value, _W.value, _STEPS.value)
        print(f"# {name}: {rows[name]['fps']:.3f} fps (compiled in {rows[name]['compile_s']:.0f} s)",
              flush=True)
    ref = rows[_REF.value]["fps"]
    print(f"\n{common.device_name()}, {_H.value}x{_W.value}, batch 1, median of {_STEPS.value}\n")
    print(f"| model | GFLOPs | fps | speed-up over {_REF.value} |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['gflops']:.1f} | {r['fps']:.3f} | {r['fps'] / ref:.1f}× |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
