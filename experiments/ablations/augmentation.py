"""Augmentation on/off: flips, random rescaling and photometric jitter, with little data.

Augmentation matters when the model can memorise its training set, so every run here trains on
only the first 128 images of `synthetic_shapes/illumination` (smooth gain fields of 0.35-1.35
over the image) for 400 steps of batch 16, i.e. 50 epochs, and is evaluated on the full
validation split (250 images).
"""

from experiments.ablations import Part, Study

_BASE = "experiments/configs/shapes_ablation.py:unet"
_OVERRIDES = {"dataset.name": "synthetic_shapes/illumination", "dataset.num_train_examples": 128,
              "num_train_steps": 400, "eval_every_steps": 400, "checkpoint_every_steps": 400}

STUDY = Study(
    name="augmentation",
    question="How much do geometric and photometric augmentation add when training data is "
             "scarce (128 images)?",
    parts=(
        Part(name="geometric", title="Horizontal flips x random rescaling (then 64x64 crops)",
             base=_BASE, overrides=_OVERRIDES,
             sweeps=("dataset.hflip=False,True",
                     "dataset.min_scale,dataset.max_scale=(1.0,1.0),(0.5,2.0)"),
             baseline="dataset.hflip=False;dataset.min_scale,dataset.max_scale=(1.0,1.0)",
             metrics=("miou", "boundary_iou"),
             note="Scale (1.0, 1.0) keeps every image at its size (random crops only); (0.5, "
                  "2.0) is DeepLab's range."),
        Part(name="photometric", title="Photometric jitter on top of flips and rescaling",
             base=_BASE,
             overrides={**_OVERRIDES, "dataset.min_scale": 0.5, "dataset.max_scale": 2.0},
             sweeps=("dataset.photometric=False,True",), metrics=("miou", "boundary_iou"),
             note="Brightness, contrast, saturation and hue jitter (`segjax.data.augment`); "
                  "the test images vary in illumination, so this is the augmentation that "
                  "matches the nuisance."),
    ),
)
