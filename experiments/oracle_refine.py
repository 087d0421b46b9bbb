r"""Oracle refinement: gradient ascent of a trained oracle on the mask, from zeros and from a
segmenter (`segjax.tasks.oracle_refine`).

    python -m experiments.oracle_refine --oracle=/tmp/oracle [--segmenter=/tmp/unet] \
      --workdir=/tmp/refine [--num_images=64 --steps=50 --update=paper --step_size=0.1]

`--oracle` and `--segmenter` are training work dirs (`experiments.train` with
`experiments/configs/oracle.py` and a semantic config on the same dataset). The first
`--num_images` images of the oracle's eval split are split in two halves by index parity: the
even ones ("select") choose the number of ascent steps (the step maximising their mean Dice),
the odd ones ("test") report the Dice before and at that step -- the authors chose the step on
their test split; this does not. Each image's target is one present foreground class drawn by
`--seed` (the oracle is class-agnostic: it scores a binary mask). Starting points: `zeros`, and
`segmenter` (the segmenter's softmax probability of the target class) when given
(`--nofrom_zeros` leaves out the first).

Writes into `--workdir`: `report.json` (per starting point: `dice_before`, `dice_after` at the
chosen step, `steps`, `spearman` of the oracle on held-out degraded masks, plus IoU, 95 %
intervals, the Dice of the oracle's own pick and of the last step, the test half's mean Dice
and oracle score at every step, and `ascent_spearman`: the oracle's Spearman on the masks its
own ascent visits), `report.md`, `dice_vs_step.png` and `overlays/` (image | truth | before |
after). `--tv_weight` / `--binary_weight` add the mask priors of `oracle_refine.mask_prior`
(default 0: the authors' ascent). `--oracle` may be an `oracle` or an `oracle_adversarial` run.
"""

from __future__ import annotations

import functools
import math
import os

from absl import flags

from experiments import cli
from segjax import jsonio

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    flags.DEFINE_string("oracle", None, "Work dir of a trained oracle (task 'oracle').")
    flags.DEFINE_string("segmenter", None, "Work dir of a trained semantic model (same dataset).")
    flags.DEFINE_bool("from_zeros", True, "Also ascend from an all-zero mask (--nofrom_zeros "
                      "with --segmenter: from the segmenter only, half the time).")
    flags.DEFINE_string("workdir", None, "Output directory.")
    flags.DEFINE_string("checkpoint", "best", "Checkpoint of both runs: 'best', 'latest' or a step.")
    flags.DEFINE_integer("num_images", 64, "Eval images used (half select the step, half test).")
    flags.DEFINE_integer("steps", 50, "Ascent steps computed (the chosen step is <= this).")
    flags.DEFINE_float("step_size", 0.1, "Ascent step size (the authors' 0.1).")
    flags.DEFINE_enum("update", "paper", ["paper", "plain"],
                      "Ascent update (segjax.tasks.oracle_refine).")
    flags.DEFINE_float("tv_weight", 0.0, "Weight of the total-variation prior on the mask "
                       "(segjax.tasks.oracle_refine.mask_prior; 0 = off).")
    flags.DEFINE_float("binary_weight", 0.0, "Weight of the binarisation prior m(1 - m) on the "
                       "mask (0 = off).")
    flags.DEFINE_integer("batch", 16, "Images per ascent batch.")
    flags.DEFINE_integer("seed", 0, "Target classes and the held-out degraded masks.")
    flags.DEFINE_integer("num_overlays", 4, "Test images drawn per starting point.")
    flags.DEFINE_integer("heldout_copies", 2, "Degradations per eval image for the oracle's "
                         "held-out Spearman (drawn with --seed + 1000, never seen in training).")
    flags.mark_flags_as_required(["oracle", "workdir"])


def load_oracle(run_dir: str, checkpoint: str = "best"):
    """(config, info, model, variables, task) of an oracle run (`segjax.train.restore.load_run`;
    task "oracle" or "oracle_adversarial"), refused by name when the run is not one."""
    from segjax.train.restore import load_run

    from segjax.train.restore import run_task

    if run_task(run_dir) == "oracle_adversarial":  # an oracle trained on its own ascent masks
        cli.check_run_task("oracle", run_dir, "oracle_adversarial")
    else:
        cli.check_run_task("oracle", run_dir, "oracle")
    run = load_run(run_dir, checkpoint)
    return run.config, run.info, run.model, run.variables, run.task


