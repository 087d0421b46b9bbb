"""Heads vs torch references: adaptive pooling, FCNHead, ASPP/DeepLabHead, v2 ASPP, v3+ decoder, PSP."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchASPP
from torchvision.models.segmentation.deeplabv3 import DeepLabHead as TorchDeepLabHead
from torchvision.models.segmentation.fcn import FCNHead as TorchFCNHead

from segjax.models import heads
from segjax.models.torchvision_import import convert_state_dict, map_deeplab_head, map_fcn_head
from tests.models.tv_reference import PSP_TABLE, TorchPSPHead, nchw, nhwc, prefix_map, randomize_batchnorm, rel_err


def _init_shapes(module, *inputs):
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))


# ---------------------------------------------------------------- adaptive average pooling


def test_adaptive_pool_matrix_worked_example():
    # 7 -> 3: bins [0, 3), [2, 5), [4, 7) (overlapping, as torch)
    m = heads.adaptive_pool_matrix(7, 3)
    expected = np.zeros((3, 7))
    expected[0, 0:3] = expected[1, 2:5] = expected[2, 4:7] = 1 / 3
    np.testing.assert_allclose(m, expected)
    # 5 -> 2: [0, 3) and [2, 5)
    np.testing.assert_allclose(heads.adaptive_pool_matrix(5, 2)[1], [0, 0, 1 / 3, 1 / 3, 1 / 3])


@pytest.mark.parametrize("hw, size", [((13, 11), 6), ((7, 9), 3), ((5, 8), (2, 3)), ((3, 4), 6), ((9, 9), 1)])
def test_adaptive_avg_pool_matches_torch_forward_and_gradient(np_rng, hw, size):
    x = np_rng.standard_normal((2, *hw, 3)).astype(np.float32)
    out = heads.adaptive_avg_pool(x, size)
    xt = nchw(x).requires_grad_(True)
    ref = F.adaptive_avg_pool2d(xt, size)
    np.testing.assert_allclose(out, nhwc(ref), rtol=1e-5, atol=1e-6)
    r = np_rng.standard_normal(out.shape).astype(np.float32)
    g = jax.grad(lambda x: jnp.sum(heads.adaptive_avg_pool(x, size) * r))(x)
    (ref * nchw(r)).sum().backward()
    np.testing.assert_allclose(g, nhwc(xt.grad), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- FCNHead


def test_fcn_head_matches_torchvision(np_rng):
    torch.manual_seed(0)
    ref = randomize_batchnorm(TorchFCNHead(32, 5), np_rng).eval()
    x = np_rng.standard_normal((2, 9, 7, 32)).astype(np.float32)
    head = heads.FCNHead(5)
    variables = convert_state_dict(ref.state_dict(), _init_shapes(head, x), map_fcn_head)
    with torch.no_grad():
        expected = nhwc(ref(nchw(x)))
    out = jax.jit(head.apply)(variables, x)
    assert out.dtype == jnp.float32 and out.shape == (2, 9, 7, 5)
    assert rel_err(out, expected) <= 1e-5
    # train mode without dropout: batch statistics normalise, running statistics move like torch's
    ref.train()[3].p = 0.0
    with torch.no_grad():
        expected_train = nhwc(ref(nchw(x)))
    no_drop = heads.FCNHead(5, dropout_rate=0.0)
    out_t, upd = jax.jit(lambda v, x: no_drop.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert rel_err(out_t, expected_train) <= 1e-5
    np.testing.assert_allclose(upd["batch_stats"]["bn"]["var"], ref[1].running_var.numpy(), rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["bn"]["mean"], ref[1].running_mean.numpy(), rtol=1e-5, atol=1e-6)
    # with dropout (the "dropout" rng) two keys give different outputs
    drop = jax.jit(lambda v, x, k: head.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k})[0])
    assert not np.allclose(drop(variables, x, jax.random.key(1)), drop(variables, x, jax.random.key(2)))


# ---------------------------------------------------------------- DeepLab v3 head (ASPP)


@pytest.fixture(scope="module")
def deeplab_head_pair():
    torch.manual_seed(1)
    ref = randomize_batchnorm(TorchDeepLabHead(24, 4, atrous_rates=(2, 3, 7)), np.random.default_rng(0))
    head = heads.DeepLabV3Head(4, atrous_rates=(2, 3, 7))
    x = np.zeros((2, 11, 9, 24), np.float32)
    variables = convert_state_dict(ref.state_dict(), _init_shapes(head, x), lambda p: map_deeplab_head(p, 3))
    return ref, head, variables


def test_deeplab_v3_head_matches_torchvision_on_odd_map(deeplab_head_pair, np_rng):
    ref, head, variables = deeplab_head_pair
    x = np_rng.standard_normal((2, 11, 9, 24)).astype(np.float32)
    with torch.no_grad():
        expected = nhwc(ref.eval()(nchw(x)))
    assert rel_err(jax.jit(head.apply)(variables, x), expected) <= 1e-5


def test_deeplab_v3_head_gradient_matches_torchvision(deeplab_head_pair, np_rng):
    ref, head, variables = deeplab_head_pair
    x = np_rng.standard_normal((1, 7, 10, 24)).astype(np.float32)
    r = np_rng.standard_normal((1, 7, 10, 4)).astype(np.float32)
    g = jax.jit(jax.grad(lambda p, x: jnp.sum(head.apply({**variables, "params": p}, x) * r), argnums=(0, 1)))(
        variables["params"], x)
    xt = nchw(x).requires_grad_(True)
    ref.eval().zero_grad()
    (ref(xt) * nchw(r)).sum().backward()
    assert rel_err(g[1], nhwc(xt.grad)) <= 1e-5
    pool_conv = ref[0].convs[4][1].weight.grad.numpy().transpose(2, 3, 1, 0)  # image-pooling branch
    assert rel_err(g[0]["aspp"]["pooling"]["conv"]["kernel"], pool_conv) <= 1e-5
    atrous = ref[0].convs[3][0].weight.grad.numpy().transpose(2, 3, 1, 0)  # rate 7 > map height
    assert rel_err(g[0]["aspp"]["atrous_2"]["conv"]["kernel"], atrous) <= 1e-5


def test_aspp_train_mode_batch_stats_match_torchvision(deeplab_head_pair, np_rng):
    ref, head, variables = deeplab_head_pair
    ref = copy.deepcopy(ref)  # train mode moves its statistics; keep the shared one intact
    x = np_rng.standard_normal((3, 11, 9, 24)).astype(np.float32)
    _, upd = jax.jit(lambda v, x: head.apply(v, x, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.key(0)}))(variables, x)
    with torch.no_grad():
        ref.train()(nchw(x))
    stats = upd["batch_stats"]
    for got, bn in [
        (stats["aspp"]["pooling"]["bn"], ref[0].convs[4][2]),  # BN over N = 3 pooled vectors
        (stats["aspp"]["atrous_1"]["bn"], ref[0].convs[2][1]),
        (stats["aspp"]["project"]["bn"], ref[0].project[1]),
    ]:  # (the BN after the projection's Dropout sees different random masks in torch and JAX)
        np.testing.assert_allclose(got["mean"], bn.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["var"], bn.running_var.numpy(), rtol=1e-4, atol=1e-5)


def test_aspp_without_image_pooling_matches_torch(np_rng):
    """image_pooling=False = torchvision's ASPP with the pooling branch removed (4 branches)."""
    torch.manual_seed(2)
    ref = randomize_batchnorm(TorchASPP(16, [2, 5], out_channels=8), np_rng)
    ref.convs = ref.convs[:3]
    ref.project[0] = tnn.Conv2d(3 * 8, 8, 1, bias=False)
    ref.eval()
    aspp = heads.ASPP((2, 5), channels=8, image_pooling=False)
    x = np_rng.standard_normal((1, 9, 13, 16)).astype(np.float32)
    table = {"convs.0": "conv1x1", "convs.1": "atrous_0", "convs.2": "atrous_1", "project": "project"}
    bn_or_conv = {"0": "conv", "1": "bn"}

    def path_map(parts):
        head = prefix_map(table)(parts)
        return None if head is None or parts[-2] not in bn_or_conv else [*head[:-2], bn_or_conv[parts[-2]], parts[-1]]

    variables = convert_state_dict(ref.state_dict(), _init_shapes(aspp, x), path_map)
    assert "pooling" not in variables["params"]
    with torch.no_grad():
        expected = nhwc(ref(nchw(x)))
    assert rel_err(aspp.apply(variables, x), expected) <= 1e-5


