"""AdaIN against torch transcriptions of naoto0804/pytorch-AdaIN written here: `calc_mean_std` /
`adaptive_instance_normalization` (function.py), the `decoder` nn.Sequential (net.py, with the
widths scaled down) and `Net.forward`'s content and style losses, on fresh random inputs, values
and gradients (float64 torch vs float32 JAX)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from segjax.style import AdaINDecoder, adain, adain_blend, adain_content_loss, adain_style_loss
from segjax.style.adain import from_torch_decoder

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")


def nchw(x):
    return torch.tensor(np.asarray(x, np.float64)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)


def to_nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def torch_calc_mean_std(feat, eps=1e-5):
    """function.py's calc_mean_std: var over H*W with torch's default (unbiased) estimator."""
    n, c = feat.shape[:2]
    var = feat.reshape(n, c, -1).var(dim=2) + eps
    return feat.reshape(n, c, -1).mean(dim=2).reshape(n, c, 1, 1), var.sqrt().reshape(n, c, 1, 1)


def torch_adain(content, style):
    s_mean, s_std = torch_calc_mean_std(style)
    c_mean, c_std = torch_calc_mean_std(content)
    return (content - c_mean) / c_std * s_std + s_mean


def torch_decoder(w, in_channels):
    """net.py's decoder with 512/256/128/64 replaced by in_channels/4w/2w/w."""
    def block(cin, cout, relu=True):
        layers = [tnn.ReflectionPad2d((1, 1, 1, 1)), tnn.Conv2d(cin, cout, (3, 3))]
        return layers + ([tnn.ReLU()] if relu else [])

    up = [tnn.UpsamplingNearest2d(scale_factor=2)]
    return tnn.Sequential(
        *block(in_channels, 4 * w), *up, *block(4 * w, 4 * w), *block(4 * w, 4 * w), *block(4 * w, 4 * w),
        *block(4 * w, 2 * w), *up, *block(2 * w, 2 * w), *block(2 * w, w), *up, *block(w, w),
        *block(w, 3, relu=False)).double()


def test_adain_matches_torch_values_and_gradients(np_rng):
    content = np_rng.normal(1.0, 2.0, (2, 5, 6, 4)).astype(np.float32)
    style = np_rng.normal(-0.5, 3.0, (2, 7, 3, 4)).astype(np.float32)
    cot = np_rng.normal(size=content.shape).astype(np.float32)
    out, vjp = jax.vjp(jax.jit(adain), jnp.asarray(content), jnp.asarray(style))
    g_content, g_style = vjp(jnp.asarray(cot))

    tc, ts = nchw(content), nchw(style)
    ref = torch_adain(tc, ts)
    ref.backward(nchw(cot).detach())
    np.testing.assert_allclose(out, to_nhwc(ref), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_content, to_nhwc(tc.grad), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(g_style, to_nhwc(ts.grad), rtol=1e-3, atol=1e-4)


def test_adain_uses_the_unbiased_variance():
    """A 2-pixel map [0, 2]: the unbiased variance is 2 (the biased one would be 1)."""
    content = jnp.array([0.0, 2.0]).reshape(1, 1, 2, 1)
    style = jnp.array([10.0, 10.0 + 2.0 * np.sqrt(2.0)]).reshape(1, 2, 1, 1)  # mean 10 + sqrt 2, var 4
    out = adain(content, style, eps=0.0)
    # normalised content: (x - 1) / sqrt(2) = -+1/sqrt(2); times style std 2, plus its mean.
    np.testing.assert_allclose(np.ravel(out), 10.0 + np.sqrt(2.0) + np.array([-1.0, 1.0]) * np.sqrt(2.0),
                               rtol=1e-6)


def test_adain_blend_is_the_content_style_tradeoff(np_rng):
    content = np_rng.normal(size=(1, 4, 5, 3)).astype(np.float32)
    style = np_rng.normal(2.0, 0.5, (1, 6, 6, 3)).astype(np.float32)
    ref = torch_adain(nchw(content), nchw(style))
    expected = 0.3 * to_nhwc(ref) + 0.7 * content
    np.testing.assert_allclose(adain_blend(content, style, 0.3), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(adain_blend(content, style, 0.0), content, rtol=0, atol=0)


@pytest.mark.parametrize("call, match", [
    (lambda: adain(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4, 2))), "agree in N and C"),
    (lambda: adain(jnp.zeros((4, 4, 3)), jnp.zeros((1, 4, 4, 3))), "content must have rank 4"),
    (lambda: adain(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 1, 1, 3))), "at least 2 pixels"),
    (lambda: adain_blend(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4, 3)), 1.5), "alpha must be in"),
    (lambda: adain_content_loss({"relu3_1": jnp.zeros((1, 2, 2, 3))}, jnp.zeros((1, 2, 2, 3))),
     "no layer 'relu4_1'"),
])
def test_bad_arguments_raise_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.fixture(scope="module")
def decoder_pair():
    torch.manual_seed(0)
    ref = torch_decoder(w=2, in_channels=6)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    return ref, from_torch_decoder(state)


