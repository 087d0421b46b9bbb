"""The AdaIN encoder: VGG-19 up to relu4_1 with reflection padding (Huang & Belongie, ICCV 2017,
Sec. 6: "We use reflection padding in both f and g to avoid border artifacts"), as
naoto0804/pytorch-AdaIN's `net.vgg[:31]` (the "normalised" VGG-19 of `vgg_normalised.pth`,
converted from the authors' Torch model).

`AdaINEncoder(images [N, H, W, 3])` -> {"relu1_1": [N, H, W, w], "relu2_1": [N, H2, W2, 2w],
"relu3_1": [N, H4, W4, 4w], "relu4_1": [N, H8, W8, 8w]} with w = 64 in the paper and H2 =
ceil(H / 2) etc. (the reference's max pools use `ceil_mode=True`), the dict that
`adain_content_loss` / `adain_style_loss` take.

* `preprocess=True`: a leading 1x1 conv 3 -> 3 (`preprocess`), whose fixed weights in
  `vgg_normalised.pth` turn RGB in [0, 1] into the mean-subtracted BGR x 255 that the Caffe VGG
  expects; load it with `from_torch_vgg_normalised`.
* `preprocess=False` with `from_torchvision_vgg19(torchvision's vgg19 state dict)`: torchvision's
  ImageNet weights with reflection instead of zero padding; the images are then normalised by
  the caller with ImageNet's mean and std, as every segjax model.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.ops._args import check_rank
from segjax.style.layers import ReflectConv

# (name, channels as a multiple of w, max pool before it); a ReLU follows every conv.
_LAYERS = (("conv1_1", 1, False), ("conv1_2", 1, False), ("conv2_1", 2, True), ("conv2_2", 2, False),
           ("conv3_1", 4, True), ("conv3_2", 4, False), ("conv3_3", 4, False), ("conv3_4", 4, False),
           ("conv4_1", 8, True))
# Their positions in naoto0804/pytorch-AdaIN's `vgg` Sequential and in torchvision's `vgg19.features`.
_NAOTO_INDEX = (2, 5, 9, 12, 16, 19, 22, 25, 29)
_TORCHVISION_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19)


def max_pool_ceil(x: jax.Array) -> jax.Array:
    """2x2 stride-2 max pooling with `ceil_mode=True`: [N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C]."""
    pad = ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), pad)


class AdaINEncoder(nn.Module):
    """VGG-19 to relu4_1, reflection-padded 3x3 convs, ceil-mode pools (see the module docstring).

    Attributes:
      width: w, 64 for the real VGG-19 (small for tests).
      preprocess: the leading fixed 1x1 conv of `vgg_normalised.pth`.
    Children: `preprocess` (nn.Conv 1x1), `conv1_1` .. `conv4_1` (`ReflectConv`).
    """

    width: int = 64
    preprocess: bool = True

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        check_rank(images, 4, "images", "N, H, W, C")
        x = nn.Conv(3, (1, 1), name="preprocess")(images) if self.preprocess else images
        out = {}
        for name, mult, pool in _LAYERS:
            if pool:
                x = max_pool_ceil(x)
            x = nn.relu(ReflectConv(mult * self.width, 3, name=name)(x))
            if name.endswith("_1"):
                out["relu" + name[4:]] = x
        return out


def _convert(state_dict: Mapping[str, np.ndarray], prefix: str, indices, source: str) -> dict:
    params = {}
    for (name, _, _), i in zip(_LAYERS, indices):
        try:
            weight, bias = state_dict[f"{prefix}{i}.weight"], state_dict[f"{prefix}{i}.bias"]
        except KeyError as e:
            raise ValueError(f"state dict has no {e.args[0]!r}: expected {source}") from None
        params[name] = {"conv": {"kernel": jnp.asarray(np.transpose(weight, (2, 3, 1, 0))),
                                 "bias": jnp.asarray(bias)}}
    return params


def from_torch_vgg_normalised(state_dict: Mapping[str, np.ndarray]) -> dict:
    """naoto0804/pytorch-AdaIN `vgg_normalised.pth` -> `AdaINEncoder(preprocess=True)` variables.

    Uses `0.*` (the 1x1 conv) and the convs at 2, 5, 9, 12, 16, 19, 22, 25, 29; the layers after
    relu4_1 are not needed. A missing key raises ValueError naming it.
    """
    source = "naoto0804/pytorch-AdaIN's vgg_normalised.pth (net.vgg indices)"
    params = _convert(state_dict, "", _NAOTO_INDEX, source)
    if "0.weight" not in state_dict or "0.bias" not in state_dict:
        raise ValueError(f"state dict has no '0.weight'/'0.bias' (the 1x1 preprocessing conv): expected {source}")
    params["preprocess"] = {"kernel": jnp.asarray(np.transpose(state_dict["0.weight"], (2, 3, 1, 0))),
                            "bias": jnp.asarray(state_dict["0.bias"])}
    return {"params": params}


def from_torchvision_vgg19(state_dict: Mapping[str, np.ndarray]) -> dict:
    """torchvision `vgg19` state dict (`features.{0,2,5,7,10,12,14,16,19}.*`) ->
    `AdaINEncoder(preprocess=False)` variables; other keys are not needed."""
    return {"params": _convert(state_dict, "features.", _TORCHVISION_INDEX, "torchvision's vgg19 state dict")}
