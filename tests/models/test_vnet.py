"""V-Net against a torch transcription of the paper's Fig. 2 written here (5x5x5 Conv3d + per-channel
PReLU, residual stages of 1, 2, 3, 3, 3 and 3, 3, 2, 1 convolutions, 2x2x2 stride-2 down-convolutions,
ConvTranspose3d de-convolutions, the input copied to the first stage's channels), with the flax
weights copied in: logits, input and parameter gradients on an odd volume, and the parameter count
at the paper's widths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from segjax.models import create_model
from tests.models.tv_reference import random_variables
from tests.models.volumetric_reference import compare_with_torch, load_flax, num_params

IN, BASE, K = 2, 4, 3  # the input copied twice to the first stage's 4 channels
SHAPE = (2, 9, 6, 7, IN)  # 9 -> 5 -> 3 -> 2 -> 1: odd sizes padded on the way down, cropped on the way up
DOWN, UP = (1, 2, 3, 3, 3), (1, 2, 3, 3)  # convolutions per stage, finest first


class TorchVNet(tnn.Module):
    """Milletari et al. 2016, Fig. 2; layers named like segjax's."""

    def __init__(self, in_channels, base, num_classes, depth=4):
        super().__init__()
        self.in_channels, self.base, self.depth = in_channels, base, depth
        layers = {}

        def stage(prefix, cin, width, n):
            for i in range(1, n + 1):
                layers[f"{prefix}_conv{i}"] = tnn.Conv3d(cin if i == 1 else width, width, 5, padding=2)
                layers[f"{prefix}_act{i}"] = tnn.PReLU(width)
            layers[f"{prefix}_act"] = tnn.PReLU(width)

        stage("enc0", in_channels, base, DOWN[0])
        for s in range(1, depth + 1):
            layers[f"down{s}"] = tnn.Conv3d(base * 2 ** (s - 1), base * 2**s, 2, stride=2)
            layers[f"down{s}_act"] = tnn.PReLU(base * 2**s)
            stage(f"enc{s}", base * 2**s, base * 2**s, DOWN[s])
        for s in reversed(range(depth)):
            cin = base * 2**depth if s == depth - 1 else base * 2 ** (s + 2)
            layers[f"up{s}"] = tnn.ConvTranspose3d(cin, base * 2**s, 2, stride=2)
            layers[f"up{s}_act"] = tnn.PReLU(base * 2**s)
            stage(f"dec{s}", base * 2 ** (s + 1), base * 2 ** (s + 1), UP[s])
        layers["classifier"] = tnn.Conv3d(2 * base, num_classes, 1)
        self.layers = tnn.ModuleDict(layers)

    def _stage(self, x, prefix, n, residual):
        y = x
        for i in range(1, n + 1):
            y = self.layers[f"{prefix}_act{i}"](self.layers[f"{prefix}_conv{i}"](y))
        return self.layers[f"{prefix}_act"](y + residual)

    def forward(self, x):
        x = self._stage(x, "enc0", DOWN[0], x.repeat(1, self.base // self.in_channels, 1, 1, 1))
        skips = [x]
        for s in range(1, self.depth + 1):
            x = F.pad(x, (0, x.shape[4] % 2, 0, x.shape[3] % 2, 0, x.shape[2] % 2))
            x = self.layers[f"down{s}_act"](self.layers[f"down{s}"](x))
            x = self._stage(x, f"enc{s}", DOWN[s], x)
            skips.append(x)
        for s in reversed(range(self.depth)):
            skip = skips[s]
            x = self.layers[f"up{s}_act"](self.layers[f"up{s}"](x))
            x = torch.cat([x[:, :, : skip.shape[2], : skip.shape[3], : skip.shape[4]], skip], 1)
            x = self._stage(x, f"dec{s}", UP[s], x)
        return self.layers["classifier"](x)


@pytest.mark.parametrize("depth", [4, 1])  # the paper's, and the shallow one of the registry sweep
def test_matches_torch_transcription(depth):
    rng = np.random.default_rng(0)
    model = create_model("vnet", num_classes=K, base_features=BASE, in_channels=IN, depth=depth)
    variables = random_variables(model, SHAPE, rng)
    reference = TorchVNet(IN, BASE, K, depth)
    load_flax(reference.layers, variables)
    x = rng.normal(size=SHAPE).astype(np.float32)
    cot = rng.normal(size=SHAPE[:-1] + (K,)).astype(np.float32)
    compare_with_torch(model, reference.layers, reference, variables, x, cot, batch_norm=False, tol=1e-4)


def test_paper_widths_parameter_count():
    """16 ... 256 channels, one input channel and two classes (the paper's prostate MRI setting):
    65,176,290 parameters (per-channel PReLU slopes included), as the torch transcription's; no weights
    are materialised on either side."""
    model = create_model("vnet", num_classes=2)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16, 16, 16, 1), jnp.float32))
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))
    with torch.device("meta"):
        reference = TorchVNet(1, 16, 2)
    assert count == num_params(reference) == 65_176_290


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="base_features"):
        create_model("vnet", num_classes=2, base_features=0)
    with pytest.raises(ValueError, match="in_channels"):
        create_model("vnet", num_classes=2, in_channels=0)
    for depth in (0, 5):
        with pytest.raises(ValueError, match="depth must be 1 .. 4"):
            create_model("vnet", num_classes=2, depth=depth)
    model = create_model("vnet", num_classes=2, base_features=2)
    with pytest.raises(ValueError, match=r"NDHWC.*\(1, 8, 8, 8, 3\)"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 8, 3)))
