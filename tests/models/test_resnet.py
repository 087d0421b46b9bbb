"""ResNet backbone vs torchvision: parameter counts, eval/train parity, output stride, multi-grid."""

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from segjax.models.backbones.resnet import ResNet
from segjax.models.torchvision_import import convert
from tests.models.tv_reference import nchw, randomize_batchnorm, rel_err, resnet_features, set_dilation

NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")


def _n_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _shapes(model, hw=(37, 45), channels=3):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *hw, channels))))


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_parameter_count_equals_torchvision(depth):
    net = getattr(torchvision.models, f"resnet{depth}")()
    expected = sum(p.numel() for k, p in net.named_parameters() if not k.startswith("fc."))
    buffers = sum(b.numel() for k, b in net.named_buffers() if not k.endswith("num_batches_tracked"))
    v = _shapes(ResNet(depth=depth))
    assert _n_params(v["params"]) == expected
    assert _n_params(v["batch_stats"]) == buffers


@pytest.fixture(params=["default", "winograd"])
def conv_path(request, monkeypatch):
    """'winograd' routes every dense stride-1 3x3 conv with >= 16 channels through Winograd
    F(4x4, 3x3) (`segjax.ops.winograd`; the test maps are below its size threshold) and checks
    that it ran; yields the name."""
    from segjax.ops import conv as conv_lib

    calls = []
    if request.param == "winograd":
        monkeypatch.setattr(conv_lib, "WINOGRAD_MIN_FLOPS", 0)
        real = conv_lib.winograd_conv3x3
        monkeypatch.setattr(conv_lib, "winograd_conv3x3",
                            lambda *a: calls.append(a[1].shape) or real(*a))
    yield request.param
    assert bool(calls) == (request.param == "winograd")


@pytest.fixture(scope="module")
def resnet50_os8():
    """A torchvision ResNet-50 at output stride 8 with random BN statistics, and its conversion."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    randomize_batchnorm(net, np.random.default_rng(1))
    return net, convert("resnet50", net.state_dict())


def test_eval_parity_output_stride_8(resnet50_os8, np_rng, conv_path):
    net, variables = resnet50_os8
    x = np_rng.standard_normal((1, 57, 71, 3)).astype(np.float32)
    model = ResNet(depth=50, output_stride=8)
    out = jax.jit(model.apply)(variables, x)
    with torch.no_grad():
        ref = resnet_features(net.eval(), nchw(x))
    for name in NAMES:
        s = model.feature_strides[name]
        assert out[name].shape == (1, math.ceil(57 / s), math.ceil(71 / s), model.feature_channels[name])
        assert rel_err(out[name], ref[name]) <= 1e-4, name


def test_train_mode_updates_batch_stats_like_torch(resnet50_os8, np_rng, conv_path):
    net, variables = resnet50_os8
    x = np_rng.standard_normal((2, 41, 35, 3)).astype(np.float32)
    model = ResNet(depth=50, output_stride=8)
    out, updated = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    net = copy.deepcopy(net).train()  # the module-scoped net stays untouched for other tests
    with torch.no_grad():
        ref = resnet_features(net, nchw(x))
    # Batch statistics over layer4's 2x6x5 positions amplify the Winograd transforms' float32
    # rounding (measured 1.3e-4; eval mode stays within 1e-4).
    assert rel_err(out["layer4"], ref["layer4"]) <= (1e-4 if conv_path == "default" else 3e-4)
    stats = updated["batch_stats"]
    for torch_name, path in [
        ("bn1", ("bn1",)),
        ("layer1.0.downsample.1", ("layer1", "0", "downsample", "1")),
        ("layer3.5.bn2", ("layer3", "5", "bn2")),
        ("layer4.2.bn3", ("layer4", "2", "bn3")),
    ]:
        bn = net.get_submodule(torch_name)
        node = stats
        for p in path:
            node = node[p]
        np.testing.assert_allclose(node["mean"], bn.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(node["var"], bn.running_var.numpy(), rtol=1e-4, atol=1e-5)
        # The update is not a no-op: the statistics moved away from the converted ones.
        old = variables["batch_stats"]
        for p in path:
            old = old[p]
        assert np.abs(node["var"] - old["var"]).max() > 1e-3


def test_multi_grid_parity_output_stride_16(np_rng):
    """multi_grid=(1,2,4) at OS 16 = torch ResNet-50 whose layer4 3x3 convs have dilations 2,4,8."""
    torch.manual_seed(1)
    net = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True])
    randomize_batchnorm(net, np_rng)
    for block, rate in zip(net.layer4, (2, 4, 8)):
        set_dilation(block.conv2, rate)
    model = ResNet(depth=50, output_stride=16, multi_grid=(1, 2, 4))
    assert model.stage_dilations()["layer4"] == (2, 4, 8)
    x = np_rng.standard_normal((1, 45, 39, 3)).astype(np.float32)
    out = jax.jit(model.apply)(convert("resnet50", net.state_dict()), x)
    with torch.no_grad():
        ref = resnet_features(net.eval(), nchw(x))
    assert out["layer4"].shape == (1, 3, 3, 2048)
    assert rel_err(out["layer4"], ref["layer4"]) <= 1e-4


@pytest.fixture(scope="module")
def resnet18_pair():
    torch.manual_seed(2)
    net = torchvision.models.resnet18()
    randomize_batchnorm(net, np.random.default_rng(3))
    return net.eval(), convert("resnet18", net.state_dict())


def test_basic_block_dilation_output_stride_8(resnet18_pair, np_rng):
    """ResNet-18 at OS 8: torch's BasicBlocks with strides removed and dilations set by hand."""
    net, variables = copy.deepcopy(resnet18_pair[0]), resnet18_pair[1]
    model = ResNet(depth=18, output_stride=8)
    for layer, rates in (("layer3", (1, 2)), ("layer4", (2, 4))):
        stage = getattr(net, layer)
        stage[0].conv1.stride = (1, 1)
        stage[0].downsample[0].stride = (1, 1)
        for block, rate in zip(stage, rates):
            set_dilation(block.conv1, rate)
            set_dilation(block.conv2, rate)
        assert model.stage_dilations()[layer] == rates
    x = np_rng.standard_normal((1, 37, 51, 3)).astype(np.float32)
    out = jax.jit(model.apply)(variables, x)
    with torch.no_grad():
        ref = resnet_features(net.eval(), nchw(x))
    for name in NAMES:
        assert rel_err(out[name], ref[name]) <= 1e-4, name


