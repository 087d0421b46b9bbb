"""The patch classifier: each patch classified by a torch transcription of the patch network
(valid convs, 2x2/2 max pooling, the last conv covering the remaining map, a linear classifier),
and the dense twin equal to the sliding window in values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segjax.models import create_model
from segjax.models.patch import PatchClassifier

FEATURES, KERNEL, K = (4, 6, 8), 3, 5


@pytest.fixture(scope="module")
def tiny():
    model = create_model("patch_classifier", num_classes=K, features=FEATURES, kernel=KERNEL, chunk=16)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 9, 11, 3)), jnp.float32)
    return model, jax.jit(model.init)(jax.random.key(0), x), x


def torch_patch_net(params):
    """The patch network in torch, from the paper's description, with the flax weights."""
    layers = []
    chans = (3, *FEATURES)
    for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
        conv = torch.nn.Conv2d(cin, cout, KERNEL)
        conv.weight.data = torch.tensor(np.asarray(params[f"conv{i}_kernel"]).transpose(3, 2, 0, 1))
        conv.bias.data = torch.tensor(np.asarray(params[f"conv{i}_bias"]))
        layers += [conv, torch.nn.ReLU()] + ([torch.nn.MaxPool2d(2)] if i < len(FEATURES) - 1 else [])
    fc = torch.nn.Linear(FEATURES[-1], K)
    fc.weight.data = torch.tensor(np.asarray(params["classifier_kernel"]).T)
    fc.bias.data = torch.tensor(np.asarray(params["classifier_bias"]))
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), fc)


def test_patch_size_is_farabets_46_and_the_tiny_one_by_hand():
    assert create_model("patch_classifier", num_classes=8).patch_size == 46  # Farabet et al. 2013
    assert create_model("patch_classifier", num_classes=8, features=FEATURES, kernel=KERNEL).patch_size == 18
    # 18 -> conv 16 -> pool 8 -> conv 6 -> pool 3 -> conv 1


def test_both_ways_equal_torch_on_every_pixel_and_gradients_agree(tiny, np_rng):
    model, variables, x = tiny
    p = model.patch_size
    net = torch_patch_net(variables["params"])
    padded = np.pad(np.asarray(x), ((0, 0), (p // 2, p - 1 - p // 2), (p // 2, p - 1 - p // 2), (0, 0)))
    t = torch.tensor(padded.transpose(0, 3, 1, 2), requires_grad=True)
    n, h, w = x.shape[:3]
    patches = t.unfold(2, p, 1).unfold(3, p, 1)  # [N, C, H, W, P, P]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n * h * w, 3, p, p)
    want = net(patches).reshape(n, h, w, K)
    cot = np_rng.normal(size=(n, h, w, K)).astype(np.float32)
    (want * torch.tensor(cot)).sum().backward()
    lo = p // 2
    want_grad = t.grad.numpy().transpose(0, 2, 3, 1)[:, lo:lo + h, lo:lo + w]

    dense = jax.jit(lambda v, x: model.apply(v, x)["logits"])
    sliding = jax.jit(lambda v, x: model.apply(v, x, method=PatchClassifier.classify_patches)["logits"])
    for f in (dense, sliding):
        np.testing.assert_allclose(f(variables, x), want.detach().numpy(), atol=1e-5)
        grad = jax.grad(lambda x: jnp.sum(f(variables, x) * cot))(x)
        np.testing.assert_allclose(grad, want_grad, atol=1e-5)


def test_dense_twin_odd_sizes_and_bfloat16(tiny, np_rng):
    model, variables, _ = tiny
    x = jnp.asarray(np_rng.normal(size=(1, 7, 4, 3)), jnp.float32)
    dense = model.apply(variables, x)["logits"]
    sliding = model.apply(variables, x, method=PatchClassifier.classify_patches)["logits"]
    np.testing.assert_allclose(dense, sliding, atol=1e-5)
    low = model.clone(dtype=jnp.bfloat16).apply(variables, x)["logits"]
    assert low.dtype == jnp.float32
    assert np.linalg.norm(low - dense) / np.linalg.norm(dense) < 3e-2
    with pytest.raises(ValueError, match=r"images \[N, H, W, 3\]"):
        model.apply(variables, x[..., :2])
