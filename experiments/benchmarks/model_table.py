"""Markdown table of the registered models: parameters, forward GFLOPs, CPU speed, and accuracy.

  python -m experiments.benchmarks.model_table [--models=fcn8s_vgg16,unet] [--size=513] [--num_classes=21]
      [--speed_size=256] [--study_dir=DIR/model_zoo] [--plot=zoo.png] [--json=rows.json]
      [--speeds_from=rows.json]

Columns:
  params (M)   trainable parameters ("params" collection; BatchNorm running statistics excluded), 1e6.
  GFLOPs       XLA's `cost_analysis()["flops"]` of the compiled eval-mode forward pass on one
               `size` x `size` x 3 image, 1e9. A multiply-add counts 2, and XLA counts only the
               kernel taps that read real input (not zero padding: a 3x3 conv on an s x s map costs
               2 (3s - 2)^2 C_in C_out, not 2 * 9 s^2 C_in C_out), plus elementwise ops (BN, ReLU);
               tests/models/test_registry.py checks this on SegNet. `segjax.ops.atrous_conv2d`
               likewise skips taps that only read padding, so large atrous rates cost less.
               Convolutions are counted as the direct algorithm (`common.direct_convolutions`:
               Winograd's reduced products on CPU are an implementation choice, not the model's).
  OS           output stride of the model's default configuration (blank where it has none).
  aux          whether the default configuration returns `aux_logits`.
  eval / train img/s (with --speed_size=S > 0): images per second of the compiled eval forward
               (+ argmax) and of the whole train step (CE, SGD momentum) on this machine, batch
               `--speed_batch` of S x S images, the median of `--speed_steps` timed calls after a
               warm-up call (experiments.benchmarks.step_bench's steps).
  zoo ...      (with --study_dir, a `model_zoo` study directory): the CPU-size model that study
               trains (experiments/configs/model_zoo.py): its parameters and GFLOPs at 128 x 128,
               and its validation mIoU on synthetic_shapes/clean and /all, mean +- sample SD over
               the seeds run (their number in brackets).

Models are built with `create_model(name, num_classes=...)` and their defaults; parameters are
never materialised for the cost columns (shapes only), and each model is compiled once. No
TensorFlow import. `--plot` draws the zoo's mIoU against its GFLOPs.
"""

from __future__ import annotations

import csv
import glob
import inspect
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.benchmarks import common
from segjax.models import AUX_LOGITS, available_models, create_model
from segjax.models.registry import _REGISTRY


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    global _MODELS, _SIZE, _CLASSES, _SPEED_SIZE, _SPEED_BATCH, _SPEED_STEPS, _STUDY, _PLOT, _JSON
    global _SPEEDS_FROM
    _MODELS = flags.DEFINE_list("models", [], "Model names (default: every registered model).")
    _SIZE = flags.DEFINE_integer("size", 513, "Square input size.")
    _CLASSES = flags.DEFINE_integer("num_classes", 21, "Number of classes.")
    _SPEED_SIZE = flags.DEFINE_integer("speed_size", 0, "Image size of the speed columns (0: none).")
    _SPEED_BATCH = flags.DEFINE_integer("speed_batch", 1, "Batch size of the speed columns.")
    _SPEED_STEPS = flags.DEFINE_integer("speed_steps", 3, "Timed calls per speed (median).")
    _STUDY = flags.DEFINE_string("study_dir", "", "A model_zoo study directory (its mIoU columns).")
    _PLOT = flags.DEFINE_string("plot", "", "Where to draw the zoo's mIoU against GFLOPs (PNG).")
    _JSON = flags.DEFINE_string("json", "", "Where to write the rows as JSON.")
    _SPEEDS_FROM = flags.DEFINE_string("speeds_from", "", "A --json file of an earlier run whose "
                                       "speed columns are reused (measure once, join later).")


def model_row(name: str, size: int, num_classes: int, **overrides) -> dict:
    """Parameter count, forward FLOPs, default output stride and aux flag of model `name`
    (with `overrides` of its options)."""
    model = create_model(name, num_classes=num_classes, **overrides)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
    out = jax.eval_shape(model.apply, variables, x)
    start = time.perf_counter()
    with common.direct_convolutions():  # the model's FLOPs, not Winograd's reduced count
        cost = jax.jit(lambda v, a: model.apply(v, a)).lower(variables, x).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
        cost = cost[0]
    signature = inspect.signature(_REGISTRY[name]).parameters
    stride = signature["output_stride"].default if "output_stride" in signature else None
    return {
        "name": name,
        "params": params,
        "flops": float(cost["flops"]),
        "output_stride": stride,
        "aux": AUX_LOGITS in out,
        "compile_s": time.perf_counter() - start,
    }


def speed_row(name: str, size: int, batch: int, num_classes: int, steps: int) -> dict:
    """Eval and train images/s of model `name` (defaults) on `batch` random `size`^2 images."""
    from experiments.benchmarks import step_bench

    model = create_model(name, num_classes=num_classes)
    data = common.synthetic_batch(batch, size, num_classes)
    out = {}
    for mode, make in (("eval", step_bench._segjax_eval), ("train", step_bench._segjax_train)):
        run = make(model, data)[0]  # compiled, and called once (the warm-up)
        seconds = statistics.median(common.time_calls(run, 1) for _ in range(steps))
        out[f"{mode}_img_s"] = batch / seconds
    return out


