"""segjax.models.norm.BatchNorm against torch.nn.BatchNorm2d, and sync BN under pmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segjax.models.norm import BatchNorm


def _torch_bn(channels, mean, var, scale, bias):
    bn = torch.nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(mean))
        bn.running_var.copy_(torch.from_numpy(var))
        bn.weight.copy_(torch.from_numpy(scale))
        bn.bias.copy_(torch.from_numpy(bias))
    return bn


def _variables(mean, var, scale, bias):
    return {
        "params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
        "batch_stats": {"mean": jnp.asarray(mean), "var": jnp.asarray(var)},
    }


@pytest.mark.parametrize("train", [False, True])
def test_matches_torch_forward_grad_and_stats(np_rng, train):
    n, h, w, c = 3, 5, 7, 6
    x = (np_rng.normal(size=(n, h, w, c)) * 2 + 1).astype(np.float32)
    mean = np_rng.normal(size=c).astype(np.float32)
    var = np_rng.uniform(0.5, 2.0, size=c).astype(np.float32)
    scale = np_rng.normal(size=c).astype(np.float32)
    bias = np_rng.normal(size=c).astype(np.float32)
    cot = np_rng.normal(size=(n, h, w, c)).astype(np.float32)

    bn = _torch_bn(c, mean, var, scale, bias).train(train)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_(True)
    yt = bn(xt)
    yt.backward(torch.from_numpy(cot.transpose(0, 3, 1, 2)))

    layer = BatchNorm(use_running_average=not train)

    def f(v, x):
        return layer.apply(v, x, mutable=["batch_stats"])

    (y, updates), vjp = jax.vjp(f, _variables(mean, var, scale, bias), jnp.asarray(x))
    (gv, gx) = vjp((jnp.asarray(cot), jax.tree.map(jnp.zeros_like, updates)))

    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gv["params"]["scale"], bn.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gv["params"]["bias"], bn.bias.grad.numpy(), rtol=1e-4, atol=1e-4)
    if train:  # running statistics follow torch's (unbiased) update
        np.testing.assert_allclose(updates["batch_stats"]["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(updates["batch_stats"]["var"], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_sync_over_pmap_equals_global_batch(np_rng):
    devices = jax.local_devices()[:4]
    assert len(devices) == 4, "conftest sets 4 host devices"
    c = 4
    x = np_rng.normal(size=(8, 3, 5, c)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)[:, None, None, None]
    v = _variables(np.zeros(c, np.float32), np.ones(c, np.float32), np.ones(c, np.float32), np.zeros(c, np.float32))

    def run(layer, v, x):
        return layer.apply(v, x, mutable=["batch_stats"])

    y_ref, upd_ref = run(BatchNorm(use_running_average=False), v, jnp.asarray(x))
    synced = jax.pmap(functools.partial(run, BatchNorm(use_running_average=False, axis_name="d")),
                      axis_name="d", in_axes=(None, 0), devices=devices)
    y, upd = synced(v, jnp.asarray(x.reshape(4, 2, 3, 5, c)))
    np.testing.assert_allclose(np.asarray(y).reshape(x.shape), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["var"][0], upd_ref["batch_stats"]["var"], rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"][3], upd_ref["batch_stats"]["mean"], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_stats(np_rng):
    x = jnp.asarray(np_rng.normal(size=(2, 4, 4, 3)), jnp.bfloat16)
    layer = BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    v = layer.init(jax.random.key(0), x)
    y, upd = layer.apply(v, x, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    assert v["params"]["scale"].dtype == jnp.float32
    assert upd["batch_stats"]["var"].dtype == jnp.float32
    ref = (x.astype(np.float32) - x.astype(np.float32).mean((0, 1, 2))) / jnp.sqrt(x.astype(np.float32).var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(y.astype(np.float32), ref, atol=5e-2)
