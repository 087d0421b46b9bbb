"""segjax.models.layers: AtrousConv / ConvTranspose vs torch modules, the FCN bilinear kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segjax.models.layers import AtrousConv, ConvTranspose, bilinear_init, bilinear_upsample_kernel
from segjax.ops import resize
from tests.ops.helpers import nchw, nhwc


def _variables(np_rng, kernel_shape, features):
    """Fresh random params (numpy, so no RNG kernels are compiled) in the layers' layout."""
    return {"params": {"kernel": np_rng.normal(size=kernel_shape).astype(np.float32),
                       "bias": np_rng.normal(size=(features,)).astype(np.float32)}}


def test_param_shapes_and_names():
    x = jnp.zeros((2, 5, 4, 3))
    shapes = jax.eval_shape(AtrousConv(4, (3, 5), 2).init, jax.random.key(0), x)["params"]
    assert {k: v.shape for k, v in shapes.items()} == {"kernel": (3, 5, 3, 4), "bias": (4,)}
    shapes = jax.eval_shape(ConvTranspose(6, 3, stride=2).init, jax.random.key(0), x)["params"]
    assert {k: v.shape for k, v in shapes.items()} == {"kernel": (3, 3, 6, 3), "bias": (6,)}
    shapes = jax.eval_shape(ConvTranspose(6, 2, use_bias=False).init, jax.random.key(0), x)["params"]
    assert set(shapes) == {"kernel"}


@pytest.mark.parametrize("kernel_size,rate", [(3, 1), (3, 2), ((3, 5), (2, 3)), (3, 7)])
def test_atrous_conv_matches_torch_conv2d(np_rng, kernel_size, rate):
    x = np_rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    rh, rw = (rate, rate) if isinstance(rate, int) else rate
    layer = AtrousConv(4, kernel_size, rate)
    variables = _variables(np_rng, (kh, kw, 3, 4), 4)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    tconv = torch.nn.Conv2d(3, 4, (kh, kw), dilation=(rh, rw),
                            padding=(rh * (kh - 1) // 2, rw * (kw - 1) // 2)).double()
    with torch.no_grad():
        tconv.weight.copy_(torch.tensor(kernel).permute(3, 2, 0, 1))
        tconv.bias.copy_(torch.tensor(bias))
    np.testing.assert_allclose(layer.apply(variables, x), nhwc(tconv(nchw(x))), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size,stride,padding,output_padding,dilation", [
    (2, 2, 0, 0, 1), (3, 2, 1, 1, 1), (4, 3, 1, 2, 1), ((3, 5), (2, 3), (1, 2), (0, 1), (2, 1)),
])
def test_conv_transpose_matches_torch_module(np_rng, kernel_size, stride, padding, output_padding,
                                             dilation):
    x = np_rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    layer = ConvTranspose(6, kernel_size, stride=stride, padding=padding,
                          output_padding=output_padding, dilation=dilation)
    variables = _variables(np_rng, (kh, kw, 6, 3), 6)  # [kh, kw, features, in_features]
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    tconv = torch.nn.ConvTranspose2d(3, 6, (kh, kw), stride=stride, padding=padding,
                                     output_padding=output_padding, dilation=dilation).double()
    with torch.no_grad():
        tconv.weight.copy_(torch.tensor(kernel).permute(3, 2, 0, 1))  # [in, out, kh, kw]
        tconv.bias.copy_(torch.tensor(bias))
    np.testing.assert_allclose(layer.apply(variables, x), nhwc(tconv(nchw(x))), rtol=1e-5, atol=1e-5)


def test_bilinear_kernel_worked_values():
    # f = 2: k = 4, taps 1 - |i - 1.5| / 2 = [.25, .75, .75, .25]; f = 3: k = 5, centre 2,
    # taps 1 - |i - 2| / 3 = [1/3, 2/3, 1, 2/3, 1/3].
    k2 = bilinear_upsample_kernel(2, 2)
    np.testing.assert_allclose(k2[:, 0, 0, 0], [0.25 * 0.25, 0.75 * 0.25, 0.75 * 0.25, 0.25 * 0.25])
    np.testing.assert_allclose(k2[1, :, 1, 1], [0.75 * 0.25, 0.75 * 0.75, 0.75 * 0.75, 0.75 * 0.25])
    assert not k2[:, :, 0, 1].any() and not k2[:, :, 1, 0].any()
    k3 = bilinear_upsample_kernel((3, 2), 1)
    assert k3.shape == (5, 4, 1, 1)
    np.testing.assert_allclose(k3[:, 1, 0, 0], np.array([1, 2, 3, 2, 1]) / 3 * 0.75, rtol=1e-6)


@pytest.mark.parametrize("factor", [2, 3, 4, (2, 3)])
def test_bilinear_conv_transpose_is_bilinear_upsampling_in_the_interior(np_rng, factor):
    fh, fw = (factor, factor) if isinstance(factor, int) else factor
    x = np_rng.normal(size=(1, 5, 6, 3)).astype(np.float32)
    k = (2 * fh - fh % 2, 2 * fw - fw % 2)
    layer = ConvTranspose(3, k, stride=(fh, fw), padding=(fh // 2, fw // 2), use_bias=False,
                          kernel_init=bilinear_init(factor))
    y = layer.apply(layer.init(jax.random.key(0), x), x)
    assert y.shape == (1, 5 * fh, 6 * fw, 3)
    ref = resize(x, (5 * fh, 6 * fw), "bilinear")
    # Within one input pixel of the border, zero padding differs from resize's clamping.
    np.testing.assert_allclose(y[:, fh:-fh, fw:-fw], ref[:, fh:-fh, fw:-fw], rtol=1e-5, atol=1e-5)
    assert not np.allclose(y, ref, atol=1e-3)  # the border really differs, so the crop matters


def test_layers_bfloat16_jit_and_grad(np_rng):
    x = np_rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
    for layer, kernel_shape in ((AtrousConv(3, 3, 2), (3, 3, 4, 3)),
                                (ConvTranspose(3, 3, stride=2, padding=1, output_padding=1), (3, 3, 3, 4))):
        variables = _variables(np_rng, kernel_shape, 3)
        ref = layer.apply(variables, x)
        fb = jax.jit(lambda v, a: layer.clone(dtype=jnp.bfloat16).apply(v, a))
        yb = fb(variables, x)
        assert yb.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(yb, np.float32), ref, rtol=0.05, atol=0.05)
        g = jax.jit(jax.grad(lambda v: fb(v, x).astype(jnp.float32).sum()))(variables)
        assert g["params"]["kernel"].dtype == jnp.float32


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="channels"):
        bilinear_upsample_kernel(2, 0)
    with pytest.raises(ValueError, match="factor"):
        bilinear_upsample_kernel(0, 3)
    x = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="needs kernel shape"):
        jax.eval_shape(ConvTranspose(3, 3, stride=2, kernel_init=bilinear_init(2)).init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="output_padding"):
        jax.eval_shape(ConvTranspose(3, 3, stride=2, output_padding=2).init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="rate"):
        jax.eval_shape(AtrousConv(3, 3, 0).init, jax.random.key(0), x)