def check_flags() -> None:
    """The numeric flags and the starting points, refused by name before anything is read or
    written. Both halves of the image split need an image: the even indices choose the step,
    the odd ones report."""
    if FLAGS.num_images < 2:
        raise ValueError(f"--num_images={FLAGS.num_images}: need at least 2 images (the even "
                         "indices choose the step, the odd ones are reported; one image leaves "
                         "a half empty)")
    for name, low in (("steps", 0), ("batch", 1), ("num_overlays", 0), ("heldout_copies", 1)):
        if FLAGS[name].value < low:
            raise ValueError(f"--{name}={FLAGS[name].value} must be >= {low}")
    if not FLAGS.from_zeros and not FLAGS.segmenter:
        raise ValueError("--nofrom_zeros without --segmenter leaves no starting point to refine")
    if not (math.isfinite(FLAGS.step_size) and FLAGS.step_size > 0):
        raise ValueError(f"--step_size={FLAGS.step_size} must be a positive finite number")
    for name in ("tv_weight", "binary_weight"):
        if not (math.isfinite(FLAGS[name].value) and FLAGS[name].value >= 0):
            raise ValueError(f"--{name}={FLAGS[name].value} must be a finite number >= 0")


def _oracle_quality(model, variables, image, mask):
    return model.apply(variables, image, mask, train=False)["quality"]


def heldout_spearman(model, variables, task_cls, config, data, *, seed: int, copies: int):
    """The oracle's metrics on `copies` degraded masks of every eval image, drawn with a seed
    it never saw (training evaluated, and picked its checkpoint, on the run's seed)."""
    import jax
    import numpy as np

    from segjax.tasks import oracle, section

    calibration_masks = int(section(config, "oracle", "oracle").calibration_masks)
    task = task_cls(ignore_label=data.info.ignore_label, seed=seed,
                    calibration_masks=calibration_masks, eval_copies=copies)
    apply = jax.jit(functools.partial(_oracle_quality, model))
    acc = oracle.OracleAccumulator()
    for batch in task.eval_batches(data, batch_size=FLAGS.batch, pad_to=config.eval.pad_to):
        pred = np.asarray(apply(variables, batch["image"], batch["mask"]))
        acc.update({}, {"pred": pred}, batch)
    return acc.result()


