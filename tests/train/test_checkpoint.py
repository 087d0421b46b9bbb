"""segjax.train.checkpoint: round trip with optimizer state, last-N + best retention, damaged steps."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segjax.models.norm import BatchNorm
from segjax.train.checkpoint import Checkpointer, abstract_like
from segjax.train.state import TrainState


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3))(x)
        x = BatchNorm(use_running_average=not train)(x)
        return {"logits": nn.Conv(3, (1, 1))(x)}


def _state(np_rng, steps=2):
    model = TinyNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 5, 5, 2)))
    state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                              tx=optax.chain(optax.add_decayed_weights(1e-3),
                                             optax.sgd(0.1, momentum=0.9)),
                              batch_stats=variables["batch_stats"])
    for _ in range(steps):  # non-trivial momentum buffers and a jnp step counter
        grads = jax.tree.map(lambda p: jnp.asarray(np_rng.normal(size=p.shape), p.dtype),
                             state.params)
        state = state.apply_gradients(grads=grads)
    return state


def _assert_same(a, b):
    # Paths, not treedefs: the optax closures in the static fields differ between two states.
    la = jax.tree_util.tree_flatten_with_path(a)[0]
    lb = jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (_, x), (_, y) in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_roundtrip_restores_everything_with_types(tmp_path, np_rng):
    state = _state(np_rng)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    ckpt.save(2, state)
    template = _state(np_rng, steps=0)  # same structure, different values
    restored, step = ckpt.restore_latest(template)
    ckpt.close()
    assert step == 2
    _assert_same(restored, state)
    # Optimizer states keep their types (not plain lists) thanks to the template.
    assert type(restored.opt_state) is type(state.opt_state)
    assert type(restored.opt_state[1][0]) is type(state.opt_state[1][0])
    # The restored state trains on: one more update gives identical results.
    g = jax.tree.map(jnp.ones_like, state.params)
    _assert_same(restored.apply_gradients(grads=g).params, state.apply_gradients(grads=g).params)


def test_keeps_last_n_plus_best_across_restarts(tmp_path, np_rng):
    state = _state(np_rng, steps=0)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    mious = {2: 0.3, 4: 0.9, 6: 0.5, 8: 0.4}
    for step in (1, 2, 3, 4, 5, 6):
        ckpt.save(step, state, metrics={"miou": mious[step]} if step in mious else None)
    ckpt.close()
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)  # a new process: metrics read from disk
    ckpt.save(7, state)
    ckpt.save(8, state, metrics={"miou": 0.4})
    ckpt.wait()
    assert ckpt.all_steps() == [4, 7, 8]
    assert ckpt.best_step() == 4
    with pytest.raises(ValueError, match="already exists"):
        ckpt.save(8, state)
    ckpt.close()


def _damage(step_dir):
    for root, _, files in os.walk(step_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")


@pytest.mark.parametrize("with_metrics", [False, True])
def test_damaged_latest_falls_back_and_is_moved_aside(tmp_path, np_rng, caplog, with_metrics):
    states = {s: _state(np_rng, steps=s) for s in (1, 2, 3)}
    ckpt = Checkpointer(tmp_path / "ckpt", keep=5)
    for s, st in states.items():
        ckpt.save(s, st, metrics={"miou": 0.1 * s} if with_metrics else None)
    ckpt.close()
    _damage(tmp_path / "ckpt" / "3")
    # A reader falls back too, and leaves the damaged step where it is.
    reader = Checkpointer(tmp_path / "ckpt", read_only=True)
    restored, step = reader.restore_latest(states[1])
    reader.close()
    assert step == 2 and os.path.isdir(tmp_path / "ckpt" / "3")
    _assert_same(restored, states[2])
    ckpt = Checkpointer(tmp_path / "ckpt", keep=5)
    with caplog.at_level("WARNING"):
        restored, step = ckpt.restore_latest(states[1])
    assert step == 2
    _assert_same(restored, states[2])
    assert "step(s) [3]" in caplog.text and "skipping" in caplog.text
    assert os.path.isdir(tmp_path / "damaged_checkpoints" / "3")
    assert ckpt.all_steps() == [1, 2]
    ckpt.save(3, states[3])  # the step number is free again
    ckpt.close()


def test_nothing_restorable_and_bad_args(tmp_path, np_rng):
    state = _state(np_rng, steps=0)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1)
    assert ckpt.restore_latest(state) == (None, None)
    with pytest.raises(FileNotFoundError, match="no checkpoint step 5"):
        ckpt.restore(5, state)
    ckpt.close()
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path / "other", keep=0)


def test_abstract_like_keeps_shapes_and_dtypes():
    tree = {"a": jnp.zeros((2, 3), jnp.bfloat16), "b": np.ones(4, np.int64), "c": 3}
    abstract = abstract_like(tree)
    assert abstract["a"].shape == (2, 3) and abstract["a"].dtype == jnp.bfloat16
    assert abstract["b"].dtype == np.int64
    assert abstract["c"].shape == ()
