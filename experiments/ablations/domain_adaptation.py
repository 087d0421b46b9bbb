"""Domain adaptation: trained with clean shapes' labels, how well does each method carry over to
an unlabelled new domain?

Every part trains `experiments/configs/uda.py:shapes` (DeepLab v3+ ResNet-18 at CPU widths, 64x64
crops, batch 16, 300 steps) with `synthetic_shapes/clean`'s labels and the target domain's
unlabelled training images, and scores the target's validation labels. The arms: source only,
source only with photometric jitter (the augmentation baseline), FDA (beta 0.01 plus the robust
entropy), AdaptSegNet's output-space adversarial training (single level) and DACS (ClassMix with
an EMA teacher's pseudo-labels), each with its paper's defaults (`segjax.tasks.uda`), and the
target oracle (trained with the target's labels instead of clean's: the upper bound). Paired
differences are against source only, seed by seed.
"""

from experiments.ablations import Part, Study

ARMS = (("source_only", False), ("source_only", True), ("fda", False), ("adversarial", False),
        ("dacs", False))


def methods(target: str) -> str:
    """The sweep of one part: every arm trained with clean's labels, then the target oracle
    (source only trained with the target's own labels: the upper bound)."""
    cells = [(m, p, "synthetic_shapes/clean") for m, p in ARMS]
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
