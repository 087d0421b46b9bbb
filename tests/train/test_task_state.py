"""The task seam's hooks for tasks that learn more than one network (`Task.train_forward`,
`init_task_state`, `update_task_state`): a toy two-stream task with an EMA teacher and a
discriminator trained by its own optimiser inside the same pure step, as domain adaptation
(AdaptSegNet, DACS) needs.

Proved here: the step calls the model as the task says (BatchNorm statistics threaded through
both calls, as two hand-made `apply` calls give them), the task state is updated from the new
parameters and carried from step to step (the teacher equals a NumPy EMA of the recorded
parameters), the adversarial term reads the state of before the step, pmap and mesh on 4
devices equal 1 device for the model and the task state alike, and the task state survives a
checkpoint round trip.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segjax.tasks.semantic import SemanticTask
from segjax.train import optim, parallel, steps
from segjax.train.state import create_train_state, init_variables
from tests.train.test_device_invariance import assert_same_run
from tests.train.test_parallel import rel_diff
from tests.train.tiny import IGNORE, TinySegNet, make_batch

K = 3
RNG = jax.random.key(11)
EMA = 0.9
ADV = 0.5


def _disc(disc, probs):
    """A per-pixel logistic discriminator on class probabilities: logit of 'source'."""
    return probs @ disc["w"] + disc["b"]


class TwoStreamTask(SemanticTask):
    """Source images with labels, target images without; an EMA teacher and a discriminator."""

    train_keys = ("image", "label", "target_image")
    disc_tx = optax.sgd(0.5, momentum=0.9)  # (Adam would amplify rounding in tiny gradients)

    def train_forward(self, apply, batch, ctx):
        source = apply(batch["image"])
        target = apply(batch["target_image"])
        return {"logits": source["logits"], "target_logits": target["logits"]}

    def init_task_state(self, rng, variables):
        disc = {"w": 0.1 * jax.random.normal(rng, (K,)), "b": jnp.zeros(())}
        return {"teacher": variables["params"], "disc": disc,
                "disc_opt": self.disc_tx.init(disc)}

    def loss(self, outputs, batch, ctx):
        seg_sum, count = super().loss(outputs, batch, ctx)
        # Fool the discriminator of before this step: target pixels scored as 'source' (1).
        logit = _disc(ctx.task_state["disc"], jax.nn.softmax(outputs["target_logits"]))
        adv_sum = jnp.sum(optax.sigmoid_binary_cross_entropy(logit, 1.0))
        pixels = ctx.global_sum(jnp.float32(logit.size))
        return seg_sum + ADV * adv_sum * jax.lax.stop_gradient(ctx.global_sum(count)) / pixels, count

    def update_task_state(self, task_state, variables, outputs, batch, ctx):
        teacher = jax.tree.map(lambda t, p: EMA * t + (1 - EMA) * p, task_state["teacher"],
                               variables["params"])
        source = jax.nn.softmax(outputs["logits"])
        target = jax.nn.softmax(outputs["target_logits"])
        pixels = ctx.global_sum(jnp.float32(source[..., 0].size + target[..., 0].size))

        def disc_loss(disc):
            s = optax.sigmoid_binary_cross_entropy(_disc(disc, source), 1.0)
            t = optax.sigmoid_binary_cross_entropy(_disc(disc, target), 0.0)
            return (jnp.sum(s) + jnp.sum(t)) / pixels

        local, grads = jax.value_and_grad(disc_loss)(task_state["disc"])
        grads = ctx.global_sum(grads)
        updates, disc_opt = self.disc_tx.update(grads, task_state["disc_opt"], task_state["disc"])
        disc = optax.apply_updates(task_state["disc"], updates)
        state = {"teacher": teacher, "disc": disc, "disc_opt": disc_opt}
        return state, {"disc_loss": ctx.global_sum(local)}


def make_task():
    return TwoStreamTask(num_classes=K, ignore_label=IGNORE, boundary_iou=False)


@pytest.fixture(scope="module")
def setup():
    model = TinySegNet(num_classes=K, features=4)
    shape = (1, 9, 11, 3)
    variables = init_variables(model, jax.random.key(0), shape)
    tx, _ = optim.create_optimizer(variables["params"], base_lr=0.3, num_steps=10, momentum=0.9)
    task = make_task()
    state = create_train_state(model, None, shape, tx, variables=variables,
                               task_state=task.init_task_state(jax.random.key(1), variables))
    data = np.random.default_rng(7)
    batches = []
    for _ in range(3):
        b = make_batch(data, n=8, k=K)
        b["target_image"] = 2.0 + 0.5 * data.normal(size=b["image"].shape).astype(np.float32)
        batches.append(b)
    return model, state, batches


def run(mode, state, batches, task):
    if mode == "one":
        step = jax.jit(functools.partial(steps.train_step, task=task))
        put, get = (lambda b: b), (lambda s: s)
    else:
        par = parallel.Parallel(mode)
        step, put, get = par.train_step(task), par.shard_batch, par.unreplicate
        state = par.replicate(state)
    history, states = [], []
    for b in batches:
        state, m = step(state, put(b), RNG)
        history.append(jax.device_get(m))
        states.append(jax.device_get(get(state)))
    return states[-1], history, states


@pytest.fixture(scope="module")
def reference(setup):
    """The one-device run of the three batches."""
    _, state, batches = setup
    return run("one", state, batches, make_task())


def test_model_called_as_the_task_says_with_batch_stats_threaded(setup, reference):
    model, state, batches = setup
    new = reference[2][0]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    _, first = model.apply(variables, batches[0]["image"], train=True, mutable=["batch_stats"])
    _, second = model.apply({"params": state.params, **first}, batches[0]["target_image"],
                            train=True, mutable=["batch_stats"])
    assert rel_diff(first["batch_stats"], state.batch_stats) > 1e-2  # the source call moved them
    assert rel_diff(new.batch_stats, second["batch_stats"]) < 1e-6


def test_task_state_is_updated_from_the_new_parameters_and_carried(setup, reference):
    _, state, _ = setup
    final, history, states = reference
    teacher = jax.tree.map(np.asarray, state.task_state["teacher"])
    for s in states:  # the EMA of the parameters after each step, in NumPy
        teacher = jax.tree.map(lambda t, q: EMA * t + (1 - EMA) * np.asarray(q), teacher,
                               s.params)
    assert rel_diff(final.task_state["teacher"], teacher) < 1e-6
    assert rel_diff(final.task_state["disc"], state.task_state["disc"]) > 1e-2  # it trained
    assert [h["disc_loss"] > 0 for h in history] == [True] * 3


def test_adversarial_term_reads_the_discriminator_of_before_the_step(setup, reference):
    """The loss with the adversarial weight changes by exactly ADV x the mean BCE of the initial
    discriminator on the target pixels (computed here in NumPy), with segmentation pixels as
    the unit of the loss."""
    model, state, batches = setup
    history = reference[1]
    plain = SemanticTask(num_classes=K, ignore_label=IGNORE, boundary_iou=False)
    b = {k: batches[0][k] for k in ("image", "label")}
    _, ref = run("one", state.replace(task_state=None), [b], plain)[:2]
    out, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         batches[0]["target_image"], train=True, mutable=["batch_stats"])
    logits = np.asarray(out["logits"], np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    disc = jax.tree.map(np.asarray, state.task_state["disc"])
    z = probs @ disc["w"] + disc["b"]
    bce = np.mean(np.log1p(np.exp(-z)))  # -log sigmoid(z)
    np.testing.assert_allclose(history[0]["loss"] - ref[0]["loss"], ADV * bce, rtol=1e-4)


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_four_devices_equal_one_device_model_and_task_state(setup, reference, mode):
    _, state, batches = setup
    ref = reference
    got = run(mode, state, batches, make_task())
    assert_same_run(got[:2], ref[:2])
    assert rel_diff(got[0].task_state["teacher"], ref[0].task_state["teacher"]) < 1e-5
    # The discriminator's gradient is a difference of two sums over every pixel (source scored
    # 1, target 0), so float32 reduction order shows at ~1e-7 absolute on weights of ~1e-2.
    for key in ("disc", "disc_opt"):
        for a, b in zip(jax.tree.leaves(got[0].task_state[key]),
                        jax.tree.leaves(ref[0].task_state[key])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h["disc_loss"] for h in got[1]],
                               [h["disc_loss"] for h in ref[1]], rtol=1e-5)


def test_task_state_survives_a_checkpoint(reference, tmp_path):
    from segjax.train.checkpoint import Checkpointer

    trained = reference[2][0]
    ckpt = Checkpointer(str(tmp_path), keep=2, best_metric="miou")
    ckpt.save(1, trained)
    ckpt.wait()
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype),
                            trained)
    restored, step = ckpt.restore_latest(template)
    ckpt.close()
    assert step == 1
    for a, b in zip(jax.tree.leaves(restored.task_state), jax.tree.leaves(trained.task_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
