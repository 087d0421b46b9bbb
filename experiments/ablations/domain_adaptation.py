"""Domain adaptation: trained with clean shapes' labels, how well does each method carry over to
an unlabelled new domain?

Every part trains `experiments/configs/uda.py:shapes` (DeepLab v3+ ResNet-18 at CPU widths, 64x64
crops, batch 16, 300 steps) with `synthetic_shapes/clean`'s labels and the target domain's
unlabelled training images, and scores the target's validation labels. The arms: source only,
source only with photometric jitter (the augmentation baseline), FDA (beta 0.01 plus the robust
entropy), AdaptSegNet's output-space adversarial training (single level), DACS (ClassMix with
an EMA teacher's pseudo-labels), AdaIN style randomisation (each source image takes the colour
statistics of a target image, at a random trade-off: AdaIN on the pixels, since the CPU study has
no trained AdaIN decoder), each with its paper's defaults (`segjax.tasks.uda`), and the
target oracle (trained with the target's labels instead of clean's: the upper bound). Paired
differences are against source only, seed by seed.
"""

from experiments.ablations import Part, Study

# The arms trained with clean's labels: (uda.method, dataset.photometric) -> arm name.
ARMS = {("source_only", False): "source_only", ("source_only", True): "photometric",
        ("fda", False): "fda", ("adversarial", False): "adversarial", ("dacs", False): "dacs",
        ("adain", False): "adain"}
SOURCE = "synthetic_shapes/clean"


def methods(target: str) -> str:
    """The sweep of one part: every arm trained with clean's labels, then the target oracle
    (source only trained with the target's own labels: the upper bound)."""
    cells = [(m, p, SOURCE) for m, p in ARMS]
    cells.append(("source_only", False, f"synthetic_shapes/{target}"))
    return "uda.method,dataset.photometric,dataset.name=" + ",".join(map(repr, cells))


TARGETS = {
    "restyled": "a new rendering style: striped backgrounds, objects' hue turned 20 degrees, "
                "desaturated, darker, checkered",
    "illumination": "smooth gain fields of 0.35-1.35 over the image",
    "noise": "Gaussian noise (sigma 12) plus 1% salt and pepper",
}

STUDY = Study(
    name="domain_adaptation",
    question="Trained on clean shapes with labels, which adaptation method best carries a "
             "segmenter over to an unlabelled new domain?",
    parts=tuple(
        Part(name=target, title=f"clean -> {target} ({what})",
             base="experiments/configs/uda.py:shapes",
             overrides={"uda.target": f"synthetic_shapes/{target}"},
             sweeps=(methods(target),), metrics=("miou", "boundary_iou"),
             note="Scored on the target's validation labels after the last step (no checkpoint "
                  "is picked on target labels).")
        for target, what in TARGETS.items()),
)

def run_dirs(workdir: str, seed: int = 0) -> dict[tuple[str, str], str]:
    """{(target, arm): run directory} of every run of the study with `seed`, where
    `python -m experiments.ablations --study=domain_adaptation --workdir=WORKDIR` trains it
    (`runner.run_dirs`: by the digest of each rebuilt config). A run has finished once its
    directory holds `result.json` (`sweep.RESULT_FILE`); the others may not exist yet."""
    from experiments.ablations.runner import run_dirs as study_run_dirs

    out = {}
    for (part, cell, _), run in study_run_dirs(STUDY, workdir, (seed,)).items():
        method, photometric, source = cell[0][1]
        out[part, ARMS[method, photometric] if source == SOURCE else "target_oracle"] = run
    return out


ARM_TITLES = {"source_only": "source only", "photometric": "+ photometric jitter",
              "fda": "FDA (β 0.01, entropy)", "adversarial": "AdaptSegNet (single level)",
              "dacs": "DACS", "adain": "AdaIN on the pixels", "target_oracle": "target oracle"}


