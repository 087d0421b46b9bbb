"""TransformerNet against a torch transcription of pytorch/examples
fast_neural_style/neural_style/transformer_net.py (ConvLayer, ResidualBlock, UpsampleConvLayer,
torch's own InstanceNorm2d(affine=True)) written here with a `w` width, the weights copied through
`from_torch_transformer_net`; values and input gradients at odd sizes (float64 torch, float32 JAX)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from segjax.style import TransformerNet
from segjax.style.transformer_net import from_torch_transformer_net

W = 2  # width (32 in the reference)


class ConvLayer(tnn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.reflection_pad = tnn.ReflectionPad2d(k // 2)
        self.conv2d = tnn.Conv2d(cin, cout, k, stride)

    def forward(self, x):
        return self.conv2d(self.reflection_pad(x))


class ResidualBlock(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.in1 = ConvLayer(c, c, 3, 1), tnn.InstanceNorm2d(c, affine=True)
        self.conv2, self.in2 = ConvLayer(c, c, 3, 1), tnn.InstanceNorm2d(c, affine=True)

    def forward(self, x):
        return self.in2(self.conv2(torch.relu(self.in1(self.conv1(x))))) + x


class UpsampleConvLayer(ConvLayer):
    def forward(self, x):
        return super().forward(tnn.functional.interpolate(x, mode="nearest", scale_factor=2))


class TorchTransformerNet(tnn.Module):
    def __init__(self, w):
        super().__init__()
        self.conv1, self.in1 = ConvLayer(3, w, 9, 1), tnn.InstanceNorm2d(w, affine=True)
        self.conv2, self.in2 = ConvLayer(w, 2 * w, 3, 2), tnn.InstanceNorm2d(2 * w, affine=True)
        self.conv3, self.in3 = ConvLayer(2 * w, 4 * w, 3, 2), tnn.InstanceNorm2d(4 * w, affine=True)
        for i in range(1, 6):
            setattr(self, f"res{i}", ResidualBlock(4 * w))
        self.deconv1, self.in4 = UpsampleConvLayer(4 * w, 2 * w, 3, 1), tnn.InstanceNorm2d(2 * w, affine=True)
        self.deconv2, self.in5 = UpsampleConvLayer(2 * w, w, 3, 1), tnn.InstanceNorm2d(w, affine=True)
        self.deconv3 = ConvLayer(w, 3, 9, 1)

    def forward(self, x):
        y = torch.relu(self.in1(self.conv1(x)))
        y = torch.relu(self.in2(self.conv2(y)))
        y = torch.relu(self.in3(self.conv3(y)))
        for i in range(1, 6):
            y = getattr(self, f"res{i}")(y)
        y = torch.relu(self.in4(self.deconv1(y)))
        y = torch.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    ref = TorchTransformerNet(W).double()
    with torch.no_grad():  # the affine parameters start at 1 and 0: make them matter
        for name, p in ref.named_parameters():
            if ".conv2d." not in name:
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) if name.endswith("weight")
                        else torch.randn_like(p) * 0.3)
    return ref, from_torch_transformer_net({k: v.numpy() for k, v in ref.state_dict().items()})


def test_matches_torch_values_and_input_gradients(nets, np_rng):
    """Odd H (13 -> 7 -> 4 -> 16) and W not a multiple of 4 (10 -> 5 -> 3 -> 12): one compile."""
    ref, variables = nets
    hw = (13, 10)
    x = np_rng.uniform(0, 255, (2, *hw, 3)).astype(np.float32)
    model = TransformerNet(width=W)
    out_hw = tuple(4 * -(-(-(-s // 2)) // 2) for s in hw)
    cot = np_rng.normal(size=(2, *out_hw, 3)).astype(np.float32)

    @jax.jit
    def value_and_input_grad(v, c):
        out, vjp = jax.vjp(lambda v: model.apply(variables, v), v)
        return out, vjp(c)[0]

    out, g = value_and_input_grad(jnp.asarray(x), jnp.asarray(cot))
    tx = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_(True)
    t_out = ref(tx)
    t_out.backward(torch.tensor(cot, dtype=torch.float64).permute(0, 3, 1, 2))
    assert out.shape == (2, *out_hw, 3)
    t_out = t_out.detach().permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, t_out, rtol=1e-4, atol=1e-4 * np.abs(t_out).max())
    t_g = tx.grad.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(g, t_g, rtol=1e-3, atol=1e-3 * np.abs(t_g).max())


def test_converter_tree_matches_init_and_drops_stale_running_stats(nets):
    ref, variables = nets
    init = jax.eval_shape(TransformerNet(width=W).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert jax.tree.map(lambda a: a.shape, init) == jax.tree.map(lambda a: a.shape, variables)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    stale = state | {"in1.running_mean": np.zeros(W), "res2.in1.running_var": np.ones(4 * W)}
    assert jax.tree.map(lambda a: a.shape, from_torch_transformer_net(stale)) == \
        jax.tree.map(lambda a: a.shape, variables)
    with pytest.raises(ValueError, match="unexpected key 'head.weight'"):
        from_torch_transformer_net(state | {"head.weight": np.zeros(3)})


def test_too_small_images_raise():
    with pytest.raises(ValueError, match="H, W >= 5"):
        jax.eval_shape(TransformerNet(width=W).init, jax.random.key(0), jnp.zeros((1, 4, 9, 3)))
