"""The classical baselines' benchmark: every method over a dataset's validation images, timed and
scored, and the report (`results.json`, `report.md`, figures) of `python -m experiments.classical`.

    results, predictions, examples = evaluate("synthetic_shapes/clean", num_images=32)
    write_outputs(workdir, "synthetic_shapes/clean", results, predictions, examples)

The methods run host-side in a process pool (one task per image, every method on it); the
scores come from `segjax.metrics` in the parent, summed over the images like a deep model's
evaluation: mIoU from the summed confusion matrix, Boundary IoU (band 2% of the diagonal) from
the summed per-class counts. Images come from `synthetic_shapes.generate` (no TFDS preparation):
example i of the validation split, i = 0..num_images-1.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import time
from typing import Callable

import numpy as np

from segjax import jsonio
from segjax.classical import INPUTS_TEXT, LABELLING_TEXT, METHODS, segment

_UNSUPERVISED = ("num_regions", "boundary_recall", "undersegmentation_error")


def load_examples(dataset: str, num_images: int | None, split: str = "validation") -> list[dict]:
    """The first `num_images` examples (None: all) of `split` of `synthetic_shapes[/<config>]`:
    dicts with `image` uint8 [H, W, 3], `label` uint8 [H, W], `instances` [H, W]."""
    from segjax.data.builders import synthetic_shapes

    base, _, config_name = dataset.partition("/")
    if base != "synthetic_shapes":
        raise ValueError(f"--dataset={dataset!r}: the classical runner reads synthetic_shapes "
                         "configs (synthetic_shapes/<config>) through their generator only")
    configs = {c.name: c for c in synthetic_shapes.BUILDER_CONFIGS}
    config = configs.get(config_name or "clean")
    if config is None:
        raise ValueError(f"--dataset={dataset!r}: unknown config; known: {sorted(configs)}")
    count = config.num_validation if split == "validation" else config.num_train
    if num_images is not None:
        if num_images > count:
            raise ValueError(f"{dataset} has {count} {split} images, asked for {num_images}")
        count = num_images
    out = []
    for i in range(count):
        ex = synthetic_shapes.generate(config, split, i)
        out.append({"image": ex["image"], "label": ex["label"][..., 0],
                    "instances": ex["instances"][..., 0], "index": i})
    return out


def _run_image(task) -> dict:
    """Every method in `names` on one example: predictions and timings (a pool task)."""
    names, example, num_classes = task
    out = {}
    for name in names:
        start, cpu_start = time.perf_counter(), time.process_time()
        res = segment(name, example["image"], example["label"], example["instances"], num_classes)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        out[name] = {"pred": res["pred"].astype(np.uint8), "seconds": seconds, "cpu_seconds": cpu,
                     **{k: res[k] for k in _UNSUPERVISED if k in res}}
    return out


def _scores(preds: np.ndarray, labels: np.ndarray, num_classes: int, ignore_label: int) -> dict:
    """mIoU and Boundary IoU of class maps [N, H, W] (K classes), and of object vs background."""
    from segjax import metrics

    out = {}
    for suffix, p, g, k in (("", preds, labels, num_classes),
                            ("_binary", (preds > 0).astype(np.uint8), (labels > 0).astype(np.uint8), 2)):
        conf = np.zeros((k, k), np.int64)
        inter, union = np.zeros(k, np.int64), np.zeros(k, np.int64)
        for s in range(0, len(p), 64):  # chunks keep the boundary maps [n, K, H, W] small
            conf += np.asarray(metrics.confusion_matrix(p[s:s + 64], g[s:s + 64], k,
                                                        ignore_label=ignore_label)).astype(np.int64)
            i, u = metrics.boundary_iou_counts(p[s:s + 64], g[s:s + 64], k, ignore_label=ignore_label)
            inter += np.asarray(i).astype(np.int64)
            union += np.asarray(u).astype(np.int64)
        acc = metrics.ConfusionAccumulator(k)
        acc.update(conf)
        acc.update_boundary(inter, union)
        res = acc.result()
        out["miou" + suffix] = res["miou"]
        out["boundary_iou" + suffix] = res["boundary_iou"]
        if not suffix:
            out["iou_per_class"] = res["iou_per_class"]
            out["pixel_accuracy"] = res["pixel_accuracy"]
    return out


def evaluate(dataset: str, *, num_images: int | None = None, methods: list[str] | None = None,
             workers: int = 0, progress: Callable[[str], None] = print):
    """Runs `methods` (default: every available one) on the validation images of `dataset`.

    `workers`: processes (0 = one per core; 1 = in this process). Returns (results, predictions,
    examples): results {method: {"miou", "boundary_iou", "seconds_per_image", "inputs", ...}},
    predictions {method: uint8 [N, H, W] class maps}, and the examples scored.
    """
    from segjax.classical import available_methods
    from segjax.data.datasets import get_dataset_info

    info = get_dataset_info(dataset)
    names = list(methods) if methods else available_methods()
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    examples = load_examples(dataset, num_images)
    tasks = [(names, ex, info.num_classes) for ex in examples]
    workers = workers or os.cpu_count() or 1
    start, per_image = time.perf_counter(), []

    def report(done):
        if done == len(tasks) or done % max(1, len(tasks) // 10) == 0:
            progress(f"{dataset}: {done}/{len(tasks)} images, {time.perf_counter() - start:.0f} s")

    if workers == 1:
        for t in tasks:
            per_image.append(_run_image(t))
            report(len(per_image))
    else:
        # spawn: the parent may have started JAX's threads, which a fork would copy mid-flight.
        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            for res in pool.imap(_run_image, tasks):
                per_image.append(res)
                report(len(per_image))
    labels = np.stack([ex["label"] for ex in examples])
    results, predictions = {}, {}
    for name in names:
        preds = np.stack([r[name]["pred"] for r in per_image])
        predictions[name] = preds
        method = METHODS[name]
        entry = _scores(preds, labels, info.num_classes, info.ignore_label)
        entry["seconds_per_image"] = float(np.mean([r[name]["seconds"] for r in per_image]))
        # CPU time of the process: what the wall time would be on an idle core (shared machines).
        entry["cpu_seconds_per_image"] = float(np.mean([r[name]["cpu_seconds"] for r in per_image]))
        entry["inputs"] = INPUTS_TEXT[method.inputs]
        entry["labelling"] = LABELLING_TEXT[method.output]
        entry["output"] = method.output
        entry["summary"] = method.summary
        for key in _UNSUPERVISED:
            if key in per_image[0][name]:
                entry[key] = float(np.nanmean([r[name][key] for r in per_image]))
        results[name] = entry
    return results, predictions, examples


def results_table(results: dict) -> str:
    """A Markdown table of the results, one row per method."""
    rows = ["| method | inputs | labels | mIoU | Boundary IoU | mIoU obj/bg | s/image | "
            "CPU s/image | regions | boundary recall | under-seg. error |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        extra = ([f"{r['num_regions']:.0f}", f"{r['boundary_recall']:.3f}",
                  f"{r['undersegmentation_error']:.3f}"] if "num_regions" in r else ["", "", ""])
        rows.append(f"| {name} | {r['inputs']} | {r['labelling']} | {r['miou']:.3f} | "
                    f"{r['boundary_iou']:.3f} | {r['miou_binary']:.3f} | {r['seconds_per_image']:.3f} | "
                    f"{r['cpu_seconds_per_image']:.3f} | "
                    + " | ".join(extra) + " |")
    return "\n".join(rows)


def figure_grid(path: str, examples: list[dict], predictions: dict, palette: np.ndarray, *,
                row_titles: list[str] | None = None, max_rows: int = 4) -> None:
    """PNG grid: one row per example (image, ground truth, then each method's class map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segjax.visualize import colorize

    rows = min(max_rows, len(examples))
    names = list(predictions)
    cols = 2 + len(names)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows + 0.3), squeeze=False)
    for r in range(rows):
        panels = [examples[r]["image"], colorize(examples[r]["label"], palette)]
        panels += [colorize(predictions[n][r], palette) for n in names]
        for c, (panel, title) in enumerate(zip(panels, ["image", "ground truth", *names])):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title.replace("_", "\n", 1), fontsize=6)
        if row_titles:
            axes[r, 0].set_ylabel(row_titles[r], fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(workdir: str, dataset: str, results: dict, predictions: dict,
                  examples: list[dict], *, command: str = "", figure_rows: int = 4) -> dict:
    """Writes `results.json` (DESIGN §3 format), `report.md` and `figure.png` into `workdir`."""
    from segjax.data.datasets import get_dataset_info

    os.makedirs(workdir, exist_ok=True)
    # Methods in run order. The IoU of a class absent from both truth and prediction is
    # undefined (NaN in memory): null in the file, which is strict JSON.
    jsonio.dump(jsonio.finite_or_none(results), os.path.join(workdir, "results.json"), indent=1)
    figure_grid(os.path.join(workdir, "figure.png"), examples, predictions,
                get_dataset_info(dataset).palette, max_rows=figure_rows)
    lines = [f"# Classical baselines on `{dataset}`", "",
             f"Validation images 0..{len(examples) - 1} ({len(examples)} images); "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [results_table(results), "",
              "mIoU and Boundary IoU are over the dataset's classes after the labelling in the "
              "`labels` column (oracle where it says so); `mIoU obj/bg` scores object vs "
              "background only. Seconds per image: wall time in one worker process (CPU s: its "
              "process CPU time, the better number on a shared machine), inputs and labelling "
              "included.",
              "", "![same images under each method](figure.png)", ""]
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write("\n".join(lines))
    return results


def write_study(workdir: str, runs: dict, *, figure_index: int = 0, command: str = "") -> list[str]:
    """Several datasets' runs {dataset: (results, predictions, examples)} in one table
    (`study.md`: mIoU / Boundary IoU per method and dataset) and one figure (`study.png`: rows =
    datasets, columns = methods, example `figure_index` of each)."""
    from segjax.data.datasets import get_dataset_info

    datasets = list(runs)
    names = list(next(iter(runs.values()))[0])
    short = [d.partition("/")[2] or d for d in datasets]
    lines = [f"# Classical baselines across {len(datasets)} datasets", ""]
    if command:
        lines += ["```", command, "```", ""]
    for key, title in (("miou", "mIoU"), ("boundary_iou", "Boundary IoU"),
                       ("miou_binary", "mIoU, object vs background"),
                       ("boundary_recall", "Boundary recall (over-segmentations, 2 px)"),
                       ("undersegmentation_error", "Under-segmentation error (over-segmentations)"),
                       ("num_regions", "Regions per image (over-segmentations)"),
                       ("cpu_seconds_per_image", "CPU seconds per image")):
        lines += [f"## {title}", "", "| method | inputs | " + " | ".join(short) + " |",
                  "|---|---|" + "---:|" * len(short)]
        for n in names:
            if key not in runs[datasets[0]][0][n]:
                continue
            cells = [f"{runs[d][0][n][key]:.3f}" for d in datasets]
            lines.append(f"| {n} | {runs[datasets[0]][0][n]['inputs']} | " + " | ".join(cells) + " |")
        lines.append("")
    n_images = len(next(iter(runs.values()))[2])
    lines += [f"Validation images 0..{n_images - 1} of each dataset.", "",
              "![rows = datasets, columns = methods](study.png)", ""]
    md = os.path.join(workdir, "study.md")
    with open(md, "w") as f:
        f.write("\n".join(lines))
    rows = [runs[d][2][figure_index] for d in datasets]
    preds = {n: [runs[d][1][n][figure_index] for d in datasets] for n in names}  # sizes may differ
    png = os.path.join(workdir, "study.png")
    figure_grid(png, rows, preds, get_dataset_info(datasets[0]).palette, row_titles=short,
                max_rows=len(datasets))
    return [md, png]
