"""Transfer learning: from scratch vs initialised from a model trained on another config,
frozen vs fine-tuned backbone.

The source model, DeepLab v3+ R18/16, trains on all 2000 images of `synthetic_shapes/clean`
(600 steps). The target task is `synthetic_shapes/all` (every difficulty factor) with only 64
training images and 200 steps. The target grid crosses the initialisation (scratch, or the
source's newest checkpoint, whole model) with the backbone frozen or fine-tuned. A frozen
backbone keeps its parameters (no update, no momentum) but its BatchNorm statistics still
follow the target data; scratch + frozen is the random-features control.
"""

from experiments.ablations import Part, Study

_BASE = "experiments/configs/shapes_ablation.py:deeplab"

STUDY = Study(
    name="transfer",
    question="Does a model trained on another synthetic config help when the target has little "
             "data, and should its backbone be frozen or fine-tuned?",
    parts=(
        Part(name="source", title="Source: `synthetic_shapes/clean`, 2000 images, 600 steps",
             base=_BASE,
             overrides={"dataset.name": "synthetic_shapes/clean", "num_train_steps": 600,
                        "eval_every_steps": 600, "checkpoint_every_steps": 600},
             seeds=(0,), metrics=("miou", "boundary_iou")),
        Part(name="target", title="Target: `synthetic_shapes/all`, 64 images, 200 steps",
             base=_BASE,
             overrides={"dataset.name": "synthetic_shapes/all", "dataset.num_train_examples": 64,
                        "num_train_steps": 200, "eval_every_steps": 200,
                        "checkpoint_every_steps": 200},
             sweeps=("init_from='',{part:source}", "optimizer.freeze_backbone=False,True"),
             metrics=("miou", "boundary_iou"),
             note="`init_from={part:source}` is the source run's work directory."),
    ),
)