# ---------------------------------------------------------------- DeepLab v2 ASPP


def test_deeplab_v2_aspp_is_sum_of_atrous_classifiers(np_rng):
    head = heads.DeepLabV2ASPP(3, atrous_rates=(1, 2, 6, 12))
    x = np_rng.standard_normal((1, 9, 11, 8)).astype(np.float32)
    variables = head.init(jax.random.key(0), x)
    params = jax.tree.map(lambda a: np_rng.standard_normal(a.shape).astype(np.float32), variables["params"])
    expected = 0
    for i, rate in enumerate((1, 2, 6, 12)):
        p = params[f"atrous_{i}"]
        w = torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy())
        expected = expected + F.conv2d(nchw(x), w, torch.from_numpy(np.asarray(p["bias"])), padding=rate, dilation=rate)
    assert rel_err(jax.jit(head.apply)({"params": params}, x), nhwc(expected)) <= 1e-5
    assert np.std(variables["params"]["atrous_0"]["kernel"]) == pytest.approx(0.01, rel=0.1)


# ---------------------------------------------------------------- DeepLab v3+ decoder


class _TorchV3PlusDecoder(tnn.Module):
    """Reference v3+ decoder written with torch/torchvision modules (non-separable)."""

    def __init__(self, high_ch, low_ch, num_classes, rates, ch=16, low_out=6):
        super().__init__()
        self.aspp = TorchASPP(high_ch, rates, out_channels=ch)
        self.low = tnn.Sequential(tnn.Conv2d(low_ch, low_out, 1, bias=False), tnn.BatchNorm2d(low_out), tnn.ReLU())
        self.refine = tnn.Sequential(
            tnn.Conv2d(ch + low_out, ch, 3, padding=1, bias=False), tnn.BatchNorm2d(ch), tnn.ReLU(),
            tnn.Conv2d(ch, ch, 3, padding=1, bias=False), tnn.BatchNorm2d(ch), tnn.ReLU(),
        )
        self.cls = tnn.Conv2d(ch, num_classes, 1)

    def forward(self, high, low):
        x = self.aspp(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.cls(self.refine(torch.cat([x, self.low(low)], dim=1)))


def test_deeplab_v3plus_decoder_matches_torch_reference(np_rng):
    torch.manual_seed(3)
    ref = randomize_batchnorm(_TorchV3PlusDecoder(20, 12, 3, (1, 2, 3)), np_rng).eval()
    head = heads.DeepLabV3PlusHead(3, atrous_rates=(1, 2, 3), channels=16, low_level_channels=6)
    high = np_rng.standard_normal((2, 4, 5, 20)).astype(np.float32)
    low = np_rng.standard_normal((2, 13, 17, 12)).astype(np.float32)

    def path_map(parts):
        if parts[0] == "aspp":
            mapped = map_deeplab_head(["0", *parts[1:]], 3)
            return None if mapped is None else mapped
        return prefix_map({"low.0": "low_level/conv", "low.1": "low_level/bn", "refine.0": "refine_0/conv",
                        "refine.1": "refine_0/bn", "refine.3": "refine_1/conv", "refine.4": "refine_1/bn",
                        "cls": "cls"})(parts)

    variables = convert_state_dict(ref.state_dict(), _init_shapes(head, high, low), path_map)
    with torch.no_grad():
        expected = nhwc(ref(nchw(high), nchw(low)))
    out = jax.jit(head.apply)(variables, high, low)
    assert out.shape == (2, 13, 17, 3)
    assert rel_err(out, expected) <= 1e-5


def test_separable_conv_is_depthwise_then_pointwise(np_rng):
    block = heads.ConvBNReLU(5, 3, dilation=2, separable=True)
    x = np_rng.standard_normal((1, 9, 8, 4)).astype(np.float32)
    v = block.init(jax.random.key(0), x)
    assert v["params"]["depthwise"]["kernel"].shape == (3, 3, 1, 4)
    assert v["params"]["conv"]["kernel"].shape == (1, 1, 4, 5)
    dw = torch.from_numpy(np.asarray(v["params"]["depthwise"]["kernel"]).transpose(3, 2, 0, 1).copy())
    pw = torch.from_numpy(np.asarray(v["params"]["conv"]["kernel"]).transpose(3, 2, 0, 1).copy())
    s = 1 / np.sqrt(1 + 1e-5)  # BN in eval mode at its initial statistics
    y = F.relu(F.conv2d(nchw(x), dw, padding=2, dilation=2, groups=4) * s)
    y = F.relu(F.conv2d(y, pw) * s)
    assert rel_err(jax.jit(block.apply)(v, x), nhwc(y)) <= 1e-5


# ---------------------------------------------------------------- PSP pyramid pooling head


def test_pyramid_pooling_head_matches_torch_on_odd_sizes(np_rng):
    torch.manual_seed(4)
    ref = randomize_batchnorm(TorchPSPHead(16, 3), np_rng).eval()
    head = heads.PyramidPoolingHead(3, channels=8)
    for hw in [(13, 11), (5, 7)]:  # 13 / 6 and 5 / 6 bins: uneven and overlapping
        x = np_rng.standard_normal((2, *hw, 16)).astype(np.float32)
        variables = convert_state_dict(ref.state_dict(), _init_shapes(head, x), prefix_map(PSP_TABLE))
        with torch.no_grad():
            expected = nhwc(ref(nchw(x)))
        assert rel_err(jax.jit(head.apply)(variables, x), expected) <= 1e-5, hw


def test_heads_in_bfloat16_stay_close_to_float32(deeplab_head_pair, np_rng):
    _, head, variables = deeplab_head_pair
    x = np_rng.standard_normal((1, 11, 9, 24)).astype(np.float32)
    f32 = jax.jit(head.apply)(variables, x)
    bf16 = jax.jit(heads.DeepLabV3Head(4, atrous_rates=(2, 3, 7), dtype=jnp.bfloat16).apply)(variables, x)
    assert bf16.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    assert 0 < rel_err(bf16, f32) <= 5e-2
