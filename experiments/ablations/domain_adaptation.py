"""Domain adaptation: trained with clean shapes' labels, how well does each method carry over to
an unlabelled new domain?

Every part trains `experiments/configs/uda.py:shapes` (DeepLab v3+ ResNet-18 at CPU widths, 64x64
crops, batch 16, 300 steps) with `synthetic_shapes/clean`'s labels and the target domain's
unlabelled training images, and scores the target's validation labels. The arms: source only,
source only with photometric jitter (the augmentation baseline), FDA (beta 0.01 plus the robust
entropy), AdaptSegNet's output-space adversarial training (single level) and DACS (ClassMix with
an EMA teacher's pseudo-labels), each with its paper's defaults (`segjax.tasks.uda`). Paired
differences are against source only, seed by seed.
"""

from experiments.ablations import Part, Study

METHODS = ("uda.method,dataset.photometric=('source_only',False),('source_only',True),"
           "('fda',False),('adversarial',False),('dacs',False)")
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
             sweeps=(METHODS,), metrics=("miou", "boundary_iou"),
             note="Scored on the target's validation labels after the last step (no checkpoint "
                  "is picked on target labels).")
        for target, what in TARGETS.items()),
)
