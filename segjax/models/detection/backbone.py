"""The detection backbone: a ResNet with an FPN on top (torchvision's `resnet_fpn_backbone`), padded
input, and torchvision's freezing of its stages for a pretrained backbone.

`resnet_fpn` builds the two modules for a meta-architecture's `setup` (assign them to attributes
`backbone` and `fpn`: their parameter scopes are named by the attributes, as torchvision's
`backbone.body` and `backbone.fpn`); `pyramid` runs them on zero-padded images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet
from segjax.models.detection.fpn import FPN

PYRAMID_LEVELS = ("p2", "p3", "p4", "p5")  # the FPN's outputs (torchvision's "0".."3"), strides 4-32
EXTRA_LEVEL = "p6"  # max-pooled P5, stride 64 (torchvision's "pool")
BACKBONE_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")  # torchvision's unfreezing order


def resnet_fpn(*, depth: int, width: int, fpn_channels: int, dtype: Any = jnp.float32, in_channels: int = 3,
               trainable_backbone_layers: int | None = None) -> tuple[ResNet, FPN]:
    """(ResNet, FPN): maps `layer1..layer4` -> `p2..p5` + `p6` with `fpn_channels` channels.

    `trainable_backbone_layers` None trains every stage; k in 0..5 stops the gradient below the
    last k of `BACKBONE_STAGES` (keep their parameters out of the optimizer: `frozen_parameters`).
    """
    k = trainable_backbone_layers
    if k is not None and k not in range(len(BACKBONE_STAGES) + 1):
        raise ValueError(f"trainable_backbone_layers must be None or in 0..5, got {k!r}")
    backbone = ResNet(depth=depth, width=width, dtype=dtype, in_channels=in_channels,
                      frozen_stages=0 if k is None else len(BACKBONE_STAGES) - k)
    return backbone, FPN(out_names=PYRAMID_LEVELS, out_channels=fpn_channels, extra_name=EXTRA_LEVEL, dtype=dtype)


def pad_to_multiple(images: jax.Array, multiple: int) -> jax.Array:
    """Zero-pads [N, H, W, C] bottom/right to multiples of `multiple` (torchvision's batching)."""
    h, w = images.shape[1:3]
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    return jnp.pad(images, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))


def pyramid(backbone: ResNet, fpn: FPN, padded: jax.Array) -> dict[str, jax.Array]:
    """FPN maps `p2..p6` [N, Hp / s, Wp / s, C] of padded images (BatchNorm frozen: running
    statistics always, as torchvision's FrozenBatchNorm2d)."""
    return fpn(backbone(padded, train=False))


def frozen_parameters(params, trainable_backbone_layers: int = 3):
    """Bool pytree shaped like `params`: True where torchvision's Mask R-CNN trains nothing.

    With a pretrained backbone torchvision makes every backbone BatchNorm a FrozenBatchNorm2d
    (scale and offset are constants, not parameters) and trains only the last
    `trainable_backbone_layers` (0-5) of `layer4, layer3, layer2, layer1, conv1` (3 by default:
    `conv1` and `layer1` stay fixed). segjax keeps those as parameters (the model uses the
    running statistics either way); mask them in the optimizer, e.g.
    `optax.multi_transform({False: tx, True: optax.set_to_zero()}, frozen_parameters(params))`.
    `params` is a model's whose ResNet is its child `backbone`.
    """
    from flax import traverse_util

    if not 0 <= trainable_backbone_layers <= len(BACKBONE_STAGES):
        raise ValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_backbone_layers}")
    trained = BACKBONE_STAGES[:trainable_backbone_layers]
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path in flat:
        if path[0] != "backbone":
            out[path] = False
            continue
        stage = path[1] if path[1].startswith("layer") else "conv1"  # conv1 / bn1: the stem
        is_bn = any(p.startswith("bn") for p in path[1:-1]) or "downsample" in path and path[-2] == "1"
        out[path] = is_bn or stage not in trained
    return traverse_util.unflatten_dict(out)


__all__ = ["BACKBONE_STAGES", "EXTRA_LEVEL", "PYRAMID_LEVELS", "frozen_parameters", "pad_to_multiple", "pyramid",
           "resnet_fpn"]
