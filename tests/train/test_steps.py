"""segjax.train.steps on one device: the step equals the loss/gradient computed directly, golden
numbers, eval confusion, clear errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segjax import metrics
from segjax.tasks.base import StepContext
from segjax.train import optim, steps
from segjax.train.state import create_train_state
from tests.train.tiny import IGNORE, TinySegNet, make_batch, make_task

K = 3
SHAPE = (1, 9, 11, 3)
TASK = make_task(K)


def LOSS_FN(outputs, labels):  # noqa: N802 - the task's loss on one device
    return TASK.loss(outputs, {"label": labels}, StepContext(rng=jax.random.key(0)))


@pytest.fixture(scope="module")
def setup():
    model = TinySegNet(num_classes=K, features=4)
    state = create_train_state(model, jax.random.key(0), SHAPE, optax.sgd(0.05, momentum=0.9))
    sched = optim.poly_schedule(0.05, 10)
    step = jax.jit(functools.partial(steps.train_step, task=TASK, learning_rate_fn=sched))
    return model, state, step


def test_train_step_equals_direct_loss_and_gradient(setup, np_rng):
    model, state, step = setup
    batch = make_batch(np_rng, n=4, k=K)
    new_state, m = step(state, batch, jax.random.key(1))

    def mean_loss(params):
        out, mutated = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"]
        )
        s, c = LOSS_FN(out, batch["label"])
        return s / c, mutated

    (loss, mutated), grads = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))(state.params)
    np.testing.assert_allclose(m["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(m["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
    assert float(m["valid_pixels"]) == np.sum(batch["label"] != IGNORE)
    assert float(m["lr"]) == pytest.approx(0.05)
    assert int(new_state.step) == 1
    # First SGD-momentum step: p - lr * g.
    want = jax.tree.map(lambda p, g: p - 0.05 * g, state.params, grads)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(new_state.batch_stats), jax.tree.leaves(mutated["batch_stats"])):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(new_state.batch_stats["backbone"]["bn"]["var"], 1.0)


# Recorded on jax 0.10.2 / flax 0.12.8 (CPU); a change here means numerics changed somewhere.
GOLDEN_LOSS = 1.2533910274505615
GOLDEN_GRAD_NORM = 0.5415202379226685
GOLDEN_VALID = 207.0


def test_golden_single_step(setup):
    """Loss and gradient norm of one step on a fixed tiny config, recorded once: catches drift."""
    model, setup_state, step = setup
    # The same tx object: `tx` is a static field, a new one would recompile the step.
    state = create_train_state(model, jax.random.key(42), SHAPE, setup_state.tx)
    batch = make_batch(np.random.default_rng(2024), n=4, k=K)
    _, m = step(state, batch, jax.random.key(0))
    np.testing.assert_allclose(float(m["loss"]), GOLDEN_LOSS, rtol=1e-5)
    np.testing.assert_allclose(float(m["grad_norm"]), GOLDEN_GRAD_NORM, rtol=1e-5)
    assert float(m["valid_pixels"]) == GOLDEN_VALID


def test_all_ignored_batch_is_a_no_op_without_nan(setup, np_rng):
    _, state, step = setup
    batch = make_batch(np_rng, n=4, k=K)
    batch["label"][:] = IGNORE
    new_state, m = step(state, batch, jax.random.key(1))
    assert float(m["loss"]) == 0.0 and float(m["grad_norm"]) == 0.0 and float(m["valid_pixels"]) == 0.0
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_dropout_key_is_folded_with_the_step(np_rng):
    model = TinySegNet(num_classes=K, features=4, dropout=0.5)
    state = create_train_state(model, jax.random.key(0), SHAPE, optax.sgd(0.1))
    batch = make_batch(np_rng, n=2, k=K)
    step = jax.jit(functools.partial(steps.train_step, task=TASK))
    loss_a = float(step(state, batch, jax.random.key(5))[1]["loss"])
    assert float(step(state, batch, jax.random.key(5))[1]["loss"]) == loss_a  # deterministic
    assert float(step(state.replace(step=1), batch, jax.random.key(5))[1]["loss"]) != loss_a
    assert float(step(state, batch, jax.random.key(6))[1]["loss"]) != loss_a


def test_eval_step_confusion(setup, np_rng):
    model, state, _ = setup
    batch = make_batch(np_rng, n=4, k=K)
    batch["valid"] = np.array([True, True, False, True])
    sums, per_example = jax.jit(functools.partial(steps.eval_step, task=TASK))(state, batch)
    conf = sums["confusion"]
    logits = jax.jit(model.apply)({"params": state.params, "batch_stats": state.batch_stats}, batch["image"])["logits"]
    pred = np.argmax(np.asarray(logits), -1)
    want = np.zeros((K, K), np.int64)
    for n in [0, 1, 3]:
        lab = batch["label"][n]
        np.add.at(want, (lab[lab != IGNORE], pred[n][lab != IGNORE]), 1)
    assert conf.dtype == jnp.int32
    np.testing.assert_array_equal(conf, want)
    np.testing.assert_array_equal(
        conf, metrics.confusion_matrix(pred, batch["label"], K, ignore_label=IGNORE, valid_mask=batch["valid"])
    )
    np.testing.assert_array_equal(per_example["pred"], pred)


def test_axis_name_under_plain_jit_raises(setup, np_rng):
    _, state, _ = setup
    batch = make_batch(np_rng, n=2, k=K)
    with pytest.raises(ValueError, match="axis_name='batch' is not bound"):
        jax.jit(functools.partial(steps.train_step, task=TASK, axis_name="batch"))(state, batch, jax.random.key(0))
    with pytest.raises(ValueError, match="is not bound"):
        jax.jit(functools.partial(steps.eval_step, task=TASK, axis_name="batch"))(state, batch)


def test_bad_batch_raises(setup, np_rng):
    _, state, step = setup
    batch = make_batch(np_rng, n=2, k=K)
    with pytest.raises(ValueError, match="missing key"):
        step(state, {"image": batch["image"]}, jax.random.key(0))
    with pytest.raises(ValueError, match="shape"):
        step(state, {"image": batch["image"], "label": batch["label"][:, :-1]}, jax.random.key(0))
