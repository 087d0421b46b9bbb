"""Upsampling: bilinear vs learned transposed conv vs nearest / bed-of-nails / max unpooling.

Decoders have to bring coarse features back to the image's resolution. The lectures list the
options: fixed interpolation (nearest, bilinear), unpooling without parameters (bed of nails:
the value in the top-left corner of each 2x2 cell, zeros elsewhere; max unpooling: the value
back where the encoder's max came from) and learned upsampling (transposed convolution). Each
part swaps only the upsampling operator of one architecture; Boundary IoU (Cheng et al. 2021)
is reported beside mIoU because the operator matters most at object boundaries.
"""

from experiments.ablations import Part, Study

_DATA = {"dataset.name": "synthetic_shapes/clean"}
_METRICS = ("miou", "boundary_iou")

STUDY = Study(
    name="upsampling",
    question="Does the upsampling operator of the decoder change accuracy, in particular at "
             "object boundaries? (U-Net, SegNet and FCN-8s on `synthetic_shapes/clean`.)",
    parts=(
        Part(name="unet", title="U-Net: the decoder's x2 upsampling",
             base="experiments/configs/shapes_ablation.py:unet", overrides=_DATA,
             sweeps=("model.upsampling=transposed,bilinear,nearest,bed_of_nails",),
             metrics=_METRICS,
             note="`transposed` is the paper's learned 2x2 stride-2 transposed convolution; the "
                  "others upsample without parameters and are followed by a 1x1 conv that "
                  "halves the channels."),
        Part(name="segnet", title="SegNet: unpooling with and without the pooling indices",
             base="experiments/configs/shapes_ablation.py:segnet", overrides=_DATA,
             sweeps=("model.unpooling=max,nearest,bed_of_nails",), metrics=_METRICS,
             note="`max` puts each value back at its encoder argmax (the paper's switches); "
                  "`nearest` copies it to the whole 2x2 cell; `bed_of_nails` to its top-left "
                  "corner."),
        Part(name="fcn", title="FCN-8s: learned vs fixed bilinear upsampling",
             base="experiments/configs/shapes_ablation.py:fcn", overrides=_DATA,
             sweeps=("model.learnable_upsampling=True,False",), metrics=_METRICS,
             note="True: transposed convolutions initialised to bilinear interpolation and "
                  "trained (the paper); False: the same bilinear upsampling, fixed."),
    ),
)
