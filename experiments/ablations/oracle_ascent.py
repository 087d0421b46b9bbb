"""Oracle ascent: does training the quality oracle on its own ascent masks stop the ascent from
fooling it?

Each part trains the oracle of `experiments/configs/oracle.py` twice per seed with the same
steps, data and seed: plain (`oracle_adversarial.ascent_every=0`: trained on the hand-made
degradations only, exactly the `oracle` task) and adversarial (`ascent_every=4`: every 4th example
of each batch replaced by a mask the current oracle's ascent reaches, with that mask's true Dice as
the target; `segjax/tasks/oracle_adversarial.py`). Every finished oracle is then driven from an
all-zero mask by `experiments.oracle_refine` (the authors' update, step 0.1; 32 validation images:
16 choose the step, 16 are reported), which this module runs and caches in each run's directory:
as the authors do, and with a total-variation prior on the mask at each weight of `TV_GRID`
(`REFINES`); the arm `+ TV chosen` takes, per oracle, the weight whose selection half peaks highest.
Each part also trains an under-trained segmenter per seed (`SEGMENTER`: the small U-Net stopped
after 50 steps, on the part's data; part `<part>_segmenter`), and every oracle refines its
predictions the same ways (`SEGMENTER_STEPS` ascent steps), the issue's second starting point.

    python -m experiments.ablations --study=oracle_ascent --workdir=DIR     # oracles, segmenters
    python -m experiments.ablations.oracle_ascent DIR [FIGURE.png]          # refine + tables

Reported per arm (mean ± std and 95% CI over seeds; adversarial - plain paired by seed): the
held-out Spearman on degraded validation masks, the Spearman on the masks its own ascent visits,
the Dice at the step chosen on the selection half, at the last step, and their difference (does
the Dice fall after the chosen step?), and the oracle's own score at the last step; from the
segmenter also its Dice before the ascent. The parts: `lesion` (`synthetic_lesions`, the paper's
single-object setting; 500 ascent steps from zeros, as the paper on PH2), `shapes`
(`synthetic_shapes/clean`, 150 steps, as issue 30 measured the failure) and `all` (every
difficulty factor, 150 steps).
"""

from __future__ import annotations

from experiments.ablations import Part, Study

SWEEP = "oracle_adversarial.ascent_every=0,4"
ARMS = {0: "plain", 4: "adversarial"}
# part -> (base preset, overrides, ascent steps of the refinement, what the data is)
PARTS = {
    "lesion": ("experiments/configs/oracle.py:lesion_adv", {}, 500,
               "`synthetic_lesions`: one lesion-like blob per 96x96 image"),
    "shapes": ("experiments/configs/oracle.py:demo_adv", {}, 150,
               "`synthetic_shapes/clean`, 128x128"),
    "all": ("experiments/configs/oracle.py:demo_adv", {"dataset.name": "synthetic_shapes/all"},
            150, "`synthetic_shapes/all` (every difficulty factor), 128x128"),
}
REFINE_FLAGS = ("--num_images=32", "--batch=32")
# The under-trained segmenter of every part and seed: `unet_shapes.py:small` stopped after 50
# steps, as the earlier three-seed refinement study (docs/oracle.md: Dice 0.672 on clean
# shapes), trained on the part's data (`SEGMENTER_DATA`); its predictions are refined for
# `SEGMENTER_STEPS` steps: enough to see a fall after the chosen step (on clean shapes the
# earlier study's Dice peaked at step 9-10 and had fallen to 0.54 by step 60).
SEGMENTER_TRAIN_STEPS = 50
SEGMENTER = ("experiments/configs/unet_shapes.py:small",
             {"num_train_steps": SEGMENTER_TRAIN_STEPS, "eval_every_steps": SEGMENTER_TRAIN_STEPS,
              "checkpoint_every_steps": SEGMENTER_TRAIN_STEPS})
SEGMENTER_DATA = {"lesion": {"dataset.name": "synthetic_lesions", "eval.pad_to": 96},
                  "shapes": {}, "all": {"dataset.name": "synthetic_shapes/all"}}
SEGMENTER_STEPS = 150
STARTS = ("zeros", "segmenter")
PAPER_DICE = 0.739  # Fernandes, Cruz & Cardoso 2018: from zeros on PH2 after 500 steps