def _mean_ci(x):
    """Mean and the 95 % t-interval half-width of a sample."""
    import numpy as np
    from scipy import stats

    x = np.asarray(x, np.float64)
    if len(x) < 2:
        return float(x.mean()), 0.0
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def main(argv):
    cli.no_arguments(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from segjax.data import degrade, pipeline
    from segjax.tasks import oracle, oracle_refine
    from segjax.train.restore import load_run

    out_dir = FLAGS.workdir
    # Everything that can be refused is refused before the output folder exists.
    check_flags()
    if FLAGS.segmenter:
        cli.check_run_task("segmenter", FLAGS.segmenter, "semantic")
    config, info, model, variables, _ = load_oracle(FLAGS.oracle, FLAGS.checkpoint)
    data = pipeline.from_config(config.dataset)
    held = heldout_spearman(model, variables, oracle.OracleTask, config, data,
                            seed=FLAGS.seed + 1000, copies=FLAGS.heldout_copies)
    print(f"oracle on held-out degraded masks: spearman {held['spearman']:.4f} mae "
          f"{held['mae']:.4f} ({held['num_examples']} masks)", flush=True)

    # The images, their target classes and masks.
    images, truths, index, classes = [], [], [], []
    for batch in data.eval(batch_size=FLAGS.batch, pad_to=config.eval.pad_to):
        for i in range(len(batch["valid"])):
            if batch["valid"][i] and len(index) < FLAGS.num_images:
                label = np.asarray(batch["label"][i])
                rng = degrade.example_rng(FLAGS.seed, 3, 0, int(batch["index"][i]))
                c = oracle.pick_class(label, rng, ignore_label=info.ignore_label)
                images.append(np.asarray(batch["image"][i]))
                truths.append((label == c).astype(np.float32))
                index.append(int(batch["index"][i]))
                classes.append(c)
        if len(index) >= FLAGS.num_images:
            break
    select = np.asarray(index, np.int64) % 2 == 0
    if not select.any() or select.all():
        raise ValueError(f"--num_images={FLAGS.num_images}: the eval split of "
                         f"{config.dataset.name} gave {len(index)} image(s), {int(select.sum())} "
                         f"with an even index (choose the step) and {int((~select).sum())} with "
                         "an odd one (reported): both halves need an image")
    images, truths, index = np.stack(images), np.stack(truths), np.asarray(index)

    starts = {"zeros": np.zeros_like(truths)} if FLAGS.from_zeros else {}
    if FLAGS.segmenter:
        segmenter = load_run(FLAGS.segmenter, FLAGS.checkpoint)
        seg_info, seg_model, seg_vars = segmenter.info, segmenter.model, segmenter.variables
        if seg_info.num_classes != info.num_classes:
            raise ValueError(f"the segmenter predicts {seg_info.num_classes} classes of "
                             f"{seg_info.name}, the oracle's data {info.name} has "
                             f"{info.num_classes}")
        seg_apply = jax.jit(lambda v, x: jax.nn.softmax(
            seg_model.apply(v, x, train=False)["logits"], -1))
        probs = []
        for s in range(0, len(images), FLAGS.batch):
            p = np.asarray(seg_apply(seg_vars, images[s:s + FLAGS.batch]))
            probs.append(p)
        probs = np.concatenate(probs)
        starts["segmenter"] = np.stack([probs[i, ..., classes[i]] for i in range(len(index))])
    os.makedirs(os.path.join(out_dir, "overlays"), exist_ok=True)

    apply = functools.partial(_oracle_quality, model)
    report = {"oracle": {"workdir": os.path.abspath(FLAGS.oracle), **held},
              "segmenter_workdir": os.path.abspath(FLAGS.segmenter) if FLAGS.segmenter else None,
              "num_images": int(len(index)), "num_select": int(select.sum()),
              "num_test": int((~select).sum()), "max_steps": FLAGS.steps,
              "step_size": FLAGS.step_size, "update": FLAGS.update, "seed": FLAGS.seed,
              "tv_weight": FLAGS.tv_weight, "binary_weight": FLAGS.binary_weight}
    priors = {"tv_weight": FLAGS.tv_weight, "binary_weight": FLAGS.binary_weight}
    curves = {}
    for name, mask0 in starts.items():
        dice, qual = [], []
        for s in range(0, len(images), FLAGS.batch):
            out = oracle_refine.oracle_ascent(
                apply, variables, jnp.asarray(images[s:s + FLAGS.batch]),
                jnp.asarray(mask0[s:s + FLAGS.batch]), steps=FLAGS.steps,
                step_size=FLAGS.step_size, update=FLAGS.update,
                truth=jnp.asarray(truths[s:s + FLAGS.batch]), **priors)
            dice.append(np.asarray(out["dice"]))
            qual.append(np.asarray(out["quality"]))
        dice, qual = np.concatenate(dice, 1), np.concatenate(qual, 1)  # [steps + 1, N]
        best = int(np.argmax(dice[:, select].mean(1)))
        test = ~select
        own = dice[np.argmax(qual, 0), np.arange(dice.shape[1])]  # each image's oracle pick
        before, after = dice[0, test], dice[best, test]
        iou = lambda d: d / (2.0 - d)
        entry = {"dice_before": float(before.mean()), "dice_after": float(after.mean()),
                 "steps": best, "spearman": held["spearman"],
                 "dice_before_ci95": _mean_ci(before)[1], "dice_after_ci95": _mean_ci(after)[1],
                 "dice_gain_ci95": list(_mean_ci(after - before)),
                 "iou_before": float(iou(before).mean()), "iou_after": float(iou(after).mean()),
                 "dice_last_step": float(dice[-1, test].mean()),
                 "dice_oracle_pick": float(own[test].mean()),
                 "improved_fraction": float(np.mean(after > before)),
                 "worsened_fraction": float(np.mean(after < before)),
                 # Mean Dice of the test (and selection) half at every step, and how well the
                 # oracle ranks the masks its own ascent visits (Spearman of its score on each
                 # soft iterate vs the Dice of the rounded iterate, over every (step, test image)).
                 "dice_per_step": [float(v) for v in dice[:, test].mean(1)],
                 "dice_per_step_select": [float(v) for v in dice[:, select].mean(1)],
                 "quality_per_step": [float(v) for v in qual[:, test].mean(1)],
                 "ascent_spearman": oracle.oracle_metrics(qual[1:, test].ravel(),
                                                          dice[1:, test].ravel())["spearman"]}
        report[name] = entry
        curves[name] = (dice, qual)
        print(f"{name}: dice {entry['dice_before']:.4f} -> {entry['dice_after']:.4f} at step "
              f"{best} (select half); last step {entry['dice_last_step']:.4f}; oracle's own "
              f"pick {entry['dice_oracle_pick']:.4f}; spearman on its ascent masks "
              f"{entry['ascent_spearman']:.4f}", flush=True)
        _overlays(out_dir, name, images[test], truths[test], mask0[test], index[test], apply,
                  variables, best, priors)

    jsonio.dump(report, os.path.join(out_dir, "report.json"), indent=2)
    _plot(out_dir, curves, select, report)
    _markdown(out_dir, report)
    print(f"wrote {os.path.join(out_dir, 'report.json')}, report.md, dice_vs_step.png, overlays/",
          flush=True)


def _overlays(out_dir, name, images, truths, mask0, index, apply, variables, best, priors):
    """image | truth | start (rounded) | after `best` steps (rounded), for a few test images."""
    import jax.numpy as jnp
    import numpy as np

    from segjax import visualize
    from segjax.tasks import oracle_refine

    n = min(FLAGS.num_overlays, len(images))
    if n == 0:
        return
    out = oracle_refine.oracle_ascent(apply, variables, jnp.asarray(images[:n]),
                                      jnp.asarray(mask0[:n]), steps=max(best, 1),
                                      step_size=FLAGS.step_size, update=FLAGS.update,
                                      keep_steps=(0, best), **priors)
    masks = np.asarray(out["masks"])
    palette = np.array([[0, 0, 0], [255, 64, 64]], np.uint8)
    for i in range(n):
        image = visualize.to_uint8_image(images[i])
        panels = [image] + [visualize.overlay(image, (m > 0.5).astype(np.int32), palette,
                                              alpha=0.5)
                            for m in (truths[i], masks[0, i], masks[1, i])]
        visualize.save_png(os.path.join(out_dir, "overlays", f"{name}_{index[i]:05d}.png"),
                           visualize.side_by_side(*panels))


def _plot(out_dir, curves, select, report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, (dice, qual) in curves.items():
        steps = range(dice.shape[0])
        axes[0].plot(steps, dice[:, ~select].mean(1), label=f"{name} (test half)")
        axes[0].plot(steps, dice[:, select].mean(1), "--", label=f"{name} (select half)")
        axes[0].axvline(report[name]["steps"], color="grey", lw=0.5)
        axes[1].plot(steps, qual[:, ~select].mean(1), label=name)
    axes[0].set(xlabel="ascent step", ylabel="mean Dice (rounded mask)", ylim=(0, 1))
    axes[1].set(xlabel="ascent step", ylabel="mean oracle quality", ylim=(0, 1))
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "dice_vs_step.png"), dpi=100)
    plt.close(fig)


