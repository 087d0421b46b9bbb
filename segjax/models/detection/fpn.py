"""Feature Pyramid Network (Lin et al. 2017) over a backbone's named feature maps.

torchvision's `FeaturePyramidNetwork` + `LastLevelMaxPool`, NHWC: every input level gets a 1x1
"inner" (lateral) conv to `out_channels`; from the coarsest level down, the running top-down map
is upsampled (nearest, to the finer map's size) and added to the next lateral; each sum goes
through a 3x3 "layer" conv (padding 1). Both convs have biases, kaiming-uniform (a = 1)
initialised, biases zero. The extra level (`extra_max_pool`) is max-pool(kernel 1, stride 2) of
the coarsest output, i.e. every other pixel (P6 of Mask R-CNN, used by the RPN only).

For a ResNet (`segjax.models.backbones.resnet.ResNet`) the inputs are `layer1..layer4` (C2-C5,
strides 4-32) and the outputs `p2..p5` plus `p6` (stride 64); torchvision calls them
"0", "1", "2", "3", "pool".
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax import ops
from segjax.models.layers import square_conv

# torchvision: nn.init.kaiming_uniform_(w, a=1): gain 1, bound sqrt(3 / fan_in).
fpn_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


class FPN(nn.Module):
    """Top-down pyramid: `{in_features[i]: [N, H_i, W_i, C_i]}` -> `{out_names[i]: [N, H_i, W_i,
    out_channels]}` (+ `extra_name`, half the coarsest map's size, when `extra_max_pool`).

    Attributes:
      in_features: names of the input maps, finest first (each one stride-2 coarser).
      out_names: names of the outputs, one per input.
      out_channels: channels of every output (256 in Mask R-CNN).
      extra_max_pool: add torchvision's LastLevelMaxPool level.
      extra_name: its name.
      fuse_type: "sum" (torchvision) or "avg" (detectron2's `FUSE_TYPE: avg`, RetinaNet/TensorMask:
        the lateral + top-down sum halved).
      dtype: compute dtype.

    Children: `inner_{i}` (1x1) and `layer_{i}` (3x3) per input level (torchvision's
    `inner_blocks.{i}.0` and `layer_blocks.{i}.0`).
    """

    in_features: Sequence[str] = ("layer1", "layer2", "layer3", "layer4")
    out_names: Sequence[str] = ("p2", "p3", "p4", "p5")
    out_channels: int = 256
    extra_max_pool: bool = True
    extra_name: str = "p6"
    fuse_type: str = "sum"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, jax.Array]) -> dict[str, jax.Array]:
        if len(self.in_features) != len(self.out_names):
            raise ValueError(f"FPN needs one output name per input: {self.in_features} vs {self.out_names}")
        if self.fuse_type not in ("sum", "avg"):
            raise ValueError(f"FPN fuse_type must be 'sum' or 'avg', got {self.fuse_type!r}")
        missing = [k for k in self.in_features if k not in features]
        if missing:
            raise ValueError(f"FPN inputs {missing} not among the backbone's maps {sorted(features)}")

        def conv(kernel, i, kind):
            return square_conv(self.out_channels, kernel, use_bias=True, dtype=self.dtype,
                               kernel_init=fpn_kernel_init, name=f"{kind}_{i}")

        xs = [features[k].astype(self.dtype) for k in self.in_features]
        last = len(xs) - 1
        top_down = conv(1, last, "inner")(xs[last])
        outputs = [conv(3, last, "layer")(top_down)]
        for i in range(last - 1, -1, -1):
            lateral = conv(1, i, "inner")(xs[i])
            upsampled = ops.resize(top_down, lateral.shape[1:3], "nearest")
            top_down = lateral + upsampled
            if self.fuse_type == "avg":
                top_down = top_down / 2
            outputs.insert(0, conv(3, i, "layer")(top_down))
        result = dict(zip(self.out_names, outputs))
        if self.extra_max_pool:
            result[self.extra_name] = outputs[-1][:, ::2, ::2]  # max_pool2d(kernel 1, stride 2)
        return result


__all__ = ["FPN", "fpn_kernel_init"]