STUDY = Study(
    name="oracle_ascent",
    question="Does training the quality oracle on the masks its own gradient ascent visits stop "
             "the ascent from fooling it (a true Dice that falls while the oracle's score "
             "climbs)?",
    parts=tuple(
        Part(name=name, title=f"{what}: plain vs adversarially trained oracle (600 steps)",
             base=base, overrides=overrides, sweeps=(SWEEP,),
             baseline="oracle_adversarial.ascent_every=0", metrics=("spearman", "mae"),
             note="Spearman and MAE of the predicted against the true Dice of degraded "
                  "validation masks. The ascent measures are in `python -m "
                  "experiments.ablations.oracle_ascent DIR`.")
        for name, (base, overrides, _, what) in PARTS.items()) + tuple(
        Part(name=f"{name}_segmenter",
             title=f"{PARTS[name][3]}: the under-trained segmenter ({SEGMENTER_TRAIN_STEPS} "
                   "steps)",
             base=SEGMENTER[0], overrides={**SEGMENTER[1], **SEGMENTER_DATA[name]},
             note=f"The small U-Net stopped after {SEGMENTER_TRAIN_STEPS} steps: the starting "
                  "point the oracles refine from in `python -m experiments.ablations.oracle_ascent "
                  "DIR`.")
        for name in PARTS),
)


def run_dirs(workdir: str, seeds=(0, 1, 2)) -> dict[tuple[str, str, int], str]:
    """{(part, arm, seed): oracle run directory} where `python -m experiments.ablations
    --study=oracle_ascent --workdir=WORKDIR` trains each (`runner.run_dirs`); a run has finished
    once its directory holds `result.json`."""
    from experiments.ablations.runner import run_dirs as study_run_dirs

    return {(part, ARMS[cell[0][1]], seed): run
            for (part, cell, seed), run in study_run_dirs(STUDY, workdir, seeds).items()
            if part in PARTS}


def segmenter_dirs(workdir: str, seeds=(0, 1, 2)) -> dict[tuple[str, int], str]:
    """{(part, seed): run directory of its under-trained segmenter} (the study's
    `<part>_segmenter` parts)."""
    from experiments.ablations.runner import run_dirs as study_run_dirs

    return {(part.removesuffix("_segmenter"), seed): run
            for (part, _, seed), run in study_run_dirs(STUDY, workdir, seeds).items()
            if part not in PARTS}


# Refinements of every oracle: name -> (suffix of its directory, extra oracle_refine flags).
# "+ TV": the ascent climbs quality - w TV(m) (`oracle_refine.mask_prior`), against the
# scattered pixels both oracles accept. The fixed weight 3 was the best of 0.1, 1, 3, 5, 10 in a
# 100-step, 16-image refinement by seed 0's plain lesion oracle (0.418 against 0.377 without;
# 10 stops the ascent from zeros); 8 of those 16 images are among the study's 16 test images.
# The arm `CHOSEN` removes that leak: per oracle, the weight of `TV_GRID` (0 included) whose
# selection-half Dice, at its own chosen step, is highest; its test half is what is reported.
TV_WEIGHT = 3.0
TV_GRID = (0.0, 1.0, TV_WEIGHT, 10.0)


def _refinement(weight: float) -> str:
    return "" if weight == 0 else " + TV" if weight == TV_WEIGHT else f" + TV{weight:g}"


REFINES = {_refinement(w): (f"_tv{w:g}" if w else "", (f"--tv_weight={w:g}",) if w else ())
           for w in sorted(TV_GRID, key=lambda w: (w not in (0, TV_WEIGHT), w))}
CHOSEN = " + TV chosen"


def ascent_steps(part: str, start: str = "zeros") -> int:
    """The ascent steps of `part`'s refinements from `start` (a `STARTS` entry)."""
    return PARTS[part][2] if start == "zeros" else SEGMENTER_STEPS


def refine_dir(run: str, part: str, refinement: str = "", start: str = "zeros") -> str:
    """Where the refinement `refinement` (a `REFINES` key) of the oracle in `run` from `start`
    (a `STARTS` entry) is written."""
    import os

    return os.path.join(run, f"refine_{start}_{ascent_steps(part, start)}"
                             f"{REFINES[refinement][0]}")


def refine(workdir: str, seeds=(0, 1, 2), refinements=tuple(REFINES), log=print,
           starts=STARTS) -> None:
    """Runs `experiments.oracle_refine` (each of `refinements`, from each of `starts`) on every
    finished oracle of the study that has no report yet (one process each, as a user would);
    from the segmenter once that part's segmenter of the same seed has finished too."""
    import os
    import subprocess
    import sys

    from segjax.train import sweep

    runs, segmenters = run_dirs(workdir, seeds), segmenter_dirs(workdir, seeds)
    finished = lambda run: os.path.isfile(os.path.join(run, sweep.RESULT_FILE))  # noqa: E731
    for start in starts:
        for refinement in refinements:
            for (part, arm, seed), run in runs.items():
                out = refine_dir(run, part, refinement, start)
                segmenter = segmenters[part, seed]
                if (not finished(run) or os.path.isfile(os.path.join(out, "report.json"))
                        or start == "segmenter" and not finished(segmenter)):
                    continue
                log(f"refining {part} {arm}{refinement} seed {seed} from {start}: {out}")
                flags = (() if start == "zeros" else
                         (f"--segmenter={segmenter}", "--nofrom_zeros"))
                subprocess.run([sys.executable, "-m", "experiments.oracle_refine",
                                f"--oracle={run}", f"--workdir={out}", *flags,
                                f"--steps={ascent_steps(part, start)}", *REFINE_FLAGS,
                                *REFINES[refinement][1]], check=True)


