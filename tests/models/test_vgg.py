"""VGG16 backbone against torchvision's vgg16 (copied weights), parameter count, output stride."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from segjax.models.backbones.vgg import VGG16, max_pool_2x2, vgg16_variables_from_torch


@pytest.fixture(autouse=True)
def _fast_init_compile():
    """jax's default partitionable threefry makes compiling `init` ~8x slower on CPU (measured)."""
    with jax.threefry_partitionable(False):
        yield


def _torch_state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def torch_vgg16_bn():
    torch.manual_seed(0)
    model = torchvision.models.vgg16_bn().eval()
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN is really tested
        for m in model.features:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("batch_norm, ceil_mode", [(False, False), (True, True)])
def test_conv_stack_matches_torchvision(np_rng, torch_vgg16_bn, batch_norm, ceil_mode):
    torch.manual_seed(1)
    tv = torch_vgg16_bn if batch_norm else torchvision.models.vgg16().eval()
    for m in tv.features:
        if isinstance(m, torch.nn.MaxPool2d):
            m.ceil_mode = ceil_mode
    x = np_rng.normal(size=(1, 37, 45, 3)).astype(np.float32)
    variables = vgg16_variables_from_torch(_torch_state(tv), batch_norm=batch_norm, include_fc=False)
    model = VGG16(include_fc=False, batch_norm=batch_norm, ceil_mode=ceil_mode)
    got = jax.jit(model.apply)(variables, jnp.asarray(x))["pool5"]
    with torch.no_grad():
        want = _nhwc(tv.features(_nchw(x)))
    # 37x45 -> floor 1x1 / ceil 2x2 at stride 32: the two modes are really different here.
    assert got.shape == want.shape == ((1, 2, 2, 512) if ceil_mode else (1, 1, 1, 512))
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got) / scale, want / scale, atol=1e-4)


def test_fc_layers_match_torchvision_classifier(np_rng):
    """fc6 as a 7x7 conv on a 7x7 pool5 map equals classifier.0 on the flattened map."""
    torch.manual_seed(2)
    tv = torchvision.models.vgg16().eval()
    variables = vgg16_variables_from_torch(_torch_state(tv))
    fc = {k: variables["params"][k] for k in ("fc6", "fc7")}
    pool5 = np_rng.normal(size=(1, 7, 7, 512)).astype(np.float32)

    class FCOnly(torch.nn.Module):
        def forward(self, x):
            return tv.classifier[:5](torch.flatten(x, 1))  # fc6, relu, drop, fc7, relu

    def apply_fc(p, x):
        y = jax.lax.conv_general_dilated(x, p["fc6"]["kernel"], (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["fc6"]["bias"]
        y = jax.nn.relu(y)
        return jax.nn.relu(y @ p["fc7"]["kernel"][0, 0] + p["fc7"]["bias"])

    with torch.no_grad():
        want = FCOnly()(_nchw(pool5)).numpy()
    got = np.asarray(apply_fc(fc, jnp.asarray(pool5))).reshape(1, -1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_parameter_count_equals_torchvision():
    tv = torchvision.models.vgg16()
    tv_count = sum(p.numel() for name, p in tv.named_parameters() if not name.startswith("classifier.6"))
    shapes = jax.eval_shape(VGG16().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert count == tv_count == 134_260_544
    assert shapes["params"]["fc6"]["kernel"].shape == (7, 7, 512, 4096)


def test_converter_names_a_missing_key():
    with pytest.raises(ValueError, match="features.0.weight"):
        vgg16_variables_from_torch({})


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_shapes_and_strides(np_rng, output_stride):
    model = VGG16(output_stride=output_stride, width=4, fc_dim=8, fc6_kernel=3, fc6_dilation=2)
    x = jnp.asarray(np_rng.normal(size=(1, 37, 45, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    out = model.apply(variables, x)
    for name, stride in model.feature_strides.items():
        assert out[name].shape == (1, -(-37 // stride), -(-45 // stride), model.feature_channels[name]), name
    # Parameters do not depend on the output stride.
    ref = VGG16(width=4, fc_dim=8, fc6_kernel=3, fc6_dilation=2).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ref) == jax.tree.map(jnp.shape, variables)


def test_output_stride_8_is_dilated_conv5_and_stride1_pools(np_rng):
    """OS 8 equals a hand-wired numpy/lax reference: conv5 with dilation 2, 3x3/s1/p1 pools."""
    model = VGG16(output_stride=8, width=2, include_fc=False)
    x = jnp.asarray(np_rng.normal(size=(1, 19, 21, 3)), jnp.float32)
    variables = model.init(jax.random.key(1), x)
    p = variables["params"]

    def conv(x, name, d=1):
        y = jax.lax.conv_general_dilated(x, p[name]["kernel"], (1, 1), ((d, d), (d, d)), rhs_dilation=(d, d),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y + p[name]["bias"])

    def pool3x3(x):
        xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
        h, w = x.shape[1:3]
        return np.max([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)

    def pool2x2_ceil(x):
        x = np.asarray(x)
        h, w = -(-x.shape[1] // 2), -(-x.shape[2] // 2)
        xp = np.full((x.shape[0], 2 * h, 2 * w, x.shape[3]), -np.inf, np.float32)
        xp[:, :x.shape[1], :x.shape[2]] = x
        return xp.reshape(x.shape[0], h, 2, w, 2, x.shape[3]).max(axis=(2, 4))

    y = x
    for s, n in enumerate((2, 2, 3, 3, 3), start=1):
        for i in range(1, n + 1):
            y = conv(y, f"conv{s}_{i}", 2 if s == 5 else 1)
        y = pool3x3(y) if s >= 4 else pool2x2_ceil(y)
    np.testing.assert_allclose(model.apply(variables, x)["pool5"], y, rtol=1e-5, atol=1e-6)


def test_max_pool_2x2_ceil_matches_torch(np_rng):
    x = np_rng.normal(size=(2, 7, 4, 3)).astype(np.float32)
    want = _nhwc(torch.nn.functional.max_pool2d(_nchw(x), 2, 2, ceil_mode=True))
    np.testing.assert_array_equal(max_pool_2x2(jnp.asarray(x)), want)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"output_stride": 4}, "output_stride=4"), ({"fc6_kernel": 4}, "fc6_kernel"), ({"width": 0}, "width"),
     ({"keep_pool_indices": True, "output_stride": 8}, "keep_pool_indices")],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VGG16(**kwargs).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_bad_input_shape_raises():
    with pytest.raises(ValueError, match=r"\(1, 32, 32, 4\)"):
        VGG16(width=2).init(jax.random.key(0), jnp.zeros((1, 32, 32, 4)))