def _markdown(out_dir, report):
    lines = ["# Oracle refinement", "",
             f"Oracle `{report['oracle']['workdir']}`: Spearman {report['oracle']['spearman']:.3f},"
             f" MAE {report['oracle']['mae']:.3f} on {report['oracle']['num_examples']} held-out "
             "degraded masks.", "",
             f"{report['num_images']} eval images: {report['num_select']} (even indices) choose "
             f"the step, {report['num_test']} (odd) are reported; update `{report['update']}`, "
             f"step size {report['step_size']}, up to {report['max_steps']} steps.", "",
             "| start | Dice before | Dice after | step | IoU before | IoU after | gain (95% CI) "
             "| last step | oracle's pick | improved / worsened |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("zeros", "segmenter"):
        if name not in report:
            continue
        e = report[name]
        gain, half = e["dice_gain_ci95"]
        lines.append(f"| {name} | {e['dice_before']:.3f} | {e['dice_after']:.3f} | {e['steps']} "
                     f"| {e['iou_before']:.3f} | {e['iou_after']:.3f} | {gain:+.3f} ± {half:.3f} "
                     f"| {e['dice_last_step']:.3f} | {e['dice_oracle_pick']:.3f} | "
                     f"{e['improved_fraction']:.2f} / {e['worsened_fraction']:.2f} |")
    lines += ["", "![Dice vs step](dice_vs_step.png)", ""]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    cli.run(main, define_flags)