def test_conv_impl_switch_picks_the_primitive_and_both_give_the_same_logits(monkeypatch, np_rng):
    import flax.linen as nn

    from segjax import ops
    from segjax.models import layers

    monkeypatch.setenv("SEGJAX_CONV_IMPL", "lax")
    assert layers.conv_general_dilated_impl() is None
    monkeypatch.setenv("SEGJAX_CONV_IMPL", "segjax")
    assert layers.conv_general_dilated_impl() is ops.conv_general_dilated
    monkeypatch.setenv("SEGJAX_CONV_IMPL", "auto")
    assert layers.conv_general_dilated_impl() is ops.conv_general_dilated  # tests run on CPU
    monkeypatch.setenv("SEGJAX_CONV_IMPL", "fast")
    with pytest.raises(ValueError, match="SEGJAX_CONV_IMPL"):
        layers.conv_general_dilated_impl()

    class Net(nn.Module):  # a strided 1x1 and a dilated 3x3: both routed to segjax's forms
        @nn.compact
        def __call__(self, x):
            x = layers.square_conv(6, 1, stride=2, name="down")(x)
            return layers.square_conv(5, 3, dilation=4, name="atrous")(x)

    x = jnp.asarray(np_rng.normal(size=(2, 13, 11, 3)), jnp.float32)
    monkeypatch.setenv("SEGJAX_CONV_IMPL", "lax")
    variables = Net().init(jax.random.key(0), x)
    y_lax = Net().apply(variables, x)
    monkeypatch.setenv("SEGJAX_CONV_IMPL", "segjax")
    y_segjax = Net().apply(variables, x)
    np.testing.assert_allclose(y_segjax, y_lax, rtol=1e-5, atol=1e-5)
