"""Helpers for comparing segjax models with torchvision references (test-only, imports torch)."""

from __future__ import annotations

import numpy as np
import torch


def randomize_batchnorm(module: torch.nn.Module, rng: np.random.Generator) -> torch.nn.Module:
    """Gives every BatchNorm2d non-trivial weight, bias and running statistics (in place)."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
                m.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.2, c).astype(np.float32)))
                m.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.2, c).astype(np.float32)))
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c).astype(np.float32)))
    return module


def nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC numpy -> NCHW torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    """NCHW torch tensor -> NHWC numpy."""
    return t.detach().numpy().transpose(0, 2, 3, 1)


def resnet_features(net, x: torch.Tensor) -> dict[str, np.ndarray]:
    """torchvision ResNet feature maps named like segjax's ResNet output (NHWC numpy)."""
    y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = {"stem": nhwc(y)}
    for k in ("layer1", "layer2", "layer3", "layer4"):
        y = getattr(net, k)(y)
        out[k] = nhwc(y)
    return out


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def set_dilation(conv: torch.nn.Conv2d, dilation: int, stride: int | None = None) -> None:
    """Changes a 3x3 conv's dilation (padding = dilation, torch-style) and optionally its stride."""
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)
    if stride is not None:
        conv.stride = (stride, stride)
