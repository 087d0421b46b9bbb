r"""Re-scores a trained embedding run (`experiments/configs/embedding.py`) under several clusterings.

    python -m experiments.embedding_eval --run=/tmp/embedding_demo --workdir=/tmp/embedding_eval \
      --clusterings='threshold:radius=1.0;threshold:radius=1.5;mean_shift:bandwidth=1.5'

The model runs once over the evaluation split; each clustering (`segjax.cluster` method and its
keyword arguments, `min_pixels` from `--min_pixels` unless given) turns the same embeddings into
instances, scored by the task's COCO evaluation — twice: with the predicted class map, as the
trainer scores it, and with the ground-truth class map (`true_semantic`), which leaves only the
embeddings' errors. Prints and writes `report.json` and `report.md` (mask AP, AP50, AP75, box AP,
detections).
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import cli
from segjax import jsonio

FLAGS = flags.FLAGS
COLUMNS = ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "num_detections")


def define_flags() -> None:
    """Defined when the command runs, not on import (absl flags are process-global)."""
    flags.DEFINE_string("run", None, "The embedding-task training run read (its work dir).")
    flags.DEFINE_string("workdir", None, "Output directory (written).")
    flags.DEFINE_string("clusterings", "threshold:radius=1.5",
                        "METHOD:KEY=VALUE,...;METHOD:... (segjax.cluster methods and arguments).")
    flags.DEFINE_integer("min_pixels", 16, "Smallest instance kept, unless a clustering sets it.")
    flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step.")
    flags.DEFINE_integer("batch", 8, "Images per evaluation batch.")


def parse_clusterings(text: str, min_pixels: int) -> dict[str, dict]:
    """{'threshold:radius=1.5': {'method': 'threshold', 'radius': 1.5, 'min_pixels': 16}, ...}."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        method, _, args = item.partition(":")
        kw = {"method": method, "min_pixels": min_pixels}
        for pair in filter(None, args.split(",")):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"clustering {item!r}: {pair!r} is not KEY=VALUE")
            kw[key.strip()] = int(value) if key.strip() in ("min_pixels", "max_iter", "shift_steps",
                                                             "min_bin_freq") else float(value)
        out[item] = kw
    return out


def evaluate_run(workdir: str, clusterings: dict[str, dict], *, checkpoint: str = "latest",
                 batch: int = 8) -> dict[str, dict[str, dict]]:
    """{clustering: {"predicted": metrics, "true_semantic": metrics}} of one run's eval split."""
    import jax

    from segjax.data import pipeline
    from segjax.tasks.embedding import EmbeddingAccumulator
    from segjax.train.restore import load_run

    run = load_run(workdir, checkpoint)
    config, task, model, variables = run.config, run.task, run.model, run.variables
    if task.name != "embedding":
        raise ValueError(f"{workdir} is a {task.name!r} run, not an embedding run")
    data = pipeline.from_config(config.dataset)
    accs = {(name, truth): EmbeddingAccumulator(task.num_classes, task.ignore_label, kw,
                                                true_semantic=truth)
            for name, kw in clusterings.items() for truth in (False, True)}
    outputs = jax.jit(lambda v, x: task.eval_outputs(model.apply, v, {"image": x})[1])
    for b in task.eval_batches(data, batch_size=batch, pad_to=config.eval.pad_to):
        per_example = jax.device_get(outputs(variables, b["image"]))
        for acc in accs.values():
            acc.update({}, per_example, b)
        print(".", end="", flush=True)
    print()
    return {name: {("true_semantic" if truth else "predicted"): accs[name, truth].result()
                   for truth in (False, True)} for name in clusterings}


def markdown(results: dict) -> str:
    lines = ["| clustering | class map | " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for name, rows in results.items():
        for which, m in rows.items():
            cells = [f"{m[c]:.3f}" if isinstance(m[c], float) else str(m[c]) for c in COLUMNS]
            lines.append(f"| {name} | {which} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    cli.no_arguments(argv)
    if not FLAGS.run or not FLAGS.workdir:
        raise app.UsageError("--run and --workdir are required")
    try:
        clusterings = parse_clusterings(FLAGS.clusterings, FLAGS.min_pixels)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    cli.check_run_task("run", FLAGS.run, "embedding")
    results = evaluate_run(FLAGS.run, clusterings, checkpoint=FLAGS.checkpoint,
                           batch=FLAGS.batch)
    text = markdown(results)
    print(text)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    jsonio.dump({"run": FLAGS.run, "checkpoint": FLAGS.checkpoint,
                 "clusterings": clusterings, "results": results},
                os.path.join(FLAGS.workdir, "report.json"), indent=2)
    with open(os.path.join(FLAGS.workdir, "report.md"), "w") as f:
        f.write(text + "\n")
    print(f"wrote {FLAGS.workdir}/report.json, report.md")


if __name__ == "__main__":
    cli.run(main, define_flags)
