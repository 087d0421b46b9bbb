"""Regenerates docs/scaling.md's modelled tables and plots (issue 17).

  python -m experiments.benchmarks.scaling_docs [--workdir=docs] [--compile_size=65]

For DeepLabV3-R101 (output stride 8) and DeepLabV3+-R101 (output stride 16), 21 classes: the
train step is compiled once per model for 2 host devices under pmap with direct convolutions
(`collectives.step_collectives`; the gradient, BatchNorm and loss bytes do not depend on the
image size, so a small size is compiled), then `scaling_model` predicts 513² at per-device batch
8 and 16 on each interconnect from an ASSUMED single-device step time (below). Writes
`OUT/figures/scaling_*.png` and `OUT/scaling_model.json`, and prints the markdown tables.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from segjax import jsonio


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    global _OUT, _COMPILE_SIZE
    _OUT = flags.DEFINE_string("workdir", "docs", "Folder written: scaling_model.json and figures/.")
    _COMPILE_SIZE = flags.DEFINE_integer("compile_size", 65, "Image size the step is compiled at.")


MODELS = {
    # name: (README model table: eval forward GFLOP per 513² image (XLA cost analysis), stride)
    "deeplabv3_resnet101": (448.8, 8),
    "deeplabv3plus_resnet101": (175.0, 16),
}
BATCHES = (8, 16)
SIZE = 513
# ASSUMPTION (no accelerator was lent): the single-device step time on an H100 SXM in bfloat16
# = 3 x forward FLOPs (forward + backward) / (MFU x peak). Peak: 989 TFLOP/s dense bf16 (NVIDIA
# H100 SXM datasheet); MFU 0.40 assumed. Replace with gpu_suite.sh's measured step time when a
# GPU is lent (--step_time_s of experiments.benchmarks.scaling).
H100_BF16_PEAK = 989e12
ASSUMED_MFU = 0.40
INTERCONNECTS = ("nvlink", "nvlink_eth400", "nvlink_eth100", "eth400", "eth100", "ici")
DEVICES = (1, 8, 64, 512)


def assumed_step_time(model: str, batch: int) -> float:
    gflop, _ = MODELS[model]
    return 3 * gflop * 1e9 * batch / (ASSUMED_MFU * H100_BF16_PEAK)


def main(argv):
    del argv
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_force_host_platform_device_count=2").strip()
    from experiments.benchmarks import collectives, common, scaling_model as M

    os.makedirs(os.path.join(_OUT.value, "figures"), exist_ok=True)
    report = {"assumptions": {"peak_flops": H100_BF16_PEAK, "mfu": ASSUMED_MFU, "size": SIZE,
                              "compile_size": _COMPILE_SIZE.value}, "models": {}}
    for model, (gflop, stride) in MODELS.items():
        with common.direct_convolutions():
            acc = collectives.step_collectives(model, per_device_batch=2,
                                               size=_COMPILE_SIZE.value, parallelism="pmap",
                                               num_devices=2, num_classes=21,
                                               overrides={"output_stride": stride})
        print(f"\n### {model} (output stride {stride})\n\n{acc.table()}", flush=True)
        summary = acc.summary()
        summary.pop("ops")
        traffic = M.StepTraffic.from_accounting(acc)
        entry = {"accounting": summary, "configs": {}}
        for batch in BATCHES:
            t = assumed_step_time(model, batch)
            per_ic = {}
            for name in INTERCONNECTS:
                per_ic[name] = M.variants(traffic, DEVICES, step_time_s=t, per_device_batch=batch,
                                          interconnect=M.INTERCONNECTS[name])
            entry["configs"][str(batch)] = {"step_time_s": t, "predicted": per_ic}
            print(f"\n{model}, batch {batch}/device, {SIZE}², ASSUMED step {t * 1e3:.1f} ms "
                  f"(H100 bf16, MFU {ASSUMED_MFU:.0%}); MODEL img/s (efficiency):\n")
            print("| interconnect | variant | " + " | ".join(f"{n} dev" for n in DEVICES) + " |")
            print("|---|---|" + "---:|" * len(DEVICES))
            for name, var in per_ic.items():
                for key in ("ring", "ring+overlap", "tree+overlap"):
                    cells = [f"{r['img_per_s']:.0f} ({r['efficiency']:.2f})" for r in var[key]]
                    print(f"| {name} | {key} | " + " | ".join(cells) + " |")
            M.plot(per_ic["nvlink"], os.path.join(_OUT.value, "figures",
                                                  f"scaling_{model}_b{batch}_nvlink.png"),
                   per_device_batch=batch, step_time_s=t,
                   title=f"MODEL (not measured): {model} {SIZE}², {batch}/device, nvlink "
                         f"(8/host, IB NDR between hosts); ASSUMED step {t * 1e3:.1f} ms")
            M.plot({name: per_ic[name]["tree+overlap"] for name in INTERCONNECTS},
                   os.path.join(_OUT.value, "figures", f"scaling_{model}_b{batch}_networks.png"),
                   per_device_batch=batch, step_time_s=t,
                   title=f"MODEL (not measured): {model} {SIZE}², {batch}/device, tree + "
                         f"overlap per interconnect; ASSUMED step {t * 1e3:.1f} ms")
        report["models"][model] = entry
    jsonio.dump(report, os.path.join(_OUT.value, "scaling_model.json"), indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
