"""ICNet against a torch transcription of the paper written here (a narrow ResNet-18 of
torchvision's BasicBlocks dilated by hand, the PSP pyramid pooling of tests/models/tv_reference.py, the cascade and CFF units of Fig. 2
and 3 with the classifier applied after the x2 upsampling, as the paper orders it), the torch
weights copied into segjax: logits, guidance logits and the gradients of every parameter and of
the input, on an odd-sized input. (Train-mode BatchNorm is the shared layer, whose values,
gradients and statistics tests/models/test_norm.py compares with torch's.)"""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn
from torchvision.models.resnet import BasicBlock

from segjax.models import AUX_LOGITS, LOGITS, create_model
from segjax.models.backbones.resnet import ResNet
from segjax.models.torchvision_import import convert_state_dict
from segjax.tasks.base import StepContext
from segjax.tasks.semantic import SemanticTask
from tests.models.tv_reference import (
    PSP_TABLE, TorchPSPHead, nchw, nhwc, prefix_map, randomize_batchnorm, rel_err, set_dilation)

NC, WIDTH, HEAD, FUSION, BRANCH = 3, 8, 16, 8, (4, 4, 8)
TINY = dict(backbone_width=WIDTH, head_channels=HEAD, fusion_channels=FUSION, branch_channels=BRANCH)
H, W = 69, 99  # 1/8: 9 x 13, 1/16: 5 x 7, 1/32: 3 x 4 (uneven 3- and 6-bins)


def _up(x, size):
    return F.interpolate(x, size, mode="bilinear", align_corners=False)


def _half(x):
    return [math.ceil(s / 2) for s in x.shape[-2:]]


def _conv_bn(c_in, c_out, k, stride=1, dilation=1):
    pad = dilation * (k - 1) // 2
    return tnn.Sequential(tnn.Conv2d(c_in, c_out, k, stride, pad, dilation, bias=False), tnn.BatchNorm2d(c_out))


class TorchCFF(tnn.Module):
    """Fig. 3: F1 upsampled x2 -> 3x3 conv dilation 2 -> BN; F2 -> 1x1 conv -> BN; sum -> ReLU;
    the label-guidance classifier on the upsampled F1."""

    def __init__(self, c_low, c_high):
        super().__init__()
        self.low = _conv_bn(c_low, FUSION, 3, dilation=2)
        self.high = _conv_bn(c_high, FUSION, 1)
        self.cls = tnn.Conv2d(c_low, NC, 1)

    def forward(self, low, high):
        up = _up(low, high.shape[-2:])
        return F.relu(self.low(up) + self.high(high)), self.cls(up)


def _torch_resnet18(width):
    """torchvision's ResNet-18 layout (its `BasicBlock`, its state-dict names) at stem width
    `width`, with layer3 and layer4 dilated by hand (2 and 4; output stride 8)."""
    net = tnn.Module()
    net.conv1 = tnn.Conv2d(3, width, 7, 2, 3, bias=False)
    net.bn1, net.relu, net.maxpool = tnn.BatchNorm2d(width), tnn.ReLU(), tnn.MaxPool2d(3, 2, 1)
    in_ch = width
    for k, rates in enumerate(((1, 1), (1, 1), (1, 2), (2, 4))):
        planes, stride = width * 2**k, 2 if k == 1 else 1
        down = None if (stride, in_ch) == (1, planes) else _conv_bn(in_ch, planes, 1, stride=stride)
        blocks = [BasicBlock(in_ch, planes, stride, down), BasicBlock(planes, planes)]
        for block, rate in zip(blocks, rates):
            set_dilation(block.conv1, rate)
            set_dilation(block.conv2, rate)
        setattr(net, f"layer{k + 1}", tnn.Sequential(*blocks))
        in_ch = planes
    return net


