"""Quality oracles: outputs in (0, 1) per example, the gradient w.r.t. the mask equal to central
finite differences in float64, train/eval mode, and the gossip streams' wiring (swapping the two
streams' parameters is the same network on the complement mask)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import create_model

NAMES = ("oracle_single", "oracle_dual", "oracle_gossip")
SMALL = dict(base_features=4, depth=2, hidden=8)


def _inputs(rng, n=2, h=12, w=10):
    image = rng.standard_normal((n, h, w, 3)).astype(np.float32)
    mask = rng.uniform(0.0, 1.0, (n, h, w)).astype(np.float32)
    return image, mask


def _trained_stats(model, variables, image, mask):
    """Variables whose batch_stats come from one train-mode pass (not the init 0/1)."""
    _, mutated = model.apply(variables, image, mask, train=True, mutable=["batch_stats"])
    return {"params": variables["params"], "batch_stats": mutated["batch_stats"]}


@pytest.mark.parametrize("name", NAMES)
def test_shapes_range_and_modes(np_rng, name):
    model = create_model(name, num_classes=1, **SMALL)
    image, mask = _inputs(np_rng)
    variables = model.init(jax.random.key(0), image, mask)
    out = model.apply(variables, image, mask, train=False)
    assert set(out) == {"quality"} and out["quality"].shape == (2,)
    q = np.asarray(out["quality"])
    assert np.all((q > 0) & (q < 1))
    # Examples are independent in eval mode: row 1 alone gives the same value.
    alone = model.apply(variables, image[1:], mask[1:], train=False)["quality"]
    np.testing.assert_allclose(alone, q[1:], rtol=1e-5)
    # The mask matters.
    other = model.apply(variables, image, 1.0 - mask, train=False)["quality"]
    assert np.max(np.abs(np.asarray(other) - q)) > 1e-6
    with pytest.raises(ValueError, match="mask must be"):
        model.apply(variables, image, mask[:, :5])


@pytest.mark.parametrize("name", NAMES)
def test_mask_gradient_matches_finite_differences_float64(np_rng, name):
    """Central differences (eps 1e-6) per pixel, in float64. segjax's BatchNorm computes in
    float32 whatever the dtype, so this exact check uses norm="none"; the BatchNorm model is
    checked below along a random direction in float32."""
    image, mask = _inputs(np_rng, n=2, h=8, w=8)
    with jax.enable_x64(True):
        model = create_model(name, num_classes=1, dtype=jnp.float64, norm="none", **SMALL)
        x, m0 = jnp.asarray(image, jnp.float64), jnp.asarray(mask, jnp.float64)
        variables = model.init(jax.random.key(1), x, m0)
        variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)

        @jax.jit
        def f(m):
            q = model.apply(variables, x, m, train=False)["quality"]
            return jnp.sum(q * jnp.array([1.0, -2.0]))

        assert f(m0).dtype == jnp.float64
        grad = np.asarray(jax.jit(jax.grad(f))(m0))
        eps = 1e-6
        for idx in [(0, 0, 0), (0, 3, 4), (1, 7, 7)]:
            e = np.zeros(mask.shape)
            e[idx] = eps
            fd = (float(f(m0 + e)) - float(f(m0 - e))) / (2 * eps)
            np.testing.assert_allclose(grad[idx], fd, rtol=1e-6, atol=1e-12)
        assert np.abs(grad).max() > 0


def test_mask_gradient_with_batchnorm_directional(np_rng):
    """With BatchNorm (eval mode, trained statistics), float32: the directional derivative
    along a random direction equals central differences (eps 2e-3) to 1 %."""
    model = create_model("oracle_gossip", num_classes=1, **SMALL)
    image, mask = _inputs(np_rng, n=2, h=8, w=8)
    variables = _trained_stats(model, model.init(jax.random.key(1), image, mask), image, mask)
    f = jax.jit(lambda m: jnp.sum(model.apply(variables, image, m)["quality"]))
    d = np_rng.standard_normal(mask.shape).astype(np.float32)
    eps = 2e-3
    fd = (float(f(mask + eps * d)) - float(f(mask - eps * d))) / (2 * eps)
    got = float(jnp.vdot(jax.grad(f)(jnp.asarray(mask)), d))
    assert abs(got) > 1e-5
    np.testing.assert_allclose(got, fd, rtol=1e-2)


def test_gossip_streams_swap_is_the_complement_mask(np_rng):
    """q with the a/b stream parameters (and batch stats) swapped and the head's pooled halves
    swapped, on 1 - mask, equals q on mask: stream a sees the mask, stream b its complement,
    and each exchange block reads (own, other) in that order."""
    model = create_model("oracle_gossip", num_classes=1, **SMALL)
    image, mask = _inputs(np_rng)
    variables = _trained_stats(model, model.init(jax.random.key(2), image, mask), image, mask)

    def swap(tree):
        out = dict(tree)
        for key in tree:
            if key[0] in "ab" and key[1:2].isdigit():
                out[key] = tree[("b" if key[0] == "a" else "a") + key[1:]]
        return out

    params = swap(variables["params"])
    half = params["head"]["Dense_0"]["kernel"].shape[0] // 2
    k = params["head"]["Dense_0"]["kernel"]
    params["head"] = {**params["head"],
                      "Dense_0": {**params["head"]["Dense_0"],
                                  "kernel": jnp.concatenate([k[half:], k[:half]], 0)}}
    swapped = {"params": params, "batch_stats": swap(variables["batch_stats"])}
    want = model.apply(variables, image, mask)["quality"]
    got = model.apply(swapped, image, 1.0 - mask)["quality"]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.max(np.abs(np.asarray(model.apply(variables, image, 1.0 - mask)["quality"]) -
                         np.asarray(want))) > 1e-6  # not trivially symmetric


def test_dropout_and_train_mode_batch_stats(np_rng):
    model = create_model("oracle_single", num_classes=1, dropout=0.5, **SMALL)
    image, mask = _inputs(np_rng, n=4)
    variables = model.init(jax.random.key(0), image, mask)
    a, mut = model.apply(variables, image, mask, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(1)})
    b, _ = model.apply(variables, image, mask, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(2)})
    assert np.max(np.abs(np.asarray(a["quality"]) - np.asarray(b["quality"]))) > 0
    assert any(np.max(np.abs(np.asarray(v))) > 0
               for v in jax.tree.leaves(mut["batch_stats"]))
