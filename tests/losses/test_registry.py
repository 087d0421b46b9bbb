"""segjax.losses.register: a loss registered from outside segjax is one the semantic task and the
config check accept; names are unique; a gathering loss gets the step context's gather."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import losses
from segjax.losses import registry
from segjax.tasks.base import StepContext
from segjax.tasks.semantic import SemanticTask

IGNORE = 255
K = 3
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def restore_registry():
    """Each test's registrations are undone, so the table the other tests see is segjax's own."""
    table, gathering = dict(registry.LOSSES), set(registry._GATHERING)
    yield
    registry.LOSSES.clear()
    registry.LOSSES.update(table)
    registry._GATHERING.clear()
    registry._GATHERING.update(gathering)


def _batch(np_rng, n=2):
    logits = jnp.asarray(np_rng.normal(size=(n, 4, 5, K)), jnp.float32)
    labels = np_rng.integers(0, K, (n, 4, 5)).astype(np.int32)
    labels[0, 0, :] = IGNORE
    return logits, jnp.asarray(labels)


def test_builtin_losses_are_registered_with_their_gathering():
    assert set(losses.LOSSES) >= {"ce", "focal", "dice", "lovasz", "ohem"}
    assert losses.LOSSES["ce"] is losses.cross_entropy
    assert losses.LOSSES["ohem"] is losses.ohem_cross_entropy
    assert losses.gathers("ohem")
    assert not any(losses.gathers(k) for k in ("ce", "focal", "dice", "lovasz"))
    with pytest.raises(ValueError, match="unknown loss kind 'nope'"):
        losses.gathers("nope")


def test_a_loss_registered_outside_segjax_is_what_the_semantic_task_computes(np_rng):
    calls = []

    @losses.register("test_l1_prob")
    def l1_prob(logits, labels, *, ignore_label, valid_mask=None, scale=1.0):
        """scale * (1 - p_true) per counted pixel, as (sum, count)."""
        calls.append(scale)
        valid = losses.valid_pixels(labels, ignore_label, valid_mask)
        p = jax.nn.softmax(logits, -1)
        p_true = jnp.take_along_axis(p, jnp.where(valid, labels, 0)[..., None], -1)[..., 0]
        return jnp.sum(jnp.where(valid, scale * (1.0 - p_true), 0.0)), jnp.sum(valid)

    assert losses.LOSSES["test_l1_prob"] is l1_prob  # the decorator returns the function
    assert not losses.gathers("test_l1_prob")
    logits, labels = _batch(np_rng)
    task = SemanticTask(num_classes=K, ignore_label=IGNORE, loss_kind="test_l1_prob",
                        loss_kwargs={"scale": 2.0}, aux_weight=0.0)
    got = task.loss({"logits": logits}, {"label": labels}, StepContext(rng=jax.random.key(0)))
    want = l1_prob(logits, labels, ignore_label=IGNORE, scale=2.0)
    assert calls == [2.0, 2.0]
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-6)
    assert int(got[1]) == int(want[1]) == 2 * 4 * 5 - 5


def test_the_config_check_accepts_a_registered_loss():
    from segjax.train import config_utils

    config = config_utils.load_config_file("experiments/configs/deeplab_voc.py:demo",
                                           root=REPO_ROOT)
    config.unlock()
    config.loss.kind = "test_registered_later"
    with pytest.raises(ValueError, match="loss.kind"):
        config_utils.check_config(config)

    @losses.register("test_registered_later")
    def later(logits, labels, *, ignore_label, valid_mask=None):
        return losses.cross_entropy(logits, labels, ignore_label=ignore_label,
                                    valid_mask=valid_mask)

    config_utils.check_config(config)


def test_registering_a_name_twice_fails_and_keeps_the_first():
    def first(logits, labels, *, ignore_label, valid_mask=None):
        return jnp.zeros(()), jnp.zeros(())

    def second(logits, labels, *, ignore_label, valid_mask=None):
        return jnp.ones(()), jnp.ones(())

    losses.register("test_twice")(first)
    with pytest.raises(ValueError, match="'test_twice' is registered twice"):
        losses.register("test_twice")(second)
    with pytest.raises(ValueError, match="'ce' is registered twice"):
        losses.register("ce")(second)
    assert losses.LOSSES["test_twice"] is first
    assert losses.LOSSES["ce"] is losses.cross_entropy


def test_a_loss_missing_the_contract_keywords_is_refused():
    with pytest.raises(ValueError, match=r"\['valid_mask'\]"):
        losses.register("test_no_mask")(lambda logits, labels, *, ignore_label: (0.0, 0.0))
    with pytest.raises(ValueError, match=r"\['gather'\]"):
        losses.register("test_no_gather", gathers=True)(
            lambda logits, labels, *, ignore_label, valid_mask=None: (0.0, 0.0))
    assert "test_no_mask" not in losses.LOSSES and "test_no_gather" not in losses.LOSSES


def test_a_gathering_loss_gets_the_context_gather_and_sees_the_global_batch(np_rng):
    """Under pmap over 4 devices (one image each) the loss's `gather` is the context's
    all_gather: it returns the global batch, so every device sees 4 images."""
    seen = []

    @losses.register("test_gathering", gathers=True)
    def batch_size_loss(logits, labels, *, ignore_label, valid_mask=None, gather=None):
        seen.append(gather)
        n_global = gather(labels).shape[0]
        return jnp.float32(n_global) + 0.0 * jnp.sum(logits), jnp.float32(1.0)

    assert losses.gathers("test_gathering")
    task = SemanticTask(num_classes=K, ignore_label=IGNORE, loss_kind="test_gathering",
                        aux_weight=0.0)
    ctx = StepContext(rng=jax.random.key(0))
    logits, labels = _batch(np_rng, n=4)
    total, _ = task.loss({"logits": logits}, {"label": labels}, ctx)
    assert seen == [ctx.all_gather] and float(total) == 4.0

    n_dev = 4
    assert jax.local_device_count() >= n_dev

    def per_device_loss(task):
        def step(lg, lb):
            c = StepContext(rng=jax.random.key(0), axis_name="data")
            return task.loss({"logits": lg}, {"label": lb}, c)[0]

        return np.asarray(jax.pmap(step, axis_name="data", devices=jax.local_devices()[:n_dev])(
            logits.reshape(n_dev, 1, *logits.shape[1:]),
            labels.reshape(n_dev, 1, *labels.shape[1:])))

    np.testing.assert_array_equal(per_device_loss(task), np.full(n_dev, 4.0))

    # A loss registered without gathers=True never receives `gather` (it would not take it).
    @losses.register("test_local")
    def local(logits, labels, *, ignore_label, valid_mask=None):
        return jnp.float32(labels.shape[0]) + 0.0 * jnp.sum(logits), jnp.float32(1.0)

    task = SemanticTask(num_classes=K, ignore_label=IGNORE, loss_kind="test_local", aux_weight=0.0)
    np.testing.assert_array_equal(per_device_loss(task), np.full(n_dev, 1.0))
