"""torchvision VGGs (any width, max or average pooling) and their named activations, for the style
tests (test-only: imports torch)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models.vgg import cfgs, make_layers

CONFIGS = {16: "D", 19: "E"}  # torchvision's names of the VGG-16 / VGG-19 layouts
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def torch_vgg(depth: int, width: int = 64, *, pooling: str = "max", seed: int = 0) -> torch.nn.Sequential:
    """torchvision's `vgg{depth}().features` at `width` channels in stage 1 (torchvision's
    `make_layers`; without building the 120M-parameter classifier), conv weights initialised as
    torchvision's `VGG.__init__` does (Kaiming normal, fan-out) from `seed`, random biases (so a
    dropped bias would show), `prepare`d."""
    torch.manual_seed(seed)
    cfg = [v if v == "M" else v * width // 64 for v in cfgs[CONFIGS[depth]]]
    features = prepare(make_layers(cfg), pooling=pooling)
    for m in features:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    return features


def prepare(features: torch.nn.Sequential, *, pooling: str = "max") -> torch.nn.Sequential:
    """`features` in eval mode with ReLUs not in place (so conv outputs can be read) and 2x2
    average pools instead of the max pools if `pooling == "avg"` (in place)."""
    for i, m in enumerate(features):
        if isinstance(m, torch.nn.ReLU):
            features[i] = torch.nn.ReLU(inplace=False)
        if isinstance(m, torch.nn.MaxPool2d) and pooling == "avg":
            features[i] = torch.nn.AvgPool2d(2, 2)
    return features.eval()


def state_dict(features: torch.nn.Sequential) -> dict[str, np.ndarray]:
    """The `features.*` keys of a torchvision VGG state dict."""
    return {f"features.{k}": v.detach().numpy() for k, v in features.state_dict().items()}


def named_activations(features: torch.nn.Sequential, x: torch.Tensor, *, until: str = "pool5"
                      ) -> dict[str, torch.Tensor]:
    """`{conv1_1, relu1_1, ..., until: NCHW}` of NCHW `x` in [0, 1] (ImageNet-normalised first)."""
    y = (x - MEAN) / STD
    out, stage, conv = {}, 1, 0
    for m in features:
        y = m(y)
        if isinstance(m, torch.nn.Conv2d):
            conv += 1
            out[f"conv{stage}_{conv}"] = y
        elif isinstance(m, torch.nn.ReLU):
            out[f"relu{stage}_{conv}"] = y
        else:
            out[f"pool{stage}"] = y
            stage, conv = stage + 1, 0
        if until in out:
            return out
    return out


def nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)
