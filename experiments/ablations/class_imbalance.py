"""Class imbalance: CE vs class-weighted CE vs focal vs Dice vs OHEM vs class-balanced sampling.

On `synthetic_shapes/imbalance` object classes are drawn with probabilities 0.62 (circle), 0.22
(square), 0.09 (triangle), 0.05 (star) and 0.02 (cross), and the background covers most pixels.
Each part changes one remedy against the plain cross-entropy baseline (a U-Net trained alike);
the IoU of the rarest class (cross, class 5) and the mean per-class accuracy are reported beside
mIoU, since a remedy for imbalance should help the rare classes first.
"""

from experiments.ablations import Part, Study

_BASE = "experiments/configs/shapes_ablation.py:unet"
_DATA = {"dataset.name": "synthetic_shapes/imbalance"}
_METRICS = ("miou", "iou_per_class[5]", "mean_accuracy")

STUDY = Study(
    name="class_imbalance",
    question="Which remedy for class imbalance helps the rare classes of "
             "`synthetic_shapes/imbalance`: a different loss, loss weights, or resampling?",
    parts=(
        Part(name="loss", title="The loss: cross-entropy, focal, Dice, OHEM",
             base=_BASE, overrides=_DATA, sweeps=("loss.kind=ce,focal,dice,ohem",),
             metrics=_METRICS,
             note="Focal: gamma 2 (Lin et al. 2017). Dice: softmax Dice per image, averaged "
                  "over all classes (Milletari et al. 2016). OHEM: cross-entropy over the "
                  "pixels whose probability of the true class is below 0.7 (PSPNet / "
                  "mmsegmentation's rule; `min_kept` 0 here)."),
        Part(name="weights", title="Class-weighted cross-entropy",
             base=_BASE, overrides=_DATA,
             sweeps=("loss.class_weights='',median_frequency,inverse_frequency",),
             metrics=_METRICS,
             note="Weights from the training split's pixel counts: median-frequency balancing "
                  "(Eigen & Fergus 2015, as in SegNet) and inverse frequency (average pixel "
                  "weight 1)."),
        Part(name="sampling", title="Class-balanced sampling of training images",
             base=_BASE, overrides=_DATA, sweeps=("dataset.class_balanced=False,True",),
             metrics=_METRICS,
             note="Images are drawn with a square-root repeat factor of their rarest class "
                  "(LVIS-style repeat-factor sampling, `segjax.data.balance`)."),
    ),
)