def zoo_results(study_dir: str) -> dict[str, dict[str, list[float]]]:
    """`{model: {dataset: [mIoU of each seed]}}` from a model_zoo study's `*/results_miou.csv`
    (one part per model, swept over `dataset.name`)."""
    results: dict[str, dict[str, list[float]]] = {}
    for path in sorted(glob.glob(os.path.join(study_dir, "*", "results_miou.csv"))):
        model = os.path.basename(os.path.dirname(path))
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                results.setdefault(model, {}).setdefault(row["dataset.name"], []).append(
                    float(row["miou"]))
    return results


def _mean_sd(values: list[float] | None) -> str:
    if not values:
        return ""
    sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.3f}{sd} ({len(values)})"


def markdown(rows: list[dict], size: int, speed_size: int = 0) -> str:
    """The rows as a markdown table (speed and zoo columns when the rows have them)."""
    zoo = any("zoo_params" in r for r in rows)
    head = f"| model | params (M) | GFLOPs @ {size}x{size} | OS | aux |"
    rule = "|---|---:|---:|---:|:---:|"
    if speed_size:
        head += f" eval img/s @ {speed_size}² | train img/s @ {speed_size}² |"
        rule += "---:|---:|"
    if zoo:
        head += " zoo params (M) | zoo GFLOPs @ 128² | zoo mIoU clean | zoo mIoU all |"
        rule += "---:|---:|---:|---:|"
    lines = [head, rule]
    for r in rows:
        stride = "" if r["output_stride"] is None else str(r["output_stride"])
        line = (f"| {r['name']} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.1f} | {stride} | "
                f"{'yes' if r['aux'] else ''} |")
        if speed_size:
            line += "".join(f" {r[k]:.2f} |" if k in r else " |" for k in ("eval_img_s", "train_img_s"))
        if zoo:
            if "zoo_params" in r:
                line += (f" {r['zoo_params'] / 1e6:.3f} | {r['zoo_flops'] / 1e9:.2f} | "
                         f"{_mean_sd(r['zoo_miou'].get('synthetic_shapes/clean'))} | "
                         f"{_mean_sd(r['zoo_miou'].get('synthetic_shapes/all'))} |")
            else:
                line += " | | | |"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """The zoo's mIoU (mean and SD over seeds; clean and all) against its GFLOPs at 128²."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for dataset, marker, colour in (("synthetic_shapes/clean", "o", "tab:blue"),
                                    ("synthetic_shapes/all", "s", "tab:red")):
        pts = [(r["zoo_flops"] / 1e9, r["zoo_miou"][dataset], r["name"]) for r in rows
               if "zoo_params" in r and r["zoo_miou"].get(dataset)]
        for x, values, name in pts:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.errorbar(x, statistics.fmean(values), yerr=sd, fmt=marker, color=colour, ms=5,
                        capsize=2)
            ax.annotate(name, (x, statistics.fmean(values)), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
        ax.plot([], [], marker, color=colour, label=dataset.split("/")[1])
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs of the CPU-size model at 128×128 (log)")
    ax.set_ylabel("validation mIoU (mean ± SD over seeds)")
    ax.set_title("model_zoo: one recipe, every architecture (synthetic shapes)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    names = _MODELS.value or available_models("dense")
    unknown = sorted(set(names) - set(available_models()))
    if unknown:
        raise app.UsageError(f"unknown --models {unknown}; available: {', '.join(available_models())}")
    zoo = zoo_results(_STUDY.value) if _STUDY.value else {}
    if _STUDY.value and not zoo:
        raise app.UsageError(f"--study_dir={_STUDY.value} holds no */results_miou.csv")
    earlier = {}
    if _SPEEDS_FROM.value:
        with open(_SPEEDS_FROM.value) as f:
            earlier = {r["name"]: r for r in json.load(f)}
    rows = []
    for name in names:
        row = model_row(name, _SIZE.value, _CLASSES.value)
        if _SPEED_SIZE.value and "eval_img_s" in earlier.get(name, {}):
            row.update({k: earlier[name][k] for k in ("eval_img_s", "train_img_s")})
        elif _SPEED_SIZE.value:
            row.update(speed_row(name, _SPEED_SIZE.value, _SPEED_BATCH.value, _CLASSES.value,
                                 _SPEED_STEPS.value))
        if name in zoo:
            from experiments.configs.model_zoo import cpu_overrides

            small = model_row(name, 128, 6, **cpu_overrides(name))  # synthetic_shapes: 6 classes
            row.update(zoo_params=small["params"], zoo_flops=small["flops"], zoo_miou=zoo[name])
        rows.append(row)
        print(f"# {name}: compiled in {row['compile_s']:.1f} s", flush=True)
    print(markdown(rows, _SIZE.value, _SPEED_SIZE.value))
    if _PLOT.value:
        plot(rows, _PLOT.value)
    if _JSON.value:
        from segjax import jsonio

        jsonio.dump(rows, _JSON.value, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