MEASURES = {  # name -> (title, value from one starting point's entry of a refinement report)
    "heldout": ("held-out ρ", lambda e: e["spearman"]),
    "ascent": ("ρ on its ascent masks", lambda e: e["ascent_spearman"]),
    "chosen": ("Dice at the chosen step", lambda e: e["dice_after"]),
    "step": ("chosen step", lambda e: e["steps"]),
    "last": ("Dice at the last step", lambda e: e["dice_last_step"]),
    "fall": ("fall after the chosen step", lambda e: e["dice_after"] - e["dice_last_step"]),
    "score": ("oracle's score at the last step", lambda e: e["quality_per_step"][-1]),
}
BEFORE = {"before": ("Dice at the start", lambda e: e["dice_before"])}  # the segmenter's tables
COMPARED = ("ascent", "chosen", "last", "fall")  # the paired differences against plain


def reports(workdir: str, seeds=(0, 1, 2), start: str = "zeros") -> dict:
    """{part: {arm: {seed: refinement report}}} of the study's oracles refined from `start`; an
    arm is the oracle's (`plain`, `adversarial`) plus the refinement's `REFINES` key, or `CHOSEN`:
    the report of the `TV_GRID` weight chosen on the selection half (once every weight is
    refined)."""
    import json
    import os

    out: dict = {}
    runs = run_dirs(workdir, seeds)
    for refinement in REFINES:
        for (part, arm, seed), run in runs.items():
            path = os.path.join(refine_dir(run, part, refinement, start), "report.json")
            if os.path.isfile(path):
                with open(path) as f:
                    out.setdefault(part, {}).setdefault(arm + refinement, {})[seed] = json.load(f)
    for part, arm, seed in runs:
        arms = out.get(part, {})
        grid = [arms.get(arm + _refinement(w), {}).get(seed) for w in TV_GRID]
        if all(r and "dice_per_step_select" in r[start] for r in grid):
            best = max(grid, key=lambda r: max(r[start]["dice_per_step_select"]))
            arms.setdefault(arm + CHOSEN, {})[seed] = best
    return out


def summary(workdir: str, seeds=(0, 1, 2), figure: str | None = None) -> str:
    """Markdown, per part and starting point: every arm's `MEASURES` as mean ± std over seeds
    (n), then each arm minus plain, paired by seed (mean [95% CI], t-test p; the difference alone
    for one seed); with `figure`, a PNG of the Dice and the oracle's score against the ascent
    step."""
    from segjax.metrics import stats

    res = {start: reports(workdir, seeds, start) for start in STARTS}
    lines = []
    for part in PARTS:
        for start in STARTS:
            arms = res[start].get(part, {})
            if not arms:
                continue
            measures = MEASURES if start == "zeros" else {**BEFORE, **MEASURES}
            lines += [f"**{part}** ({PARTS[part][3]}; from zeros, "
                      f"{ascent_steps(part, start)} ascent steps)" if start == "zeros" else
                      f"**{part}, from the under-trained segmenter** ({PARTS[part][3]}; the "
                      f"{SEGMENTER_TRAIN_STEPS}-step U-Net's probabilities, "
                      f"{ascent_steps(part, start)} ascent steps)", "",
                      "| arm | seeds | " + " | ".join(m[0] for m in measures.values()) + " |",
                      "|---|" + "---:|" * (len(measures) + 1)]
            for arm, by_seed in arms.items():
                cells = []
                for key, (title, get) in measures.items():
                    s = stats.summarize([get(r[start]) for _, r in sorted(by_seed.items())])
                    f = ".0f" if key == "step" else ".3f"
                    cells.append(f"{s.mean:{f}} ± {s.std:{f}}" if s.n > 1 else f"{s.mean:{f}}")
                lines.append(f"| {arm} | {len(by_seed)} | " + " | ".join(cells) + " |")
            plain = arms.get("plain", {})
            others = [a for a in arms if a != "plain" and set(arms[a]) & set(plain)]
            if others:
                lines += ["", "| arm - plain (paired by seed) | " + " | ".join(
                    MEASURES[k][0] for k in COMPARED) + " |", "|---|" + "---:|" * len(COMPARED)]
            for arm in others:
                common = sorted(set(arms[arm]) & set(plain))
                cells = []
                for key in COMPARED:
                    get = MEASURES[key][1]
                    a = [get(arms[arm][k][start]) for k in common]
                    b = [get(plain[k][start]) for k in common]
                    if len(common) > 1:
                        d = stats.paired_difference(a, b)
                        cells.append(f"{d.summary.mean:+.3f} [{d.summary.ci_low:+.3f}, "
                                     f"{d.summary.ci_high:+.3f}], p {d.p_value:.3f}")
                    else:
                        cells.append(f"{a[0] - b[0]:+.3f} (1 seed)")
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
            chosen = [f"{arm}: " + ", ".join(f"seed {k} → {r['tv_weight']:g}"
                                             for k, r in sorted(by_seed.items()))
                      for arm, by_seed in arms.items() if arm.endswith(CHOSEN)]
            if chosen:
                lines += ["", "TV weight chosen on the selection half (of "
                          f"{', '.join(f'{w:g}' for w in TV_GRID)}): " + "; ".join(chosen) + "."]
            lines.append("")
    if figure:
        _plot(res, figure)
        _overlays(workdir, figure.removesuffix(".png") + "_overlays.png")
    return "\n".join(lines)