def test_decoder_matches_torch_sequential_values_and_input_gradients(decoder_pair, np_rng):
    ref, variables = decoder_pair
    x = np_rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    model = AdaINDecoder(width=2)
    cot = np_rng.normal(size=(2, 24, 40, 3)).astype(np.float32)

    @jax.jit
    def value_and_input_grad(v, c):
        out, vjp = jax.vjp(lambda v: model.apply(variables, v), v)
        return out, vjp(c)[0]

    out, g = value_and_input_grad(jnp.asarray(x), jnp.asarray(cot))

    tx = nchw(x)
    t_out = ref(tx)
    t_out.backward(nchw(cot).detach())
    np.testing.assert_allclose(out, to_nhwc(t_out), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g, to_nhwc(tx.grad), rtol=1e-3, atol=1e-5)


def test_decoder_parameter_tree_matches_the_converter(decoder_pair):
    ref, variables = decoder_pair
    init = jax.eval_shape(AdaINDecoder(width=2).init, jax.random.key(0), jnp.zeros((1, 3, 3, 6)))
    assert jax.tree.map(lambda a: a.shape, init) == jax.tree.map(lambda a: a.shape, variables)
    state = {k: v.numpy() for k, v in ref.state_dict().items() if k != "28.weight"}
    with pytest.raises(ValueError, match="no '28.weight'"):
        from_torch_decoder(state)


def _feature_dicts(rng, n=2, c=(3, 4, 5, 6), sizes=((9, 8), (5, 4), (3, 4), (2, 3))):
    return {layer: rng.normal(rng.uniform(-1, 1), rng.uniform(0.5, 2), (n, h, w, ch)).astype(np.float32)
            for layer, ch, (h, w) in zip(LAYERS, c, sizes)}


def test_content_and_style_losses_match_torch(np_rng):
    """Values and gradients w.r.t. the output features; none flows into t or the style features."""
    out_feats = _feature_dicts(np_rng)
    style_feats = _feature_dicts(np_rng, sizes=((7, 7), (4, 6), (3, 3), (2, 2)))
    t = np_rng.normal(size=out_feats["relu4_1"].shape).astype(np.float32)

    @jax.jit
    def losses_and_grads(feats, style, target):
        def losses(feats, style, target):
            return adain_content_loss(feats, target), adain_style_loss(feats, style)
        values, vjp = jax.vjp(losses, feats, style, target)
        return values, vjp((jnp.float32(0.7), jnp.float32(1.3)))

    (lc, ls), (grads, g_style, g_t) = losses_and_grads(out_feats, style_feats, t)

    mse = tnn.MSELoss()
    t_out = {k: nchw(v) for k, v in out_feats.items()}
    t_style = {k: nchw(v).detach() for k, v in style_feats.items()}
    ref_c = mse(t_out["relu4_1"], nchw(t).detach())
    ref_s = 0
    for layer in LAYERS:  # net.py's calc_style_loss, summed over relu1_1 .. relu4_1
        o_mean, o_std = torch_calc_mean_std(t_out[layer])
        s_mean, s_std = torch_calc_mean_std(t_style[layer])
        ref_s = ref_s + mse(o_mean, s_mean) + mse(o_std, s_std)
    (0.7 * ref_c + 1.3 * ref_s).backward()
    np.testing.assert_allclose(lc, ref_c.item(), rtol=1e-5)
    np.testing.assert_allclose(ls, ref_s.item(), rtol=1e-5)
    for layer in LAYERS:
        np.testing.assert_allclose(grads[layer], to_nhwc(t_out[layer].grad), rtol=1e-3, atol=1e-6)
    assert not np.any(g_t) and all(not np.any(v) for v in jax.tree.leaves(g_style))
