"""PSPNet (Zhao et al., 2017) on ResNet, registered as `pspnet_resnet{18,50,101}`.

`backbone`: ResNet at output stride 8 (dilated layer3/layer4, torchvision's scheme);
`classifier`: `PyramidPoolingHead` on layer4 (bins 1, 2, 3, 6, fused by a 3x3 conv of 512
channels, Dropout 0.1, 1x1 classifier); `aux_classifier` (on by default, `aux_loss=True`, weighted
0.4 in the paper's loss): an FCNHead on layer3 (3x3 conv to C/4 channels, BN, ReLU, Dropout 0.1,
1x1 classifier). Logits are bilinearly resized (align_corners=False) to the input size.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet
from segjax.models.compose import resnet_segmenter
from segjax.models.heads import PyramidPoolingHead
from segjax.models.registry import register


class PSPNet(nn.Module):
    """PSPNet on a ResNet backbone (see the module docstring).

    Attributes:
      num_classes: output classes.
      backbone_depth: ResNet depth.
      output_stride: 8 (paper), 16 or 32.
      multi_grid: unit rates of layer4's blocks or None.
      bins: pyramid bin sizes.
      aux_loss: add `aux_classifier` on layer3 and return AUX_LOGITS.
      backbone_width: ResNet stem width (64 = torchvision).
      head_channels: channels of the fusion conv (512 in the paper).
      dtype, axis_name, in_channels: the model contract's.
    """

    num_classes: int
    backbone_depth: int = 50
    output_stride: int = 8
    multi_grid: Sequence[int] | None = None
    bins: Sequence[int] = (1, 2, 3, 6)
    aux_loss: bool = True
    backbone_width: int = 64
    head_channels: int = 512
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        def head(feats, train):
            return PyramidPoolingHead(self.num_classes, tuple(self.bins), self.head_channels,
                                      dtype=self.dtype, axis_name=self.axis_name,
                                      name="classifier")(feats["layer4"], train)

        return resnet_segmenter(self, images, train, head, depth=self.backbone_depth,
                                multi_grid=self.multi_grid,
                                label=f"pspnet_resnet{self.backbone_depth}")


def _pspnet_factory(depth: int):
    def factory(
        *, num_classes: int, output_stride: int = 8, multi_grid: Sequence[int] | None = None,
        aux_loss: bool = True, backbone_width: int = 64, head_channels: int = 512,
        dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
    ) -> PSPNet:
        ResNet(depth=depth, output_stride=output_stride, multi_grid=multi_grid, width=backbone_width).validate()
        if not isinstance(head_channels, int) or head_channels < 1:
            raise ValueError(f"head_channels must be a positive int, got {head_channels!r}")
        return PSPNet(
            num_classes=num_classes, backbone_depth=depth, output_stride=output_stride,
            multi_grid=None if multi_grid is None else tuple(multi_grid), aux_loss=aux_loss,
            backbone_width=backbone_width, head_channels=head_channels, dtype=dtype,
            axis_name=axis_name, in_channels=in_channels,
        )

    factory.__doc__ = f"PSPNet on ResNet-{depth}: OS 8, pyramid pooling (1, 2, 3, 6), aux head on layer3."
    return factory


pspnet_resnet18 = register("pspnet_resnet18")(_pspnet_factory(18))
pspnet_resnet50 = register("pspnet_resnet50")(_pspnet_factory(50))
pspnet_resnet101 = register("pspnet_resnet101")(_pspnet_factory(101))