class TorchICNet(tnn.Module):
    """Fig. 2: the 1/2 image through the shared stem..layer2, its map halved through the dilated
    layer3, layer4 and the pyramid pooling module; the full image through three stride-2
    conv-BN-ReLU; CFF(1/32, 1/16), CFF(1/16, 1/8); x2, classifier, resize to the input (x4 when
    8 divides H and W; H, W here are odd)."""

    def __init__(self):
        super().__init__()
        self.backbone = _torch_resnet18(WIDTH)
        self.ppm = TorchPSPHead(8 * WIDTH, NC, ch=HEAD)
        del self.ppm.cls
        self.ppm.bottleneck = self.ppm.bottleneck[:3]  # conv, BN, ReLU: the features, no dropout
        chans = (3, *BRANCH)
        self.sub1 = tnn.Sequential(*(tnn.Sequential(*_conv_bn(chans[i], chans[i + 1], 3, stride=2), tnn.ReLU())
                                     for i in range(3)))
        self.cff_sub24 = TorchCFF(HEAD, 2 * WIDTH)
        self.cff_sub12 = TorchCFF(FUSION, BRANCH[-1])
        self.cls = tnn.Conv2d(FUSION, NC, 1)

    def forward(self, x):
        b = self.backbone
        half = _up(x, _half(x))
        sub2 = b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(half))))))
        y = b.layer4(b.layer3(_up(sub2, _half(sub2))))
        pooled = [F.interpolate(stage(F.adaptive_avg_pool2d(y, n)), y.shape[-2:], mode="bilinear", align_corners=True)
                  for n, stage in zip(self.ppm.bins, self.ppm.stages)]
        sub4 = self.ppm.bottleneck(torch.cat([y, *pooled], 1))
        sub24, guide16 = self.cff_sub24(sub4, sub2)
        sub12, guide8 = self.cff_sub12(sub24, self.sub1(x))
        quarter = self.cls(_up(sub12, [2 * s for s in sub12.shape[-2:]]))
        size = x.shape[-2:]
        return _up(quarter, size), _up(guide16, size), _up(guide8, size)


def _path_map(parts):
    top, rest = parts[0], parts[1:]
    bn_or_conv = {"0": "conv", "1": "bn"}
    if top in ("backbone", "cls"):
        return parts
    if top == "ppm":
        sub = prefix_map(PSP_TABLE)(rest)
        return None if sub is None else ["ppm", *sub]
    if top == "sub1":
        return [f"sub1_{rest[0]}", bn_or_conv[rest[1]], *rest[2:]]
    if rest[0] == "cls":  # cff_*.cls
        return parts
    return [top, rest[0], bn_or_conv[rest[1]], *rest[2:]]


def _torch_grads_as_segjax(ref, params_shapes):
    grads = {k: p.grad for k, p in ref.named_parameters()}
    return convert_state_dict(grads, {"params": params_shapes}, _path_map)["params"]


