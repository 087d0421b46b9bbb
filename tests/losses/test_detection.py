"""The dense-detection losses against their references: torchvision's `sigmoid_focal_loss` (FL),
fvcore's `sigmoid_focal_loss_star` (FL*, what detectron2's TensorMask calls) and torch's
`binary_cross_entropy_with_logits(pos_weight=)` — values and input gradients, on fresh random
logits including large ones (the stable forms must not overflow)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from fvcore.nn import sigmoid_focal_loss_star as fvcore_focal_star

from segjax.losses import detection as det


def _inputs(np_rng, shape=(7, 5)):
    logits = np_rng.normal(scale=4.0, size=shape)
    logits.flat[:3] = [40.0, -40.0, 0.0]  # saturated both ways, and the midpoint
    targets = (np_rng.random(shape) < 0.3).astype(np.float64)
    return logits, targets


def _value_and_grad(fn, logits, targets):
    f = lambda x: jnp.sum(fn(x, jnp.asarray(targets)))  # noqa: E731
    value, grad = jax.value_and_grad(f)(jnp.asarray(logits, jnp.float32))
    return float(value), np.asarray(grad)


def _torch_value_and_grad(fn, logits, targets):
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    value = fn(x, torch.tensor(targets)).sum()
    value.backward()
    return value.item(), x.grad.numpy()


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.3, 3.0), (-1.0, 1.5)])
def test_sigmoid_focal_loss_equals_torchvision(np_rng, alpha, gamma):
    logits, targets = _inputs(np_rng)
    got = _value_and_grad(lambda x, t: det.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma), logits, targets)
    want = _torch_value_and_grad(
        lambda x, t: torchvision.ops.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none"),
        logits, targets)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.3, 3.0), (-1.0, 1.0), (0.5, 2.0)])
def test_sigmoid_focal_loss_star_equals_fvcore(np_rng, alpha, gamma):
    logits, targets = _inputs(np_rng)
    got = _value_and_grad(lambda x, t: det.sigmoid_focal_loss_star(x, t, alpha=alpha, gamma=gamma), logits, targets)
    want = _torch_value_and_grad(lambda x, t: fvcore_focal_star(x, t, alpha=alpha, gamma=gamma), logits, targets)
    assert np.isfinite(got[0]) and np.all(np.isfinite(got[1]))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pos_weight", [1.5, 1.0, 0.2])
def test_bce_with_pos_weight_equals_torch(np_rng, pos_weight):
    logits, _ = _inputs(np_rng)
    targets = np_rng.random(logits.shape)  # soft targets too
    got = _value_and_grad(lambda x, t: det.bce_with_logits_pos_weight(x, t, pos_weight), logits, targets)
    want = _torch_value_and_grad(
        lambda x, t: F.binary_cross_entropy_with_logits(
            x, t, pos_weight=torch.tensor(pos_weight, dtype=torch.float64), reduction="none"), logits, targets)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-6)


def test_bce_with_logits_equals_torch_also_at_zero(np_rng):
    """Mask R-CNN's BCE: value and gradient `sigmoid(x) - t`, including x = 0 exactly (a zero-
    initialised predictor's logits), where the max/abs form's subgradients gave -t."""
    logits, _ = _inputs(np_rng)
    targets = np_rng.random(logits.shape)
    got = _value_and_grad(det.bce_with_logits, logits, targets)
    want = _torch_value_and_grad(lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none"),
                                 logits, targets)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-6)
