"""Dense sliding-window masks (TensorMask) vs detect-then-segment (Mask R-CNN, and PANet's paths
on top of it) on the same data.

The demos as they ship (`tensormask.py:demo`: R18-FPN P2-P5, GroupNorm towers, 1000 steps;
`maskrcnn.py:demo`: R18-FPN, 600 steps; `panet.py:shapes`: the Mask R-CNN demo with PANet's
bottom-up path, adaptive feature pooling and fused mask branch; all ResNet-18 at width 32, FPN 64,
batch 8 of 128x128, from scratch), on `synthetic_shapes` and on `synthetic_shapes/overlap` (later
objects drawn over earlier ones), 2 seeds each, scored by the same COCOeval.

The speeds come from each run's TensorBoard events (`train/images_per_s`, logged every 25 steps,
and `validation/eval_seconds` over the 128 validation images); the picture puts the last
evaluation's first validation images of seed 0 side by side (truth | Mask R-CNN | TensorMask |
PANet):

    python -m experiments.ablations --study=instance_models --workdir=DIR   # trains, REPORT.md
    python -m experiments.ablations.instance_models DIR   # the table with speeds, DIR/instance_models/*.png
    python -m experiments.ablations.instance_models --ceiling   # what each mask frame can represent
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
             "objects, and what do PANet's paths add to Mask R-CNN?",
    parts=(
        Part(name="tensormask", title="TensorMask (`tensormask.py:demo`, 1000 steps)",
             base="experiments/configs/tensormask.py:demo", sweeps=(_SWEEP,), seeds=(0, 1),
             metrics=_METRICS),
        Part(name="maskrcnn", title="Mask R-CNN (`maskrcnn.py:demo`, 600 steps)",
             base="experiments/configs/maskrcnn.py:demo", sweeps=(_SWEEP,), seeds=(0, 1),
             metrics=_METRICS),
        Part(name="panet", title="PANet (`panet.py:shapes`, the Mask R-CNN demo's 600 steps)",
             base="experiments/configs/panet.py:shapes", sweeps=(_SWEEP,), seeds=(0, 1),
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
    from experiments.ablations.runner import run_dirs

    return {(part, cell[0][1], seed): run
            for (part, cell, seed), run in run_dirs(STUDY, workdir).items()}


def picture(workdir: str, dataset: str, seed: int = 0, images: int = 4) -> str:
    """DIR/instance_models/<dataset>.png: per validation image, truth | Mask R-CNN | TensorMask |
    PANet (the last evaluation's pictures, each `truth | prediction` from the trainer)."""
    import numpy as np
    from PIL import Image

    dirs = _run_dirs(workdir)
    rows = []
    for i in range(images):
        cells = []
        for part in ("maskrcnn", "tensormask", "panet"):
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


def mask_frame_ceiling(dataset: str = "clean", min_anchor_size: float = 20.0) -> dict:
    """How well each method's mask frame can represent the validation objects at all: every
    ground-truth mask cut into the frame at the frame's resolution (ROI Align aligned, >= 0.5, as
    the targets are made), pasted back (`paste_masks`) and compared with itself (IoU). Mask R-CNN:
    28 x 28 in the object's box. TensorMask (the demo's anchors): window / 4 pixels a side in each
    positive window of the assignment rule (the best window per object, and all of them). Also the
    share of objects with a positive window and the positives per object."""
    import numpy as np
    import jax.numpy as jnp

    from segjax.data.builders.synthetic_shapes import BUILDER_CONFIGS, generate
    from segjax.models.detection.anchors import grid_anchors
    from segjax.models.detection.tensormask import assignment_rule, window_mask_targets
    from segjax.ops import paste_masks
    from segjax.tasks.instance import instance_targets

    cfg = {c.name: c for c in BUILDER_CONFIGS}[dataset]
    size = cfg.image_size
    sizes = ((24, 32), (48, 64), (96, 128), (192, 256))  # tensormask.py:demo
    wins, units = [], []
    for lvl, zs in enumerate(sizes):
        s = 4 * 2 ** lvl
        wins.append(grid_anchors((size // s, size // s), (s, s),
                                 np.asarray([[-z / 2, -z / 2, z / 2, z / 2] for z in zs], np.float32)))
        units.append(np.full(len(wins[-1]), s, np.float32))
    wins, units = np.concatenate(wins), np.concatenate(units)

    def iou(box, gt, j, side):
        target = window_mask_targets(gt, jnp.asarray(box[None]), jnp.asarray([j]), side)
        pasted = np.asarray(paste_masks(target, jnp.asarray(box[None]), (size, size)))[0] >= 0.5
        mask = np.asarray(gt[j]) > 0.5
        return float((pasted & mask).sum() / max((pasted | mask).sum(), 1))

    maskrcnn, best, every, hit, positives = [], [], [], 0, 0
    for i in range(cfg.num_validation):
        ex = generate(cfg, "validation", i)
        t = instance_targets(ex["label"][None, ..., 0].astype(np.int32),
                             ex["instances"][None, ..., 0].astype(np.int32), max_instances=16, ignore_label=255)
        k, gt = int(t["num_instances"][0]), jnp.asarray(t["masks"][0])
        match, pos = map(np.asarray, assignment_rule(jnp.asarray(t["boxes"][0]), jnp.arange(16) < k,
                                                     jnp.asarray(wins), jnp.asarray(units), min_anchor_size))
        for j in range(k):
            maskrcnn.append(iou(t["boxes"][0][j], gt, j, 28))
            ious = [iou(wins[w], gt, j, int(round((wins[w, 2] - wins[w, 0]) / 4)))
                    for w in np.flatnonzero(pos & (match == j))]
            hit, positives = hit + bool(ious), positives + len(ious)
            if ious:
                best.append(max(ious))
                every += ious

    def summary(v):
        v = np.asarray(v)
        return {"mean": float(v.mean()), "at_least_0.75": float((v >= 0.75).mean()),
                "at_least_0.9": float((v >= 0.9).mean())}

    return {"dataset": dataset, "objects": len(maskrcnn), "with_positive_window": hit / len(maskrcnn),
            "positives_per_object": positives / len(maskrcnn), "maskrcnn_28_in_box": summary(maskrcnn),
            "tensormask_best_window": summary(best), "tensormask_every_positive": summary(every)}


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
    if sys.argv[1] == "--ceiling":
        for name in ("clean", "overlap"):
            from segjax import jsonio

            print(jsonio.dumps(mask_frame_ceiling(name)))
    else:
        main(sys.argv[1])