@pytest.fixture(scope="module")
def icnet_case():
    """The torch reference with random weights and BN statistics, its conversion, and one jitted
    segjax forward + backward: the outputs and d(sum(outputs * cotangents)) with respect to every
    parameter and the input."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2018)
    ref = randomize_batchnorm(TorchICNet(), rng).eval()
    model = create_model("icnet_resnet18", num_classes=NC, **TINY)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, H, W, 3))))
    variables = convert_state_dict(ref.state_dict(), shapes, _path_map)
    x = rng.standard_normal((2, H, W, 3)).astype(np.float32)
    cots = tuple(rng.standard_normal((2, H, W, NC)).astype(np.float32) for _ in range(3))

    def run(variables, x, cots):
        def outputs(params, x):
            out = model.apply({**variables, "params": params}, x)
            return out[LOGITS], *out[AUX_LOGITS]

        maps, vjp = jax.vjp(outputs, variables["params"], x)
        return maps, *vjp(cots)

    # lax's convolution (segjax's CPU default is checked against it in tests/ops) and XLA at
    # optimisation level 0 compile this several times faster; the inputs run in milliseconds.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGJAX_CONV_IMPL", "lax")
        compiled = jax.jit(run).lower(variables, x, cots).compile(
            compiler_options={"xla_backend_optimization_level": 0})
    return ref, shapes, x, cots, compiled(variables, x, cots)


def test_logits_guidance_logits_and_all_gradients_match_torch(icnet_case):
    ref, shapes, x, cots, (maps, g_params, g_x) = icnet_case
    ref.zero_grad()
    xt = nchw(x).requires_grad_(True)
    want = ref(xt)
    for got, expected in zip(maps, want):
        assert got.shape == (2, H, W, NC) and got.dtype == jnp.float32
        assert rel_err(got, nhwc(expected.detach())) <= 1e-4
    torch.autograd.backward(list(want), [nchw(c) for c in cots])
    assert rel_err(g_x, nhwc(xt.grad)) <= 1e-4
    want_grads = flax.traverse_util.flatten_dict(_torch_grads_as_segjax(ref, shapes["params"]))
    got_grads = flax.traverse_util.flatten_dict(flax.core.unfreeze(g_params))
    assert got_grads.keys() == want_grads.keys()
    errors = {"/".join(k): rel_err(got_grads[k], want_grads[k]) for k in want_grads}
    assert max(errors.values()) <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:5]


def test_semantic_loss_weights_each_guidance_head(np_rng):
    """A tuple of aux maps: CE(main) + 0.4 CE(aux_16) + 0.4 CE(aux_8) (paper Eq. 2), torch's CE."""
    labels = np_rng.integers(0, NC, (2, 5, 7)).astype(np.int32)
    labels[0, :2] = 255
    maps = [np_rng.normal(size=(2, 5, 7, NC)).astype(np.float32) for _ in range(3)]
    task = SemanticTask(num_classes=NC, ignore_label=255, aux_weight=0.4)
    total, count = task.loss({LOGITS: maps[0], AUX_LOGITS: (maps[1], maps[2])}, {"label": labels},
                             StepContext(rng=jax.random.key(0)))
    ce = [float(F.cross_entropy(nchw(m), torch.from_numpy(labels).long(), ignore_index=255)) for m in maps]
    np.testing.assert_allclose(float(total) / float(count), ce[0] + 0.4 * (ce[1] + ce[2]), rtol=1e-5)


def test_defaults_build_at_cityscapes_size(monkeypatch):
    """The paper's widths (eval_shape only) at 1024 x 2048; without `aux_loss` no guidance heads."""
    monkeypatch.setenv("SEGJAX_CONV_IMPL", "lax")  # shapes only: lax's conv traces 4x faster
    assert create_model("icnet_resnet50", num_classes=19).backbone_depth == 50
    model = create_model("icnet_resnet18", num_classes=19)
    assert (model.head_channels, model.fusion_channels, tuple(model.branch_channels)) == (256, 128, (32, 32, 64))
    out = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.zeros((1, 1024, 2048, 3)))[0]
    assert out[LOGITS].shape == (1, 1024, 2048, 19) and [a.shape for a in out[AUX_LOGITS]] == [(1, 1024, 2048, 19)] * 2
    no_aux = create_model("icnet_resnet18", num_classes=NC, aux_loss=False, **TINY)
    variables = jax.eval_shape(no_aux.init, jax.random.key(0), jnp.zeros((1, 33, 35, 3)))
    out = jax.eval_shape(no_aux.apply, variables, jnp.zeros((1, 33, 35, 3)))
    assert set(out) == {LOGITS} and "cls" not in variables["params"]["cff_sub12"]


def test_bad_arguments_raise():
    for kwargs, match in (({"branch_channels": (32, 64)}, "branch_channels"), ({"fusion_channels": 0}, "fusion_channels"),
                          ({"head_channels": -1}, "head_channels"), ({"bins": (1, 0)}, "bins"),
                          ({"backbone_width": 0}, "width")):
        with pytest.raises(ValueError, match=match):
            create_model("icnet_resnet18", num_classes=NC, **kwargs)
    def resnet_part(**kwargs):
        return jax.eval_shape(lambda x: ResNet(depth=18, width=8).init(jax.random.key(0), x, **kwargs),
                              jnp.zeros((1, 9, 9, 3)))

    with pytest.raises(ValueError, match="stop='layer1'"):
        resnet_part(start="layer2", stop="layer1")
    with pytest.raises(ValueError, match=r"layer3 expects \[N, h, w, 16\]"):
        resnet_part(start="layer3")
