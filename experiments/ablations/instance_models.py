"""Dense sliding-window masks (TensorMask) vs detect-then-segment (Mask R-CNN) on the same data.

Both demos as they ship (`tensormask.py:demo`: R18-FPN P2-P5, GroupNorm towers, 1000 steps;
`maskrcnn.py:demo`: R18-FPN, 600 steps; both ResNet-18 at width 32, FPN 64, batch 8 of 128x128,
from scratch), on `synthetic_shapes` and on `synthetic_shapes/overlap` (later objects drawn over
earlier ones), 2 seeds each, scored by the same COCOeval.

The speeds come from each run's TensorBoard events (`train/images_per_s`, logged every 25 steps,
and `validation/eval_seconds` over the 128 validation images); the picture puts the last
evaluation's first validation images of seed 0 side by side (truth | Mask R-CNN | TensorMask):

    python -m experiments.ablations --study=instance_models --workdir=DIR   # trains, REPORT.md
    python -m experiments.ablations.instance_models DIR   # the table with speeds, DIR/instance_models/*.png
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys

from experiments.ablations import Part, Study

_SWEEP = "dataset.name=synthetic_shapes,synthetic_shapes/overlap"
_METRICS = ("mask_ap", "mask_ap50", "mask_ap75", "box_ap")

STUDY = Study(
    name="instance_models",
    question="On the same data and CPU budget, how do dense sliding-window masks (TensorMask) "
             "compare with detect-then-segment (Mask R-CNN), on separate and on overlapping "
             "objects?",
    parts=(
        Part(name="tensormask", title="TensorMask (`tensormask.py:demo`, 1000 steps)",
             base="experiments/configs/tensormask.py:demo", sweeps=(_SWEEP,), seeds=(0, 1),
             metrics=_METRICS),
        Part(name="maskrcnn", title="Mask R-CNN (`maskrcnn.py:demo`, 600 steps)",
             base="experiments/configs/maskrcnn.py:demo", sweeps=(_SWEEP,), seeds=(0, 1),
             metrics=_METRICS),
    ),
)


def run_speeds(run_dir: str) -> dict:
    """{train_img_per_s: median of the logged training throughput after the first log (which
    includes compilation), train_img_per_s_best: its best 25-step window (the least disturbed by
    other work on a shared machine), eval_img_per_s: validation images / the fastest evaluation after the
    first, minutes: wall time between the first and last event, summed over restarts}."""
    from tensorflow.core.util import event_pb2
    import tensorflow as tf

    from segjax.data.builders.synthetic_shapes import BUILDER_CONFIGS

    with open(os.path.join(run_dir, "config.json")) as f:
        name = json.load(f)["dataset"]["name"]
    images = {c.name: c.num_validation for c in BUILDER_CONFIGS}[name.partition("/")[2] or "clean"]
    train, evals, seconds = [], [], 0.0
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):  # one per (re)start
        walls = []
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            walls.append(event.wall_time)
            for v in event.summary.value:
                value = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
                if v.tag == "train/images_per_s":
                    train.append(value)
                elif v.tag == "validation/eval_seconds":
                    evals.append(value)
        seconds += max(walls) - min(walls) if walls else 0.0
    return {"train_img_per_s": statistics.median(train[1:]) if len(train) > 1 else None,
            "train_img_per_s_best": max(train[1:]) if len(train) > 1 else None,
            "eval_img_per_s": images / min(evals[1:]) if len(evals) > 1 else None,
            "minutes": seconds / 60}


def _run_dirs(workdir: str) -> dict:
    """{(part, dataset, seed): run directory} of every run of the study."""
    from experiments.ablations.runner import load_base
    from segjax.train import sweep

    out = {}
    for part in STUDY.parts:
        base = load_base(part.base)
        for cell in sweep.grid([sweep.parse_sweep(s) for s in part.sweeps]):
            for seed in part.seeds:
                out[part.name, cell[0][1], seed] = sweep.config_run_dir(
                    os.path.join(workdir, "runs"), sweep.make_config(base, cell, seed))
    return out


def picture(workdir: str, dataset: str, seed: int = 0, images: int = 4) -> str:
    """DIR/instance_models/<dataset>.png: per validation image, truth | Mask R-CNN | TensorMask
    (the last evaluation's pictures, each `truth | prediction` from the trainer)."""
    import numpy as np
    from PIL import Image

    dirs = _run_dirs(workdir)
    rows = []
    for i in range(images):
        cells = []
        for part in ("maskrcnn", "tensormask"):
            pred = os.path.join(dirs[part, dataset, seed], "predictions")
            last = sorted(os.listdir(pred))[-1]
            pair = np.asarray(Image.open(os.path.join(pred, last, f"{i:05d}.png")).convert("RGB"))
            half = (pair.shape[1] - 2) // 2
            if not cells:
                cells.append(pair[:, :half])
            cells.append(pair[:, -half:])
        gap = np.full((cells[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate(sum(([c, gap] for c in cells), [])[:-1], axis=1))
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate(sum(([r, gap] for r in rows), [])[:-1], axis=0)
    path = os.path.join(workdir, STUDY.name, dataset.replace("/", "_") + ".png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
    return path


def main(workdir: str) -> None:
    from segjax.train import sweep

    print("| model | dataset | seed | " + " | ".join(_METRICS) + " | train img/s (median, best) | eval img/s | minutes |")
    print("|---|---|---:|" + "---:|" * (len(_METRICS) + 3))
    fmt = lambda v, p=1: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    for (part, dataset, seed), d in _run_dirs(workdir).items():
        if not os.path.exists(os.path.join(d, sweep.RESULT_FILE)):
            print(f"| {part} | {dataset} | {seed} | not run |")
            continue
        final = sweep.final_metrics(sweep.read_metrics(d))
        s = run_speeds(d)
        print(f"| {part} | {dataset} | {seed} | " +
              " | ".join(fmt(sweep.metric_value(final, m), 3) for m in _METRICS) +
              f" | {fmt(s['train_img_per_s'])}, {fmt(s['train_img_per_s_best'])} | {fmt(s['eval_img_per_s'])} | "
              f"{fmt(s['minutes'], 0)} |")
    for dataset in ("synthetic_shapes", "synthetic_shapes/overlap"):
        try:
            print("wrote", picture(workdir, dataset))
        except (KeyError, FileNotFoundError) as e:
            print(f"no picture for {dataset}: {e}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
