"""Each difficulty factor of the synthetic dataset vs mIoU.

`synthetic_shapes` switches on one difficulty factor per config and leaves the rest of every
scene (objects, colours, placement) unchanged, so the drop from `clean` measures what that
factor alone costs the same U-Net trained alike. Under `label_noise` the validation labels are
as noisy as the training labels (jittered outlines, 8% of objects with a wrong class), so its
score also measures the disagreement between the model and noisy references.
"""

from experiments.ablations import Part, Study

_CONFIGS = ("clean", "illumination", "occlusion", "overlap", "shape_variation", "imbalance",
            "noise", "label_noise", "all")

STUDY = Study(
    name="difficulty",
    question="What does each difficulty factor (illumination, occlusion, overlap, shape "
             "variation, imbalance, noise, label noise) cost in mIoU?",
    parts=(
        Part(name="factors", title="One factor at a time, and all together",
             base="experiments/configs/shapes_ablation.py:unet",
             sweeps=("dataset.name=" + ",".join(f"synthetic_shapes/{c}" for c in _CONFIGS),),
             metrics=("miou", "boundary_iou", "pixel_accuracy")),
    ),
)