def results(workdir: str, seeds=(0, 1, 2), metric: str = "miou") -> dict:
    """{target: {arm: {seed: metric}}} of the study's finished runs in `workdir`."""
    import json
    import os

    from segjax.train import sweep

    out: dict = {}
    for seed in seeds:
        for (target, arm), run in run_dirs(workdir, seed).items():
            path = os.path.join(run, sweep.RESULT_FILE)
            if os.path.isfile(path):
                with open(path) as f:
                    value = sweep.metric_value(json.load(f)["final"], metric)
                out.setdefault(target, {}).setdefault(arm, {})[seed] = value
    return out


def summary(workdir: str, seeds=(0, 1, 2), figure: str | None = None) -> str:
    """Markdown of every part's finished runs: per arm the mean ± std and 95% CI over seeds, and
    the paired difference against source only (mean, CI, t-test p); with `figure`, a PNG of the
    means and CIs (one panel per target)."""
    from segjax.metrics import stats

    res = results(workdir, seeds)
    lines = []
    for target in TARGETS:
        arms = res.get(target, {})
        if not arms:
            continue
        base = arms.get("source_only", {})
        lines += [f"**clean → {target}** (target validation mIoU after 300 steps)", "",
                  "| arm | seeds | mean ± std | 95% CI | vs source only: mean diff [95% CI] | p |",
                  "|---|---:|---:|---:|---:|---:|"]
        for arm, title in ARM_TITLES.items():
            if arm not in arms:
                continue
            s = stats.summarize([v for _, v in sorted(arms[arm].items())])
            row = (f"| {title} | {s.n} | {s.mean:.3f} ± {s.std:.3f} | "
                   f"[{s.ci_low:.3f}, {s.ci_high:.3f}] |")
            common = sorted(set(arms[arm]) & set(base))
            if arm == "source_only" or not common:
                row += " | |"
            else:
                d = stats.paired_difference([arms[arm][k] for k in common],
                                            [base[k] for k in common])
                row += (f" {d.summary.mean:+.3f} [{d.summary.ci_low:+.3f}, "
                        f"{d.summary.ci_high:+.3f}] | {d.p_value:.3f} |")
            lines.append(row)
        lines.append("")
    if figure:
        _plot(res, figure)
    return "\n".join(lines)


def _plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from segjax.metrics import stats

    targets = [t for t in TARGETS if t in res]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.6), squeeze=False)
    for ax, target in zip(axes[0], targets):
        arms = [a for a in ARM_TITLES if a in res[target]]
        sums = [stats.summarize([v for _, v in sorted(res[target][a].items())]) for a in arms]
        y = np.arange(len(arms))[::-1]
        means = np.array([s.mean for s in sums])
        low = np.array([s.mean - s.ci_low if s.n > 1 else 0.0 for s in sums])
        high = np.array([s.ci_high - s.mean if s.n > 1 else 0.0 for s in sums])
        colours = ["0.55" if a == "source_only" else "tab:green" if a == "target_oracle"
                   else "tab:blue" for a in arms]
        ax.barh(y, means, xerr=[low, high], color=colours, capsize=3)
        for yi, s in zip(y, sums):
            ax.text(0.01 if means.min() < 0.7 else 0.61, yi, f"{s.mean:.3f} (n={s.n})", va="center", fontsize=7, color="white")
        ax.axvline(means[arms.index("source_only")] if "source_only" in arms else 0,
                   color="0.3", ls="--", lw=0.8)
        ax.set_yticks(y, [ARM_TITLES[a] for a in arms], fontsize=8)
        ax.set_xlim(0 if means.min() < 0.7 else 0.6, 1)
        ax.set_xlabel("target validation mIoU (mean, 95% CI over seeds)", fontsize=8)
        ax.set_title(f"clean → {target}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m experiments.ablations.domain_adaptation WORKDIR [FIGURE.png]")
    print(summary(sys.argv[1], figure=sys.argv[2] if len(sys.argv) == 3 else None))
