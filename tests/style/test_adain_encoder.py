"""The AdaIN encoder against a torch transcription of naoto0804/pytorch-AdaIN's `net.vgg[:31]`
split as `Net.enc_1` .. `enc_4` (widths scaled down, torch's own init, weights copied through
`from_torch_vgg_normalised`): the four relu*_1 maps and the input gradient at an odd size, where
the ceil-mode pools matter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from segjax.style import AdaINEncoder
from segjax.style.adain_encoder import from_torch_vgg_normalised, from_torchvision_vgg19

W = 2
LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")


def torch_vgg_to_relu4_1(w):
    """net.py's vgg[:31] with 64/128/256/512 replaced by w/2w/4w/8w."""
    def conv(cin, cout):
        return [tnn.ReflectionPad2d((1, 1, 1, 1)), tnn.Conv2d(cin, cout, (3, 3)), tnn.ReLU()]

    def pool():
        return [tnn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True)]

    return tnn.Sequential(
        tnn.Conv2d(3, 3, (1, 1)), *conv(3, w), *conv(w, w), *pool(), *conv(w, 2 * w), *conv(2 * w, 2 * w),
        *pool(), *conv(2 * w, 4 * w), *conv(4 * w, 4 * w), *conv(4 * w, 4 * w), *conv(4 * w, 4 * w),
        *pool(), *conv(4 * w, 8 * w)).double()


@pytest.fixture(scope="module")
def encoders():
    torch.manual_seed(0)
    ref = torch_vgg_to_relu4_1(W)
    return ref, {k: v.numpy() for k, v in ref.state_dict().items()}


def test_matches_the_reference_encoder_values_and_input_gradient(encoders, np_rng):
    ref, state = encoders
    variables = from_torch_vgg_normalised(state)
    x = np_rng.uniform(0, 1, (2, 13, 11, 3)).astype(np.float32)
    cots = {k: np_rng.normal(size=s).astype(np.float32)
            for k, s in zip(LAYERS, [(2, 13, 11, W), (2, 7, 6, 2 * W), (2, 4, 3, 4 * W), (2, 2, 2, 8 * W)])}

    @jax.jit
    def value_and_input_grad(v, c):
        out, vjp = jax.vjp(lambda v: AdaINEncoder(width=W).apply(variables, v), v)
        return out, vjp(c)[0]

    out, g = value_and_input_grad(jnp.asarray(x), cots)
    tx = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_(True)
    layers, feats, h = list(ref.children()), [], tx
    for lo, hi in ((0, 4), (4, 11), (11, 18), (18, 31)):  # Net.enc_1 .. enc_4
        h = tnn.Sequential(*layers[lo:hi])(h)
        feats.append(h)
    sum((f * torch.tensor(cots[k], dtype=torch.float64).permute(0, 3, 1, 2)).sum()
        for k, f in zip(LAYERS, feats)).backward()
    for k, f in zip(LAYERS, feats):
        f = f.detach().permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(out[k], f, rtol=1e-4, atol=1e-5 * np.abs(f).max(), err_msg=k)
    t_g = tx.grad.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(g, t_g, rtol=1e-3, atol=1e-4 * np.abs(t_g).max())


def test_torchvision_layout_maps_the_same_convs(encoders):
    _, state = encoders
    naoto_to_tv = dict(zip((2, 5, 9, 12, 16, 19, 22, 25, 29), (0, 2, 5, 7, 10, 12, 14, 16, 19)))
    tv = {f"features.{naoto_to_tv[int(k.split('.')[0])]}.{k.split('.')[1]}": v
          for k, v in state.items() if int(k.split(".")[0]) in naoto_to_tv}
    ours = from_torchvision_vgg19(tv | {"classifier.0.weight": np.zeros((4, 4))})
    expected = from_torch_vgg_normalised(state)["params"]
    expected.pop("preprocess")
    jax.tree.map(np.testing.assert_array_equal, ours["params"], expected)
    shapes = jax.eval_shape(AdaINEncoder(width=W, preprocess=False).init, jax.random.key(0), jnp.zeros((1, 9, 9, 3)))
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, ours)
    with pytest.raises(ValueError, match="no 'features.19.weight'"):
        from_torchvision_vgg19({k: v for k, v in tv.items() if k != "features.19.weight"})
