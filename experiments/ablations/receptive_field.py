"""Receptive field: output stride 8/16/32, ASPP rates, image pooling, decoder on/off.

DeepLab controls what each output pixel sees with the backbone's output stride (atrous
convolution replaces the last strides), the rates of the ASPP branches, the image-level
pooling branch, and (v3+) a decoder that brings back stride-4 detail. Every part varies one of
them from the same baseline, DeepLab v3+ on a ResNet-18 of width 16 at output stride 16 with
ASPP rates (6, 12, 18) and image pooling, on `synthetic_shapes/all` (every difficulty factor on).
Training crops are 64x64, so at output stride 16 the ASPP sees a 4x4 feature map: rate 6 and
above reduce its 3x3 convolutions to their centre tap (the degeneration Chen et al. 2017
describe for large rates), which the rates part measures.
"""

from experiments.ablations import Part, Study

_BASE = "experiments/configs/shapes_ablation.py:deeplab"
_DATA = {"dataset.name": "synthetic_shapes/all"}
_METRICS = ("miou", "boundary_iou")

STUDY = Study(
    name="receptive_field",
    question="How do output stride, ASPP rates, image pooling and the decoder change DeepLab's "
             "accuracy? (DeepLab v3+ R18/16 on `synthetic_shapes/all`.)",
    parts=(
        Part(name="output_stride", title="Output stride 8 / 16 / 32 (ASPP rates scaled)",
             base=_BASE, overrides=_DATA, sweeps=("model.output_stride=16,8,32",),
             metrics=_METRICS,
             note="The rates follow the output stride as in the papers: (12, 24, 36) at 8, "
                  "(6, 12, 18) at 16, (3, 6, 9) at 32."),
        Part(name="atrous_rates", title="ASPP rates at output stride 16",
             base=_BASE, overrides=_DATA,
             sweeps=("model.atrous_rates=(6,12,18),(1,1,1),(1,2,3),(2,4,6)",),
             metrics=_METRICS),
        Part(name="image_pooling", title="ASPP image-pooling branch on / off",
             base=_BASE, overrides=_DATA, sweeps=("model.image_pooling=True,False",),
             metrics=_METRICS),
        Part(name="decoder", title="Decoder on (v3+) / off (v3)",
             base=_BASE, overrides=_DATA,
             sweeps=("model.name=deeplabv3plus_resnet18,deeplabv3_resnet18",),
             metrics=_METRICS,
             note="v3 upsamples the ASPP output bilinearly by 16; v3+ fuses it with the "
                  "stride-4 features of layer1 first."),
    ),
)
