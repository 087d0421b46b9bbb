"""pmap and mesh on 4 host devices equal one device with the same global batch.

Ignored pixels are spread very unevenly over the devices and the model has BatchNorm, so both
global loss normalisation and synchronised BatchNorm are needed for equality; two negative
controls show that the comparison does fail without them.
"""

import functools
import logging

import jax
import numpy as np
import pytest

from segjax.tasks.semantic import SemanticTask
from segjax.train import optim, parallel, steps
from segjax.train.state import create_train_state, init_variables
from tests.train.tiny import IGNORE, TinySegNet, make_batch, make_task

K = 3
TASK = make_task(K)
RNG = jax.random.key(11)


def rel_diff(a, b):
    """Largest over leaves of ||a - b|| / ||b||."""
    return max(
        float(np.linalg.norm(np.asarray(x) - np.asarray(y)) / max(np.linalg.norm(np.asarray(y)), 1e-30))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.fixture(scope="module")
def setup():
    assert jax.device_count() == 4
    model = TinySegNet(num_classes=K, features=4)
    variables = init_variables(model, jax.random.key(0), (1, 9, 11, 3))
    tx, sched = optim.create_optimizer(
        variables["params"], base_lr=0.2, num_steps=10, momentum=0.9, weight_decay=1e-3, backbone_lr_mult=0.5
    )
    state = create_train_state(model, None, (1, 9, 11, 3), tx, variables=variables)
    data = np.random.default_rng(7)
    batches = [make_batch(data, n=8, k=K) for _ in range(3)]
    valid_counts = [(b["label"].reshape(4, -1) != IGNORE).sum(1) for b in batches]
    assert max(c.max() / c.min() for c in valid_counts) > 5  # very uneven per device
    ref_step = jax.jit(functools.partial(steps.train_step, task=TASK, learning_rate_fn=sched))
    ref, ref_metrics = state, []
    for b in batches:
        ref, m = ref_step(ref, b, RNG)
        ref_metrics.append(jax.device_get(m))
    return dict(state=state, sched=sched, batches=batches, ref=ref, ref_metrics=ref_metrics)


def run(par, state, batches, task=TASK, sched=None, tweak=None):
    dstate = par.replicate(state)
    if tweak is not None:
        dstate = tweak(dstate)
    step = par.train_step(task, learning_rate_fn=sched)
    history = []
    with jax.log_compiles(True):
        for b in batches:
            dstate, m = step(dstate, par.shard_batch(b), RNG)
            history.append(jax.device_get(m))
    return par.unreplicate(dstate), history


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_four_devices_equal_one_device(setup, mode, caplog):
    par = parallel.Parallel(mode)
    assert par.num_devices == 4 and par.local_device_count == 4
    with caplog.at_level(logging.WARNING):
        host, history = run(par, setup["state"], setup["batches"], sched=setup["sched"])
    compiles = [r.getMessage()[:60] for r in caplog.records if r.getMessage().startswith("Compiling ")]
    assert len(compiles) == 1, compiles  # the step compiles once: no recompile after step 1
    ref = setup["ref"]
    assert int(host.step) == 3
    assert rel_diff(host.params, ref.params) <= 1e-5
    assert rel_diff(host.batch_stats, ref.batch_stats) <= 1e-5
    assert rel_diff(host.opt_state, ref.opt_state) <= 1e-5
    for got, want in zip(history, setup["ref_metrics"]):
        for key in ("loss", "grad_norm", "valid_pixels", "lr"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
    # The parameters did move, so equality is not trivial.
    assert rel_diff(setup["state"].params, ref.params) > 1e-2


def test_per_device_mean_loss_would_not_match(setup):
    """Negative control: a mean of per-device means (each device normalises by its own count)."""

    class PerDeviceMean(SemanticTask):
        def loss(self, outputs, batch, ctx):
            s, c = super().loss(outputs, batch, ctx)
            return s / c, 1.0

    task = PerDeviceMean(num_classes=K, ignore_label=IGNORE, boundary_iou=False)
    host, _ = run(parallel.Parallel("pmap"), setup["state"], setup["batches"], task=task)
    assert rel_diff(host.params, setup["ref"].params) > 1e-3


def test_unsynchronised_batchnorm_would_not_match(setup):
    """Negative control: pmap with BatchNorm statistics per device instead of over the axis."""
    unsynced = lambda s: parallel._with_axis(s, None)  # noqa: E731
    host, _ = run(parallel.Parallel("pmap"), setup["state"], setup["batches"], tweak=unsynced)
    assert rel_diff(host.batch_stats, setup["ref"].batch_stats) > 1e-3


def test_recompile_guard_catches_flax_replicate(setup, caplog):
    """Negative control for the compile count above: flax's `replicate` names its axis
    '_device_put_sharded', so the first pmapped step compiles twice."""
    import flax.jax_utils

    tweak = lambda s: flax.jax_utils.replicate(flax.jax_utils.unreplicate(s))  # noqa: E731
    with caplog.at_level(logging.WARNING):
        run(parallel.Parallel("pmap"), setup["state"], setup["batches"][:2], tweak=tweak)
    assert sum(r.getMessage().startswith("Compiling ") for r in caplog.records) == 2


def test_eval_step_sums_over_devices_and_returns_rows_in_order(setup):
    batch = dict(setup["batches"][0], valid=np.array([True, False, True, True, True, True, False, True]))
    task = make_task(K, boundary_iou=True)
    want_sums, want_rows = jax.jit(functools.partial(steps.eval_step, task=task))(setup["ref"], batch)
    for mode in ("pmap", "mesh"):
        par = parallel.Parallel(mode)
        sums, rows = par.eval_step(task)(par.replicate(setup["ref"]), par.shard_batch(batch))
        sums = par.host_value(sums)
        for key in ("confusion", "boundary_intersection", "boundary_union"):
            np.testing.assert_array_equal(sums[key], np.asarray(want_sums[key]))
            assert sums[key].dtype == np.int32
        np.testing.assert_array_equal(par.local_rows(rows["pred"]), np.asarray(want_rows["pred"]))


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_replicate_round_trip_and_layouts(setup, mode):
    par = parallel.Parallel(mode)
    dstate = par.replicate(setup["state"])
    leaf = dstate.params["head"]["kernel"]
    host_leaf = setup["state"].params["head"]["kernel"]
    if mode == "pmap":
        assert leaf.shape == (4,) + host_leaf.shape
        assert dstate.apply_fn.__self__.axis_name == parallel.AXIS
    else:
        assert leaf.shape == host_leaf.shape and leaf.sharding.is_fully_replicated
        assert dstate.apply_fn.__self__.axis_name is None
    back = par.unreplicate(dstate)
    assert rel_diff(back.params, setup["state"].params) == 0.0
    assert back.apply_fn.__self__.axis_name is None
    sharded = par.shard_batch(setup["batches"][0])
    expected = (4, 2, 9, 11) if mode == "pmap" else (8, 9, 11)
    assert sharded["label"].shape == expected
    np.testing.assert_array_equal(np.asarray(sharded["label"]).reshape(8, 9, 11), setup["batches"][0]["label"])


def test_bad_arguments_raise_value_error(setup):
    with pytest.raises(ValueError, match="parallelism"):
        parallel.Parallel("dp")
    par = parallel.Parallel("mesh")
    with pytest.raises(ValueError, match="divisible by the 4 local devices"):
        par.shard_batch({"image": np.zeros((6, 4, 4, 3), np.float32)})
    with pytest.raises(ValueError, match="apply"):
        par.replicate(setup["state"].replace(apply_fn=lambda *a, **k: None))


def test_initialize_distributed_single_process_is_a_no_op(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert parallel.initialize_distributed(None) is False
    assert parallel.initialize_distributed({"coordinator_address": "127.0.0.1:1", "num_processes": 1}) is False
    with pytest.raises(ValueError, match="process_id"):
        parallel.initialize_distributed({"distributed": {"coordinator_address": "127.0.0.1:1", "num_processes": 2}})