def test_gradients_match_torch(resnet18_pair, np_rng, conv_path):
    """d(sum(layer4 * r))/d(input, conv kernels) in eval mode, ResNet-18 at OS 32."""
    net, variables = resnet18_pair
    x = np_rng.standard_normal((1, 43, 37, 3)).astype(np.float32)
    r = np_rng.standard_normal((1, 2, 2, 512)).astype(np.float32)
    model = ResNet(depth=18)

    def loss(params, x):
        out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
        return jnp.sum(out["layer4"] * r)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
    xt = nchw(x).requires_grad_(True)
    net.zero_grad()
    (torch.from_numpy(r.transpose(0, 3, 1, 2)) * resnet_features_torch(net, xt)).sum().backward()
    assert rel_err(g_x, xt.grad.numpy().transpose(0, 2, 3, 1)) <= 1e-4
    assert rel_err(g_params["conv1"]["kernel"], net.conv1.weight.grad.numpy().transpose(2, 3, 1, 0)) <= 1e-4
    assert rel_err(
        g_params["layer2"]["0"]["downsample"]["0"]["kernel"],
        net.layer2[0].downsample[0].weight.grad.numpy().transpose(2, 3, 1, 0),
    ) <= 1e-4
    assert rel_err(g_params["layer4"]["1"]["bn2"]["scale"], net.layer4[1].bn2.weight.grad.numpy()) <= 1e-4


@pytest.mark.parametrize("frozen", [2, 4])
def test_frozen_stages_as_torch_requires_grad(resnet18_pair, np_rng, frozen):
    """frozen_stages=f: torch with requires_grad=False on the first f of (stem, layer1..4) gives
    the same gradients for every other parameter and none for these (segjax: exact zeros), and
    the features are unchanged. The loss reads every stage, frozen ones included (the FPN does)."""
    net, variables = copy.deepcopy(resnet18_pair[0]), resnet18_pair[1]
    x = np_rng.standard_normal((1, 40, 36, 3)).astype(np.float32)
    shapes = jax.eval_shape(ResNet(depth=18).apply, variables, x)
    weights = {k: np_rng.standard_normal(v.shape).astype(np.float32) for k, v in shapes.items()}

    def loss(params, model):
        out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
        return sum(jnp.sum(out[k] * weights[k]) for k in NAMES)

    grads = jax.grad(loss)(variables["params"], ResNet(depth=18, frozen_stages=frozen))
    torch_stages = [("conv1", "bn1")] + [(f"layer{k}",) for k in range(1, 5)]
    for names in torch_stages[:frozen]:
        for name in names:
            getattr(net, name).requires_grad_(False)
    net.zero_grad()
    y = {}
    h = net.maxpool(net.relu(net.bn1(net.conv1(nchw(x)))))
    y["stem"] = h
    for k in range(1, 5):
        h = getattr(net, f"layer{k}")(h)
        y[f"layer{k}"] = h
    sum((torch.from_numpy(weights[k].transpose(0, 3, 1, 2)) * y[k]).sum() for k in NAMES).backward()
    frozen_names = {n for names in torch_stages[:frozen] for n in names}
    for name, p in net.named_parameters():
        top = name.split(".")[0]
        if top == "fc":
            continue
        path = name.split(".")[:-1]
        leaf = {"weight": "kernel" if p.ndim == 4 else "scale", "bias": "bias"}[name.split(".")[-1]]
        g = grads
        for part in path:
            g = g[part]
        g = np.asarray(g[leaf])
        if top in frozen_names:
            assert p.grad is None and not g.any(), name
        else:
            ref = p.grad.numpy().transpose(2, 3, 1, 0) if p.ndim == 4 else p.grad.numpy()
            assert rel_err(g, ref) <= 1e-4, name
    with pytest.raises(ValueError, match="frozen_stages"):
        ResNet(depth=18, frozen_stages=6).apply(variables, x)


