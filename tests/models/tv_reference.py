"""Helpers for comparing segjax models with torchvision references (test-only, imports torch)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn as tnn


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


def random_variables(model, input_shape, rng: np.random.Generator) -> dict:
    """Random {"params", "batch_stats"} for `model` without compiling its init (fast on CPU).

    Kernels ~ N(0, 2 / fan_in) (He), biases and BN shifts ~ N(0, 0.1), BN scales ~ U(0.5, 1.5),
    running means ~ N(0, 0.1), running variances ~ U(0.5, 2): non-trivial everywhere.
    """
    import flax
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32)))
    out = {}
    for col in ("params", "batch_stats"):
        flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes.get(col, {})))
        filled = {}
        for path, leaf in flat.items():
            shape, name = leaf.shape, path[-1]
            if name == "kernel":
                v = rng.normal(0.0, np.sqrt(2.0 / max(1, np.prod(shape[:-1]))), shape)
            elif name == "scale":
                v = rng.uniform(0.5, 1.5, shape)
            elif name == "var":
                v = rng.uniform(0.5, 2.0, shape)
            else:  # bias, mean
                v = rng.normal(0.0, 0.1, shape)
            filled[path] = v.astype(np.float32)
        out[col] = flax.traverse_util.unflatten_dict(filled)
    return out


class TorchPSPHead(tnn.Module):
    """Reference PSP head (as the authors' PyTorch PPM): adaptive pools, 1x1 conv-BN-ReLU, align_corners=True."""

    def __init__(self, in_ch, num_classes, bins=(1, 2, 3, 6), ch=8):
        super().__init__()
        red = in_ch // len(bins)
        self.bins = bins
        self.stages = tnn.ModuleList(
            tnn.Sequential(tnn.Conv2d(in_ch, red, 1, bias=False), tnn.BatchNorm2d(red), tnn.ReLU()) for _ in bins)
        self.bottleneck = tnn.Sequential(tnn.Conv2d(2 * in_ch, ch, 3, padding=1, bias=False), tnn.BatchNorm2d(ch),
                                         tnn.ReLU(), tnn.Dropout(0.1))
        self.cls = tnn.Conv2d(ch, num_classes, 1)

    def forward(self, x):
        maps = [x] + [
            F.interpolate(stage(F.adaptive_avg_pool2d(x, b)), x.shape[-2:], mode="bilinear", align_corners=True)
            for b, stage in zip(self.bins, self.stages)
        ]
        return self.cls(self.bottleneck(torch.cat(maps, 1)))


PSP_TABLE = {**{f"stages.{i}.0": f"pool_{i}/conv" for i in range(4)},
             **{f"stages.{i}.1": f"pool_{i}/bn" for i in range(4)},
             "bottleneck.0": "bottleneck/conv", "bottleneck.1": "bottleneck/bn", "cls": "cls"}


def prefix_map(table):
    """A path map from a {torch prefix: segjax path} table (longest prefix wins)."""

    def path_map(parts):
        for n in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:n])
            if prefix in table:
                return [*table[prefix].split("/"), *parts[n:]]
        return None

    return path_map


def check_sync_batchnorm(model, x: np.ndarray, rng: np.random.Generator, devices: int = 4) -> None:
    """Asserts that every BatchNorm of `model` syncs over `axis_name` in a pmapped train step.

    Each of `devices` devices gets one slice of `x`. Every running statistic must come out the
    same on all devices (a BN without the axis name keeps its own device's statistics), and the
    backbone's must equal those of one un-mapped step on all of `x` (heads are excluded from that
    comparison only because their dropout masks differ between the two layouts).
    """
    import jax

    variables = random_variables(model, x.shape, rng)
    whole = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.key(0)})[1])(variables, x)
    synced = model.clone(axis_name="batch")
    step = jax.pmap(lambda v, x: synced.apply(v, x, train=True, mutable=["batch_stats"],
                                              rngs={"dropout": jax.random.key(0)})[1],
                    axis_name="batch", in_axes=(None, 0))
    per_device = step(variables, x.reshape(devices, x.shape[0] // devices, *x.shape[1:]))
    leaves = jax.tree_util.tree_leaves_with_path(whole["batch_stats"])
    assert len(leaves) > 0
    for (path, expected), got in zip(leaves, jax.tree.leaves(per_device["batch_stats"])):
        name = jax.tree_util.keystr(path)
        for d in range(1, devices):
            np.testing.assert_allclose(got[d], got[0], rtol=1e-5, atol=1e-6, err_msg=f"{name} on device {d}")
        if name.startswith("['backbone']"):
            np.testing.assert_allclose(got[0], expected, rtol=2e-4, atol=1e-5, err_msg=name)
