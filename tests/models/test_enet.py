"""ENet against a torch transcription of the paper's Table 1 written here (same weights), and its
parameter count against the paper's 0.37 M."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segjax.models import create_model
from segjax.models.enet import LAYOUT

K = 5


class TorchBottleneck(nn.Module):
    def __init__(self, kind, cin, cout, dilation):
        super().__init__()
        inner, self.kind, self.pad = cout // 4, kind, cout - cin
        self.reduce = nn.Conv2d(cin, inner, 2, stride=2, bias=False) if kind == "down" else nn.Conv2d(
            cin, inner, 1, bias=False)
        self.reduce_bn, self.reduce_prelu = nn.BatchNorm2d(inner), nn.PReLU(inner)
        if kind == "up":
            self.conv = nn.ConvTranspose2d(inner, inner, 3, stride=2, padding=1, output_padding=1, bias=False)
        elif kind == "asym":
            self.conv = nn.Conv2d(inner, inner, (5, 1), padding=(2, 0), bias=False)
            self.conv_bn_a, self.conv_prelu_a = nn.BatchNorm2d(inner), nn.PReLU(inner)
            self.conv_b = nn.Conv2d(inner, inner, (1, 5), padding=(0, 2), bias=False)
        else:
            self.conv = nn.Conv2d(inner, inner, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv_bn, self.conv_prelu = nn.BatchNorm2d(inner), nn.PReLU(inner)
        self.expand, self.expand_bn = nn.Conv2d(inner, cout, 1, bias=False), nn.BatchNorm2d(cout)
        if kind == "up":
            self.shortcut, self.shortcut_bn = nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.out_prelu = nn.PReLU(cout)

    def forward(self, x, indices=None, size=None):
        y = self.reduce_prelu(self.reduce_bn(self.reduce(x)))
        y = self.conv(y)
        if self.kind == "asym":
            y = self.conv_b(self.conv_prelu_a(self.conv_bn_a(y)))
        y = self.expand_bn(self.expand(self.conv_prelu(self.conv_bn(y))))
        new = None
        if self.kind == "down":
            s, new = F.max_pool2d(x, 2, 2, return_indices=True)
            s = F.pad(s, (0, 0, 0, 0, 0, self.pad))
        elif self.kind == "up":
            s = F.max_unpool2d(self.shortcut_bn(self.shortcut(x)), indices, 2, output_size=size)
        else:
            s = x
        return self.out_prelu(y + s), new


class TorchENet(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.initial_conv, self.initial_bn, self.initial_prelu = nn.Conv2d(3, 13, 3, 2, 1, bias=False), \
            nn.BatchNorm2d(16), nn.PReLU(16)
        cin = 16
        for name, kind, cout, d in LAYOUT:
            setattr(self, name, TorchBottleneck(kind, cin, cout, d))
            cin = cout
        self.fullconv = nn.ConvTranspose2d(16, k, 2, stride=2)

    def forward(self, x):
        x = self.initial_prelu(self.initial_bn(torch.cat([self.initial_conv(x), F.max_pool2d(x, 2, 2)], 1)))
        saved = []
        for name, kind, _, _ in LAYOUT:
            if kind == "up":
                idx, size = saved.pop()
                x, _ = getattr(self, name)(x, idx, size)
            else:
                size = x.shape[2:]
                x, idx = getattr(self, name)(x)
                if kind == "down":
                    saved.append((idx, size))
        return self.fullconv(x)


def _copy(variables, net):
    """Each torch tensor from the flax leaf of the same name (kernels HWIO -> OIHW)."""
    params, stats = variables["params"], variables["batch_stats"]
    for key, tensor in list(net.state_dict().items()):
        *path, leaf = key.split(".")
        if path[-1:] == ["fullconv"] or (leaf == "weight" and path[-1] == "conv" and getattr(net, path[0]).kind == "up"):
            value = np.asarray(params[path[0]] if path == ["fullconv"] else params[path[0]][path[1]])
            value = value.transpose(3, 2, 0, 1) if leaf == "weight" else np.asarray(params["fullconv_bias"])
        else:
            node = params
            for p in path:
                node = node[p]
            module = net.get_submodule(".".join(path))
            if isinstance(module, nn.BatchNorm2d):
                snode = stats
                for p in path:
                    snode = snode[p]
                value = {"weight": node.get("scale"), "bias": node.get("bias"), "running_mean": snode["mean"],
                         "running_var": snode["var"], "num_batches_tracked": np.asarray(0)}[leaf]
            elif isinstance(module, nn.PReLU):
                value = node["slope"]
            else:
                value = np.asarray(node["kernel"]).transpose(3, 2, 0, 1)
        assert tuple(tensor.shape) == np.shape(value), key
        tensor.copy_(torch.tensor(np.asarray(value)))


@pytest.fixture(scope="module")
def enet():
    model = create_model("enet", num_classes=K)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 37, 45, 3)), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)  # traced, not compiled
    rng = np.random.default_rng(5)

    def fill(path, a):  # He-scaled kernels, PReLU slopes near 0.25, trained-looking BatchNorm
        name = jax.tree_util.keystr(path[-1:])
        if "var" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32)
        if "slope" in name:
            return jnp.asarray(rng.uniform(0.1, 0.4, a.shape), jnp.float32)
        if len(a.shape) == 4:
            return jnp.asarray(rng.normal(0, np.sqrt(2 / np.prod(a.shape[:3])), a.shape), jnp.float32)
        scale = "scale" in name
        return jnp.asarray(rng.normal(1.0 if scale else 0.0, 0.1, a.shape), jnp.float32)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    return model, variables, x


def test_parameters_are_the_papers_and_the_transcriptions(enet):
    model, variables, _ = enet
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
    assert count == sum(p.numel() for p in TorchENet(K).parameters())
    assert abs(create_count := sum(int(np.prod(a.shape)) for a in jax.tree.leaves(
        jax.eval_shape(create_model("enet", num_classes=12).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))[
            "params"])) - 0.37e6) < 0.015e6, create_count  # the paper: 0.37 M (CamVid, 12 classes)


def test_eval_logits_and_input_gradient_equal_torch(enet, np_rng):
    model, variables, x = enet
    net = TorchENet(K).eval()
    with torch.no_grad():
        _copy(variables, net)
    # The transcription runs on the input padded to a multiple of 8, as ENet pads it.
    padded = np.pad(np.asarray(x), ((0, 0), (0, 3), (0, 3), (0, 0)))
    t = torch.tensor(padded.transpose(0, 3, 1, 2), requires_grad=True)
    want = net(t)[:, :, :37, :45]
    cot = np_rng.normal(size=(2, 37, 45, K)).astype(np.float32)
    (want * torch.tensor(cot.transpose(0, 3, 1, 2))).sum().backward()
    def loss(x):
        logits = model.apply(variables, x)["logits"]
        return jnp.sum(logits * cot), logits

    grad, got = jax.jit(jax.grad(loss, has_aux=True))(x)  # one compile for both
    want = want.detach().numpy().transpose(0, 2, 3, 1)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
    want_grad = t.grad.numpy().transpose(0, 2, 3, 1)[:, :37, :45]
    assert np.linalg.norm(grad - want_grad) / np.linalg.norm(want_grad) < 1e-4
