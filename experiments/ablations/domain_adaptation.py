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
    `python -m experiments.ablations --study=domain_adaptation --workdir=WORKDIR` trains it: each
    run's config is rebuilt as the runner builds it (the part's base and overrides, the cell, the
    seed) and placed by `sweep.config_run_dir` under WORKDIR/runs. A run has finished once its
    directory holds `result.json` (`sweep.RESULT_FILE`); the others may not exist yet."""
    import os

    from experiments.ablations.runner import load_base
    from segjax.train import sweep

    out = {}
    for part in STUDY.parts:
        base = load_base(part.base)
        for key, value in part.overrides.items():
            sweep._set(base, key, value)
        for cell in sweep.grid([sweep.parse_sweep(s) for s in part.sweeps]):
            config = sweep.make_config(base, cell, seed)
            method, photometric, source = cell[0][1]
            arm = ARMS[method, photometric] if source == SOURCE else "target_oracle"
            out[part.name, arm] = sweep.config_run_dir(
                os.path.join(os.path.abspath(workdir), "runs"), config)
    return out
