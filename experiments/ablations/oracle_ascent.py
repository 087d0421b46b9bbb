"""Oracle ascent: does training the quality oracle on its own ascent masks stop the ascent from
fooling it?

Each part trains the oracle of `experiments/configs/oracle.py` twice per seed with the same
steps, data and seed: plain (`oracle_adversarial.ascent_every=0`: trained on the hand-made
degradations only, exactly the `oracle` task) and adversarial (`ascent_every=4`: every 4th example
of each batch replaced by a mask the current oracle's ascent reaches, with that mask's true Dice as
the target; `segjax/tasks/oracle_adversarial.py`). Every finished oracle is then driven from an
all-zero mask by `experiments.oracle_refine` (the authors' update, step 0.1; 32 validation images:
16 choose the step, 16 are reported), which this module runs and caches in each run's directory.

    python -m experiments.ablations --study=oracle_ascent --workdir=DIR     # the oracles
    python -m experiments.ablations.oracle_ascent DIR [FIGURE.png]          # refine + tables

Reported per arm (mean ± std and 95% CI over seeds; adversarial - plain paired by seed): the
held-out Spearman on degraded validation masks, the Spearman on the masks its own ascent visits,
the from-zeros Dice at the step chosen on the selection half, at the last step, and their
difference (does the Dice fall after the chosen step?), and the oracle's own score at the last
step. The parts: `lesion` (`synthetic_lesions`, the paper's single-object setting; 500 ascent
steps, as the paper on PH2), `shapes` (`synthetic_shapes/clean`, 150 steps, as issue 30
measured the failure) and `all` (every difficulty factor, 150 steps).
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
        for name, (base, overrides, _, what) in PARTS.items()),
)


def run_dirs(workdir: str, seeds=(0, 1, 2)) -> dict[tuple[str, str, int], str]:
    """{(part, arm, seed): oracle run directory} where `python -m experiments.ablations
    --study=oracle_ascent --workdir=WORKDIR` trains each (`runner.run_dirs`); a run has finished
    once its directory holds `result.json`."""
    from experiments.ablations.runner import run_dirs as study_run_dirs

    return {(part, ARMS[cell[0][1]], seed): run
            for (part, cell, seed), run in study_run_dirs(STUDY, workdir, seeds).items()}


def refine_dir(run: str, part: str) -> str:
    """Where the from-zeros refinement of the oracle in `run` is written."""
    import os

    return os.path.join(run, f"refine_zeros_{PARTS[part][2]}")


def refine(workdir: str, seeds=(0, 1, 2), log=print) -> None:
    """Runs `experiments.oracle_refine` from zeros on every finished oracle of the study that has
    no report yet (one process each, as a user would)."""
    import os
    import subprocess
    import sys

    from segjax.train import sweep

    for (part, arm, seed), run in run_dirs(workdir, seeds).items():
        out = refine_dir(run, part)
        if not os.path.isfile(os.path.join(run, sweep.RESULT_FILE)) or os.path.isfile(
                os.path.join(out, "report.json")):
            continue
        log(f"refining {part} {arm} seed {seed}: {out}")
        subprocess.run([sys.executable, "-m", "experiments.oracle_refine", f"--oracle={run}",
                        f"--workdir={out}", f"--steps={PARTS[part][2]}", *REFINE_FLAGS],
                       check=True)


MEASURES = {  # name -> (title, value from the refinement report)
    "heldout": ("held-out Spearman", lambda r: r["oracle"]["spearman"]),
    "ascent": ("Spearman on its ascent masks", lambda r: r["zeros"]["ascent_spearman"]),
    "chosen": ("Dice at the chosen step", lambda r: r["zeros"]["dice_after"]),
    "step": ("chosen step", lambda r: r["zeros"]["steps"]),
    "last": ("Dice at the last step", lambda r: r["zeros"]["dice_last_step"]),
    "fall": ("fall after the chosen step", lambda r: r["zeros"]["dice_after"]
             - r["zeros"]["dice_last_step"]),
    "score": ("oracle's score at the last step", lambda r: r["zeros"]["quality_per_step"][-1]),
}


def reports(workdir: str, seeds=(0, 1, 2)) -> dict:
    """{part: {arm: {seed: refinement report}}} of the study's refined oracles."""
    import json
    import os

    out: dict = {}
    for (part, arm, seed), run in run_dirs(workdir, seeds).items():
        path = os.path.join(refine_dir(run, part), "report.json")
        if os.path.isfile(path):
            with open(path) as f:
                out.setdefault(part, {}).setdefault(arm, {})[seed] = json.load(f)
    return out


