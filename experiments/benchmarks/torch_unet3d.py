"""The torch twin of segjax's `unet3d` for `unet3d_step` (test and benchmark code: imports torch).

`TorchUNet3D` transcribes Çiçek et al. 2016, Fig. 1 (padded 3x3x3 Conv3d + BatchNorm3d + ReLU
pairs, ceil-mode MaxPool3d, ConvTranspose3d up-convolutions that keep the channels, crop and
concatenation, a 1x1x1 classifier) with its layers named like the flax parameters, so
`load_variables` copies segjax's weights in. `tests/models/test_unet3d.py` proves it equal to the
flax model (logits and every gradient).

Run as `python -m experiments.benchmarks.torch_unet3d`, it is `torch_twin.TwinProcess`'s child:
the spec line names an `.npz` of segjax's variables (`params/<layer>/<name>`,
`batch_stats/<layer>/<name>`), input volume and labels, so both sides time the same weights on the
same batch (NCDHW, float32; train: cross-entropy, SGD momentum 0.9, weight decay 1e-4 at lr 0 as
`torch_twin.STATIONARY_LR`; eval: forward + arg-max without gradients).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn as tnn

from segjax import jsonio

_TO_TORCH = {"kernel": (4, 3, 0, 1, 2), "bias": None, "scale": None}  # DHWIO / [2,2,2,out,in] -> torch
_TORCH_NAME = {"kernel": "weight", "bias": "bias", "scale": "weight"}


class TorchUNet3D(tnn.Module):
    """Çiçek et al. 2016, Fig. 1, with padded 3x3x3 convolutions; layers named like segjax's."""

    def __init__(self, in_channels, base, depth, num_classes):
        super().__init__()
        self.depth = depth
        layers = {}

        def pair(prefix, cin, c1, c2):
            for i, (a, b) in enumerate(((cin, c1), (c1, c2)), start=1):
                layers[f"{prefix}_conv{i}"] = tnn.Conv3d(a, b, 3, padding=1)
                layers[f"{prefix}_bn{i}"] = tnn.BatchNorm3d(b)

        cin = in_channels
        for level in range(depth):
            pair(f"enc{level}", cin, base * 2**level, base * 2 ** (level + 1))
            cin = base * 2 ** (level + 1)
        pair("bottom", cin, base * 2**depth, base * 2 ** (depth + 1))
        for level in reversed(range(depth)):
            up = base * 2 ** (level + 2)  # the up-convolution keeps the channels (512 -> 512)
            layers[f"up{level}"] = tnn.ConvTranspose3d(up, up, 2, stride=2)
            pair(f"dec{level}", up + base * 2 ** (level + 1), base * 2 ** (level + 1), base * 2 ** (level + 1))
        layers["classifier"] = tnn.Conv3d(2 * base, num_classes, 1)
        self.layers = tnn.ModuleDict(layers)

    def _pair(self, x, prefix):
        for i in (1, 2):
            x = F.relu(self.layers[f"{prefix}_bn{i}"](self.layers[f"{prefix}_conv{i}"](x)))
        return x

    def forward(self, x):
        skips = []
        for level in range(self.depth):
            x = self._pair(x, f"enc{level}")
            skips.append(x)
            x = F.max_pool3d(x, 2, 2, ceil_mode=True)
        x = self._pair(x, "bottom")
        for level in reversed(range(self.depth)):
            skip = skips[level]
            x = self.layers[f"up{level}"](x)[:, :, : skip.shape[2], : skip.shape[3], : skip.shape[4]]
            x = self._pair(torch.cat([skip, x], 1), f"dec{level}")
        return self.layers["classifier"](x)


def load_variables(model: TorchUNet3D, flat: dict[str, np.ndarray]) -> None:
    """Copies segjax's variables, flattened as `{"params/<layer>/<name>": array,
    "batch_stats/<layer>/<mean|var>": array}`, into `model`'s same-named layers."""
    with torch.no_grad():
        for key, value in flat.items():
            collection, layer, name = key.split("/")
            module = model.layers[layer]
            value = np.asarray(value, np.float32)
            if collection == "params":
                axes = _TO_TORCH[name]
                target = getattr(module, _TORCH_NAME[name])
                value = value if axes is None else value.transpose(axes)
            else:
                target = {"mean": module.running_mean, "var": module.running_var}[name]
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _serve() -> None:
    """Child side of `torch_twin.TwinProcess`: a JSON spec line, then one step count per line."""
    import os

    from experiments.benchmarks import torch_twin

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printing goes to stderr, not into the protocol
    spec = json.loads(sys.stdin.readline())
    data = dict(np.load(spec["arrays"]))
    image, label = data.pop("image"), data.pop("label")
    model = TorchUNet3D(image.shape[-1], spec["base_features"], spec["depth"], spec["num_classes"])
    load_variables(model, data)
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 4, 1, 2, 3)))
    y = torch.from_numpy(label.astype(np.int64))
    opt = torch.optim.SGD(model.parameters(), lr=torch_twin.STATIONARY_LR, momentum=0.9,
                          weight_decay=1e-4)
    step, first = torch_twin._timed_step(
        model, opt, torch.autocast("cpu", enabled=False), torch.device("cpu"), spec["train"],
        loss=lambda: F.cross_entropy(model(x), y), forward=lambda: model(x).argmax(1))
    print(jsonio.dumps({"first_step_s": first}), file=replies, flush=True)
    for line in sys.stdin:
        n = int(line)
        step()  # untimed, as torch_twin's
        start = time.perf_counter()
        for _ in range(n):
            step()
        print(jsonio.dumps({"seconds_per_step": (time.perf_counter() - start) / n}), file=replies,
              flush=True)


if __name__ == "__main__":
    _serve()
