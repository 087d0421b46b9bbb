"""The one composition of the dense-prediction models on ResNet: backbone -> head -> resize -> aux.

DeepLab v2/v3/v3+, PSPNet and torchvision's FCN-ResNet differ only in their `classifier` head;
`resnet_segmenter` builds the rest the same way for all of them, inside the calling module's
compact `__call__` (so the parameter tree is `backbone`, `classifier`, `aux_classifier`, as
torchvision names them and `segjax.models.torchvision_import` expects):

* `backbone`: `ResNet` returning named maps (`stem`, `layer1` .. `layer4`) with their strides;
* `classifier`: `head(feats, train)`, built by the model from the maps it picks by name;
* the logits resized bilinearly (align_corners=False) to the input size, float32;
* with `aux_loss`: `aux_classifier`, torchvision's `FCNHead` on `layer3`, resized the same way.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet
from segjax.models.heads import FCNHead
from segjax.models.layers import check_images
from segjax.models.outputs import AUX_LOGITS, LOGITS
from segjax.ops import resize

Head = Callable[[Mapping[str, jax.Array], bool], jax.Array]


def resnet_segmenter(model: nn.Module, images: jax.Array, train: bool, head: Head, *,
                     depth: int, label: str, multi_grid: Any = None) -> dict[str, jax.Array]:
    """The output dict of `model` (call from its compact `__call__`).

    `model` provides `num_classes`, `output_stride`, `backbone_width`, `aux_loss`, `dtype`,
    `axis_name` and `in_channels`; `head(feats, train)` builds and applies the `classifier`;
    `label` names the model in input errors.
    """
    check_images(images, model.in_channels, label)
    feats = ResNet(depth=depth, output_stride=model.output_stride, multi_grid=multi_grid,
                   width=model.backbone_width, dtype=model.dtype, axis_name=model.axis_name,
                   in_channels=model.in_channels, name="backbone")(images, train)
    size = images.shape[1:3]
    out = {LOGITS: resize(head(feats, train).astype(jnp.float32), size)}
    if model.aux_loss:
        aux = FCNHead(model.num_classes, dtype=model.dtype, axis_name=model.axis_name,
                      name="aux_classifier")(feats["layer3"], train)
        out[AUX_LOGITS] = resize(aux.astype(jnp.float32), size)
    return out
