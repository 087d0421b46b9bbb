"""Style losses against torch transcriptions of pytorch/examples fast_neural_style (`utils.gram_matrix`,
`normalize_batch`, the `Vgg16` slices and `train()`'s loss) and of jcjohnson/neural-style's `TVLoss`
gradient, on seeded torchvision-layout VGGs: each value and its gradient w.r.t. the input image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax.style import (
    GATYS_STYLE_LAYERS,
    JOHNSON_LAYERS,
    VGGFeatures,
    content_loss,
    gram_matrix,
    perceptual_loss,
    style_loss,
    total_variation_loss,
    vgg_features_variables_from_torch,
)
from tests.style.torch_vgg import named_activations, nchw, nhwc, state_dict, torch_vgg


def torch_gram(y):
    """pytorch/examples fast_neural_style/neural_style/utils.py `gram_matrix`."""
    b, ch, h, w = y.size()
    features = y.view(b, ch, w * h)
    return features.bmm(features.transpose(1, 2)) / (ch * h * w)


def torch_normalize_batch(batch):
    """pytorch/examples `normalize_batch` (images in [0, 255])."""
    mean = batch.new_tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    std = batch.new_tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    return (batch / 255.0 - mean) / std


def _close(got, want, rtol=1e-4):
    want = np.asarray(want)
    np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=rtol * np.abs(want).max())


def test_gram_matrix_is_pytorch_examples(np_rng):
    f = np_rng.standard_normal((2, 5, 7, 6)).astype(np.float32)
    cot = np_rng.standard_normal((2, 6, 6)).astype(np.float32)
    gram, vjp = jax.vjp(gram_matrix, jnp.asarray(f))
    ft = nchw(f).requires_grad_(True)
    want = torch_gram(ft)
    (want * torch.from_numpy(cot)).sum().backward()
    _close(gram, want.detach().numpy())
    _close(vjp(jnp.asarray(cot))[0], nhwc(ft.grad))


def test_content_and_style_losses_through_vgg19(np_rng):
    """Content (MSE of relu4_2) and style (Σ_l w_l MSE of Grams, layer weights) of a batch of 2
    against one style image, through a seeded width-4 VGG-19: values and image gradients."""
    features = torch_vgg(19, 4, seed=7)
    variables = vgg_features_variables_from_torch(state_dict(features), depth=19)
    x, content, style = (np_rng.uniform(size=(n, 24, 20, 3)).astype(np.float32) for n in (2, 2, 1))
    weights = {n: w for n, w in zip(GATYS_STYLE_LAYERS, (0.2, 1.0, 0.5, 2.0, 0.7))}
    net = VGGFeatures(depth=19, layers=GATYS_STYLE_LAYERS + ("relu4_2",), width=4)

    @jax.jit
    def values_and_grads(x, variables, targets):  # the targets' features come from the same trace
        f_targets = net.apply(variables, targets)
        target_content = f_targets["relu4_2"][:2]
        grams = {n: gram_matrix(f_targets[n][2:]) for n in GATYS_STYLE_LAYERS}

        def losses(x):
            f = net.apply(variables, x)
            return content_loss(f["relu4_2"], target_content), style_loss(f, grams, weights)

        return (*losses(x), *jax.jacrev(losses)(x))  # jacrev: one backward pass, vmapped over both

    c, s, grad_c, grad_s = values_and_grads(jnp.asarray(x), variables, jnp.concatenate([content, style]))

    xt = nchw(x).requires_grad_(True)
    with torch.no_grad():
        fc, fs = (named_activations(features, nchw(i), until="relu5_1") for i in (content, style))
    f = named_activations(features, xt, until="relu5_1")
    want_c = F.mse_loss(f["relu4_2"], fc["relu4_2"])
    want_s = sum(weights[n] * F.mse_loss(torch_gram(f[n]), torch_gram(fs[n]).expand(2, -1, -1))
                 for n in GATYS_STYLE_LAYERS)
    want_grad_c = nhwc(torch.autograd.grad(want_c, xt, retain_graph=True)[0])
    want_grad_s = nhwc(torch.autograd.grad(want_s, xt)[0])
    _close(c, want_c.item())
    _close(s, want_s.item())
    _close(grad_c, want_grad_c)
    _close(grad_s, want_grad_s)


def test_perceptual_loss_is_pytorch_examples(np_rng):
    """Johnson et al.'s loss as pytorch/examples trains with: [0, 255] images through
    `normalize_batch`, its `Vgg16` slices (relu1_2, relu2_2, relu3_3, relu4_3), content weight
    1e5 on relu2_2, style weight 1e10, Grams of the style image repeated over the batch. Ours
    takes [0, 1] images; the gradient is w.r.t. those."""
    features = torch_vgg(16, 8, seed=16)
    variables = vgg_features_variables_from_torch(state_dict(features), depth=16)
    y, x, style = (np_rng.uniform(size=s).astype(np.float32) for s in ((2, 32, 32, 3),) * 2 + ((1, 40, 36, 3),))
    net = VGGFeatures(depth=16, layers=JOHNSON_LAYERS, width=8)

    def loss(y, variables, x, style):
        grams = {k: gram_matrix(v) for k, v in net.apply(variables, style).items()}
        return perceptual_loss(net.apply(variables, y), net.apply(variables, x), grams)

    @jax.jit
    def value_and_grad(y, variables, x, style):
        total = lambda y: loss(y, variables, x, style)["total"]  # noqa: E731
        return loss(y, variables, x, style), jax.grad(total)(y)

    out, grad = value_and_grad(jnp.asarray(y), variables, jnp.asarray(x), jnp.asarray(style))

    slices = [features[0:4], features[4:9], features[9:16], features[16:23]]  # pytorch/examples Vgg16

    def vgg(batch):
        outs = []
        for s in slices:
            batch = s(batch)
            outs.append(batch)
        return outs

    gram_style = [torch_gram(f) for f in vgg(torch_normalize_batch(nchw(style).repeat(2, 1, 1, 1) * 255))]
    yt = nchw(y).requires_grad_(True)
    features_y = vgg(torch_normalize_batch(yt * 255))
    features_x = vgg(torch_normalize_batch(nchw(x) * 255))
    want_content = 1e5 * F.mse_loss(features_y[1], features_x[1])
    want_style = 1e10 * sum(F.mse_loss(torch_gram(fy), gs[:2]) for fy, gs in zip(features_y, gram_style))
    (want_content + want_style).backward()
    _close(out["content"], want_content.item())
    _close(out["style"], want_style.item())
    _close(out["total"], (want_content + want_style).item())
    _close(grad, nhwc(yt.grad))


def test_squared_total_variation_is_johnsons_tv_energy(np_rng):
    """Value ½Σ(x_diff² + y_diff²) on the (H-1)x(W-1) grid; gradient = jcjohnson/neural-style
    `TVLoss:updateGradInput` (strength 1) transcribed."""
    x = np_rng.standard_normal((2, 6, 7, 3)).astype(np.float32)
    value, grad = jax.value_and_grad(total_variation_loss)(jnp.asarray(x))
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    x_diff = t[:, :, :-1, :-1] - t[:, :, :-1, 1:]
    y_diff = t[:, :, :-1, :-1] - t[:, :, 1:, :-1]
    want_grad = torch.zeros_like(t)
    want_grad[:, :, :-1, :-1] += x_diff + y_diff
    want_grad[:, :, :-1, 1:] -= x_diff
    want_grad[:, :, 1:, :-1] -= y_diff
    _close(value, 0.5 * float((x_diff ** 2).sum() + (y_diff ** 2).sum()))
    _close(grad, nhwc(want_grad))


def test_absolute_total_variation_is_anisotropic_tv(np_rng):
    """Σ|∂x| + Σ|∂y| over all neighbour pairs (tf.image.total_variation summed over the batch)."""
    x = np_rng.standard_normal((2, 5, 8, 3)).astype(np.float32)
    value, grad = jax.value_and_grad(lambda x: total_variation_loss(x, kind="absolute"))(jnp.asarray(x))
    t = nchw(x).requires_grad_(True)
    want = (t[:, :, 1:] - t[:, :, :-1]).abs().sum() + (t[:, :, :, 1:] - t[:, :, :, :-1]).abs().sum()
    want.backward()
    _close(value, want.item())
    _close(grad, nhwc(t.grad))


def test_bad_inputs_are_named():
    f = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match=r"gram_matrix expects features \[N, H, W, C\]"):
        gram_matrix(jnp.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="content target"):
        content_loss(f, jnp.zeros((1, 4, 5, 3)))
    with pytest.raises(ValueError, match=r"style layers \['relu2_1'\] are not among"):
        style_loss({"relu1_1": f}, {"relu2_1": jnp.zeros((1, 3, 3))})
    with pytest.raises(ValueError, match="weights are for layers"):
        style_loss({"relu1_1": f}, {"relu1_1": jnp.zeros((1, 3, 3))}, {"relu2_1": 1.0})
    with pytest.raises(ValueError, match=r"style target relu1_1 has shape \(1, 4, 4\)"):
        style_loss({"relu1_1": f}, {"relu1_1": jnp.zeros((1, 4, 4))})
    with pytest.raises(ValueError, match="kind must be"):
        total_variation_loss(f, kind="huber")