def summary(workdir: str, seeds=(0, 1, 2), figure: str | None = None) -> str:
    """Markdown: per part, one row per arm with every `MEASURES` entry as mean ± std over seeds
    and its 95% CI, then adversarial - plain paired by seed (mean, CI, t-test p); with `figure`,
    a PNG of the from-zeros Dice and the oracle's score against the ascent step."""
    from segjax.metrics import stats

    res = reports(workdir, seeds)
    lines = []
    for part in PARTS:
        arms = res.get(part, {})
        if not arms:
            continue
        lines += [f"**{part}** ({PARTS[part][3]}; from zeros, {PARTS[part][2]} ascent steps)", "",
                  "| measure | " + " | ".join(f"{a} (seeds)" for a in arms)
                  + " | adversarial - plain [95% CI], p |",
                  "|---|" + "---:|" * (len(arms) + 1)]
        for key, (title, get) in MEASURES.items():
            cells = []
            for arm in arms:
                s = stats.summarize([get(r) for _, r in sorted(arms[arm].items())])
                cells.append(f"{s.mean:.3f} ± {s.std:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}] "
                             f"({s.n})" if s.n > 1 else f"{s.mean:.3f} (1)")
            plain, adv = arms.get("plain", {}), arms.get("adversarial", {})
            common = sorted(set(plain) & set(adv))
            if len(common) > 1:
                d = stats.paired_difference([get(adv[k]) for k in common],
                                            [get(plain[k]) for k in common])
                diff = (f"{d.summary.mean:+.3f} [{d.summary.ci_low:+.3f}, "
                        f"{d.summary.ci_high:+.3f}], {d.p_value:.3f}")
            elif common:
                diff = f"{get(adv[common[0]]) - get(plain[common[0]]):+.3f} (1 seed)"
            else:
                diff = ""
            lines.append(f"| {title} | " + " | ".join(cells) + f" | {diff} |")
        lines.append("")
    if figure:
        _plot(res, figure)
    return "\n".join(lines)


def _plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    parts = [p for p in PARTS if p in res]
    fig, axes = plt.subplots(2, max(len(parts), 1), figsize=(4.2 * max(len(parts), 1), 6.4),
                             squeeze=False)
    colours = {"plain": "0.45", "adversarial": "tab:red"}
    for j, part in enumerate(parts):
        for arm, by_seed in res[part].items():
            for row, key in enumerate(("dice_per_step", "quality_per_step")):
                curves = np.array([r["zeros"][key] for _, r in sorted(by_seed.items())])
                mean = curves.mean(0)
                ax = axes[row, j]
                ax.plot(mean, color=colours[arm], label=f"{arm} ({len(curves)} seeds)")
                if len(curves) > 1:
                    ax.fill_between(np.arange(len(mean)), curves.min(0), curves.max(0),
                                    color=colours[arm], alpha=0.2, lw=0)
            chosen = [r["zeros"]["steps"] for r in by_seed.values()]
            axes[0, j].plot(chosen, [r["zeros"]["dice_after"] for r in by_seed.values()],
                            "v", color=colours[arm], ms=6)
        axes[0, j].set_title(f"{part}: true Dice (test half)")
        axes[1, j].set_title(f"{part}: the oracle's score")
        axes[1, j].set_xlabel("ascent step from zeros")
        for row in range(2):
            axes[row, j].set_ylim(0, 1)
            axes[row, j].grid(alpha=0.3)
        axes[0, j].legend(loc="lower right", fontsize=8)
    fig.suptitle("Oracle ascent from zeros: mean over seeds, band = min..max,\n"
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
