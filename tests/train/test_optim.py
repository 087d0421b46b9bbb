"""segjax.train.optim: schedule by formula, SGD vs torch.optim.SGD, decay masks, backbone options."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from segjax.train import optim


def params_tree(np_rng):
    return {
        "backbone": {"conv": {"kernel": np_rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
                     "bn": {"scale": np.ones(4, np.float32), "bias": np_rng.normal(size=4).astype(np.float32)}},
        "head": {"kernel": np_rng.normal(size=(1, 1, 4, 3)).astype(np.float32),
                 "bias": np_rng.normal(size=3).astype(np.float32)},
    }


def test_poly_schedule_with_warmup_by_formula():
    lr0, T, W, p = 0.01, 100, 10, 0.9
    sched = optim.poly_schedule(lr0, T, W, p)
    for t in [0, 1, 5, 9]:
        assert float(sched(t)) == pytest.approx(lr0 * t / W, rel=1e-6, abs=1e-12)
    for t in [10, 11, 50, 99, 100]:
        assert float(sched(t)) == pytest.approx(lr0 * (1 - (t - W) / (T - W)) ** p, rel=1e-5, abs=1e-12)
    assert float(sched(150)) == 0.0
    no_warmup = optim.poly_schedule(lr0, T, power=p)
    assert float(no_warmup(0)) == pytest.approx(lr0)
    assert float(no_warmup(30)) == pytest.approx(lr0 * 0.7**p, rel=1e-6)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.poly_schedule(lr0, 10, 10)
    with pytest.raises(ValueError, match="num_steps"):
        optim.poly_schedule(lr0, 0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch_with_poly_lr(np_rng, nesterov):
    """All parameters decayed: the update equals torch.optim.SGD with the same per-step lr."""
    params = params_tree(np_rng)
    kw = dict(base_lr=0.1, num_steps=6, warmup_steps=2, momentum=0.9, nesterov=nesterov, weight_decay=1e-2)
    tx, sched = optim.create_optimizer(params, decay_norm_and_bias=True, **kw)
    leaves, treedef = jax.tree.flatten(params)
    tparams = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in leaves]
    topt = torch.optim.SGD(tparams, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-2)
    state = tx.init(params)
    p = params
    for t in range(5):
        grads = jax.tree.map(lambda x: np_rng.normal(size=x.shape).astype(np.float32), params)
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        for g, tp in zip(jax.tree.leaves(grads), tparams):
            tp.grad = torch.tensor(g, dtype=torch.float64)
        topt.param_groups[0]["lr"] = float(sched(t))
        topt.step()
    for a, b in zip(jax.tree.leaves(p), tparams):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-5, atol=1e-6)


def one_update(tx, params, grads, steps=1):
    state = tx.init(params)
    p = params
    for _ in range(steps):
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    return jax.tree.map(lambda new, old: np.asarray(new) - np.asarray(old), p, params)


def test_weight_decay_skips_norm_and_bias_when_asked(np_rng):
    params = params_tree(np_rng)
    grads = jax.tree.map(lambda x: np_rng.normal(size=x.shape).astype(np.float32), params)
    kw = dict(base_lr=0.1, num_steps=10, momentum=0.9)
    decayed = one_update(optim.create_optimizer(params, weight_decay=0.5, **kw)[0], params, grads, steps=2)
    plain = one_update(optim.create_optimizer(params, weight_decay=0.0, **kw)[0], params, grads, steps=2)
    # 1-D parameters (biases, BN scale/bias) get exactly the no-decay update ...
    for path in [("head", "bias"), ("backbone", "bn", "bias"), ("backbone", "bn", "scale")]:
        a, b = decayed, plain
        for key in path:
            a, b = a[key], b[key]
        np.testing.assert_array_equal(a, b)
    # ... kernels are decayed: first step update = -lr * (g + wd * p).
    first = one_update(optim.create_optimizer(params, weight_decay=0.5, **kw)[0], params, grads)
    want = -0.1 * (grads["head"]["kernel"] + 0.5 * params["head"]["kernel"])
    np.testing.assert_allclose(first["head"]["kernel"], want, rtol=1e-5, atol=1e-7)
    all_decayed = one_update(
        optim.create_optimizer(params, weight_decay=0.5, decay_norm_and_bias=True, **kw)[0], params, grads
    )
    want_bias = -0.1 * (grads["head"]["bias"] + 0.5 * params["head"]["bias"])
    np.testing.assert_allclose(all_decayed["head"]["bias"], want_bias, rtol=1e-5, atol=1e-7)


def test_backbone_lr_multiplier(np_rng):
    params = params_tree(np_rng)
    ones = jax.tree.map(jnp.ones_like, params)
    kw = dict(base_lr=0.1, num_steps=10, momentum=0.9)
    base = one_update(optim.create_optimizer(params, **kw)[0], params, ones, steps=3)
    mult = one_update(optim.create_optimizer(params, backbone_lr_mult=0.1, **kw)[0], params, ones, steps=3)
    np.testing.assert_allclose(mult["backbone"]["conv"]["kernel"], 0.1 * base["backbone"]["conv"]["kernel"], rtol=1e-5)
    np.testing.assert_allclose(mult["backbone"]["bn"]["bias"], 0.1 * base["backbone"]["bn"]["bias"], rtol=1e-5)
    np.testing.assert_array_equal(mult["head"]["kernel"], base["head"]["kernel"])
    # Identical gradients: the backbone moves exactly mult x the head.
    np.testing.assert_allclose(mult["backbone"]["bn"]["bias"][:3], 0.1 * mult["head"]["bias"], rtol=1e-5)


def test_frozen_backbone_stays_fixed(np_rng):
    params = params_tree(np_rng)
    grads = jax.tree.map(lambda x: np_rng.normal(size=x.shape).astype(np.float32), params)
    tx, _ = optim.create_optimizer(params, base_lr=0.1, num_steps=10, weight_decay=0.1, freeze_backbone=True)
    delta = one_update(tx, params, grads, steps=3)
    for leaf in jax.tree.leaves(delta["backbone"]):
        assert np.all(leaf == 0)
    for leaf in jax.tree.leaves(delta["head"]):
        assert np.all(np.abs(leaf) > 0)


def test_frozen_mask_keeps_exactly_those_leaves_fixed(np_rng):
    """`frozen` (a model's frozen_parameters): True leaves get no update, no decay and no
    momentum state; the rest are updated as without it; it combines with freeze_backbone."""
    params = params_tree(np_rng)
    grads = jax.tree.map(lambda x: np_rng.normal(size=x.shape).astype(np.float32), params)
    frozen = jax.tree.map(lambda _: False, params)
    frozen["backbone"]["bn"] = {"scale": True, "bias": True}
    frozen["head"]["bias"] = True
    kw = dict(base_lr=0.1, num_steps=10, weight_decay=0.1)
    delta = one_update(optim.create_optimizer(params, frozen=frozen, **kw)[0], params, grads, steps=3)
    plain = one_update(optim.create_optimizer(params, **kw)[0], params, grads, steps=3)
    for (path, d), p, f in zip(jax.tree_util.tree_flatten_with_path(delta)[0],
                               jax.tree.leaves(plain), jax.tree.leaves(frozen)):
        if f:
            assert np.all(d == 0), path
        else:
            np.testing.assert_array_equal(d, p, err_msg=str(path))
    both = one_update(optim.create_optimizer(params, frozen=frozen, freeze_backbone=True, **kw)[0],
                      params, grads, steps=3)
    assert all(np.all(x == 0) for x in jax.tree.leaves(both["backbone"]) + [both["head"]["bias"]])
    np.testing.assert_array_equal(both["head"]["kernel"], plain["head"]["kernel"])


def test_backbone_options_need_a_backbone_key(np_rng):
    params = {"head": {"kernel": np.ones((2, 2), np.float32)}}
    with pytest.raises(ValueError, match="backbone"):
        optim.create_optimizer(params, base_lr=0.1, num_steps=10, freeze_backbone=True)
    with pytest.raises(ValueError, match="backbone"):
        optim.create_optimizer(params, base_lr=0.1, num_steps=10, backbone_lr_mult=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.create_optimizer(params, base_lr=0.1, num_steps=10, weight_decay=-1.0)


def test_step_schedule_is_the_detection_recipe():
    """Mask R-CNN 1x: 0.02, x0.1 at 60k and 80k, linear warm-up over 1000 steps."""
    sched = optim.step_schedule(0.02, (60_000, 80_000), 0.1, 1000)
    want = {0: 0.0, 500: 0.01, 1000: 0.02, 59_999: 0.02, 60_000: 0.002, 79_999: 0.002,
            80_000: 0.0002, 89_999: 0.0002}
    for step, lr in want.items():
        np.testing.assert_allclose(float(sched(step)), lr, rtol=1e-6, atol=1e-12)
    params = {"w": jnp.ones((2, 2))}
    _, s2 = optim.create_optimizer(params, base_lr=0.02, num_steps=90_000, schedule="step",
                                   boundaries=(60_000, 80_000), warmup_steps=1000)
    assert float(s2(70_000)) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="boundaries"):
        optim.step_schedule(0.1, (50, 10))
    with pytest.raises(ValueError, match="schedule"):
        optim.create_optimizer(params, base_lr=0.1, num_steps=10, schedule="cosine")