def _overlays(workdir: str, path: str, seed: int = 0, images: int = 2) -> None:
    """One row per (part, refined arm) of seed `seed`: the first `images` overlays that
    `oracle_refine` drew (image | truth | start | after, at the chosen step)."""
    import glob
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = run_dirs(workdir, (seed,))
    rows = []
    for part in PARTS:
        for refinement in REFINES:
            for arm in ARMS.values():
                files = sorted(glob.glob(os.path.join(refine_dir(runs[part, arm, seed], part,
                                                                 refinement),
                                                      "overlays", "zeros_*.png")))[:images]
                if files:
                    rows.append((f"{part}: {arm}{refinement}", files))
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), images, figsize=(4.2 * images, 1.25 * len(rows)),
                             squeeze=False)
    for i, (label, files) in enumerate(rows):
        for j in range(images):
            axes[i, j].axis("off")
            if j < len(files):
                axes[i, j].imshow(plt.imread(files[j]))
        axes[i, 0].set_title(label, fontsize=8, loc="left")
    fig.suptitle(f"From zeros, seed {seed}: image | truth | start | mask at the chosen step",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot(res: dict, path: str) -> None:
    """`res`: {start: `reports(..., start)`}; one column per (part, start) with reports."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = [(part, start) for part in PARTS for start in STARTS if part in res[start]]
    fig, axes = plt.subplots(2, max(len(columns), 1), figsize=(4.2 * max(len(columns), 1), 6.4),
                             squeeze=False)
    colours = {"plain": "0.45", "adversarial": "tab:red", "plain + TV": "tab:blue",
               "adversarial + TV": "tab:purple", "plain" + CHOSEN: "tab:cyan",
               "adversarial" + CHOSEN: "tab:pink"}  # the fixed weights 1 and 10: tables only
    for j, (part, start) in enumerate(columns):
        for arm, by_seed in res[start][part].items():
            if arm not in colours:
                continue
            for row, key in enumerate(("dice_per_step", "quality_per_step")):
                curves = np.array([r[start][key] for _, r in sorted(by_seed.items())])
                mean = curves.mean(0)
                ax = axes[row, j]
                ax.plot(mean, color=colours[arm],
                        label=f"{arm} ({len(curves)} seed{'s' * (len(curves) > 1)})")
                if len(curves) > 1:
                    ax.fill_between(np.arange(len(mean)), curves.min(0), curves.max(0),
                                    color=colours[arm], alpha=0.2, lw=0)
            chosen = [r[start]["steps"] for r in by_seed.values()]
            axes[0, j].plot(chosen, [r[start]["dice_after"] for r in by_seed.values()],
                            "v", color=colours[arm], ms=6)
        if part == "lesion" and start == "zeros":  # the paper's from-zeros result on PH2
            axes[0, j].axhline(PAPER_DICE, color="k", ls=":", lw=1)
            axes[0, j].text(0, PAPER_DICE + 0.02, f"paper, PH2: {PAPER_DICE}", fontsize=7)
        where = "from zeros" if start == "zeros" else "from the segmenter"
        axes[0, j].set_title(f"{part}, {where}: true Dice (test half)", fontsize=9)
        axes[1, j].set_title(f"{part}, {where}: the oracle's score", fontsize=9)
        axes[1, j].set_xlabel("ascent step")
        for row in range(2):
            axes[row, j].set_ylim(0, 1)
            axes[row, j].grid(alpha=0.3)
        axes[0, j].legend(loc="lower right", fontsize=8)
    fig.suptitle("Oracle ascent: mean over seeds, band = min..max,\n"
                 "▼ = Dice at the step chosen on the selection half", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m experiments.ablations.oracle_ascent WORKDIR [FIGURE.png]")
    refine(sys.argv[1])
    print(summary(sys.argv[1], figure=sys.argv[2] if len(sys.argv) == 3 else None))