def resnet_features_torch(net, x):
    y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(y))))


def test_output_stride_changes_no_parameter():
    trees = [_shapes(ResNet(depth=50, output_stride=os)) for os in (8, 16, 32)]
    for t in trees[1:]:
        assert jax.tree.structure(t) == jax.tree.structure(trees[0])
        assert jax.tree.map(lambda a: a.shape, t) == jax.tree.map(lambda a: a.shape, trees[0])


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_sizes_follow_strides_on_odd_input(output_stride):
    model = ResNet(depth=18, width=8, output_stride=output_stride)
    feats = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 53, 67, 3)))[0])
    expected = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": min(16, output_stride), "layer4": output_stride}
    assert model.feature_strides == expected
    for name, s in expected.items():
        assert feats[name].shape == (2, math.ceil(53 / s), math.ceil(67 / s), model.feature_channels[name])
    assert model.feature_channels == {"stem": 8, "layer1": 8, "layer2": 16, "layer3": 32, "layer4": 64}


def test_stage_dilations_worked_examples():
    # torchvision: the first block of a dilated stage keeps the previous dilation.
    assert ResNet(depth=50, output_stride=16).stage_dilations() == {
        "layer1": (1, 1, 1), "layer2": (1, 1, 1, 1), "layer3": (1,) * 6, "layer4": (1, 2, 2)}
    assert ResNet(depth=50, output_stride=8).stage_dilations()["layer4"] == (2, 4, 4)
    # DeepLab v3 multi-grid: unit rates times the stage rate, first block included.
    assert ResNet(depth=50, output_stride=8, multi_grid=(1, 2, 4)).stage_dilations()["layer4"] == (4, 8, 16)
    assert ResNet(depth=50, output_stride=32, multi_grid=(1, 2, 1)).stage_dilations()["layer4"] == (1, 2, 1)
    assert ResNet(depth=18, output_stride=16, multi_grid=(1, 2)).stage_dilations()["layer4"] == (2, 4)


def test_bfloat16_forward_close_to_float32(resnet18_pair, np_rng):
    _, variables = resnet18_pair
    x = np_rng.standard_normal((1, 45, 53, 3)).astype(np.float32)
    f32 = jax.jit(ResNet(depth=18, output_stride=16).apply)(variables, x)["layer4"]
    bf16 = jax.jit(ResNet(depth=18, output_stride=16, dtype=jnp.bfloat16).apply)(variables, x)["layer4"]
    assert bf16.dtype == jnp.bfloat16
    err = rel_err(np.asarray(bf16, np.float32), f32)
    assert 0 < err <= 5e-2  # bf16 has ~3 significant digits; exactly 0 would mean f32 compute
    np.testing.assert_allclose(np.asarray(bf16, np.float32).mean(), np.asarray(f32).mean(), rtol=2e-2)


@pytest.mark.parametrize(
    "kwargs, shape, match",
    [
        ({"depth": 20}, (1, 33, 33, 3), "depth=20"),
        ({"output_stride": 4}, (1, 33, 33, 3), "output_stride=4"),
        ({"multi_grid": (1, 2, 4)}, (1, 33, 33, 3), "multi_grid"),
        ({"width": 0}, (1, 33, 33, 3), "width"),
        ({}, (1, 33, 33, 4), r"\(1, 33, 33, 4\)"),
        ({}, (33, 33, 3), r"\(33, 33, 3\)"),
        ({"in_channels": 1}, (1, 33, 33, 3), r"\[N, H, W, 1\]"),
    ],
)
def test_bad_configuration_or_input_raises(kwargs, shape, match):
    model = ResNet(**{"depth": 18, "width": 8, **kwargs})
    with pytest.raises(ValueError, match=match):
        model.init(jax.random.key(0), jnp.zeros(shape))
