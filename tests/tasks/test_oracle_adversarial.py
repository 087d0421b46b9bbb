"""The oracle trained on its own ascent masks (`segjax.tasks.oracle_adversarial`).

Proved here: the replaced rows hold masks the current oracle's ascent really reaches (an
iterate of `oracle_ascent` run here from zeros or from the degraded mask), cleared at ignored
pixels, with targets equal to a NumPy Dice of those masks (soft, and hard on the rounded mask);
the other rows are untouched; the train step's loss is the MSE of the model on those rows (in
NumPy); a step on 4 devices (pmap) equals 1 device; the config: the adversarial presets build
and pass the check, the plain presets' resolved configs carry no new key, and a
start not in the list or a per-device batch `ascent_every` does not divide is refused by name.
"""

import functools

import jax
import numpy as np
import pytest

from segjax.models import create_model
from segjax.tasks import oracle, oracle_adversarial, oracle_refine
from segjax.tasks.base import StepContext
from segjax.train import optim, steps
from segjax.train.state import create_train_state, init_variables
from tests.train.test_device_invariance import RNG, assert_same_run, devices, one_device

IGNORE = 255
HW = 8


def _batch(rng, n=8):
    labels = np.zeros((n, HW, HW), np.int32)
    for i in range(n):
        r, c = rng.integers(1, 5, 2)
        labels[i, r:r + 4, c:c + 3] = 1 + i % 2
    labels[1, :, -2:] = IGNORE
    labels[2, -2:, :] = IGNORE
    images = rng.standard_normal(labels.shape + (3,)).astype(np.float32)
    ex = oracle.degraded_examples(images, labels, seed=0, stream=0, position=0, probs=None,
                                  ignore_label=IGNORE)
    out = {k: ex[k] for k in ("image", "mask", "quality")}
    out["truth"] = ex["truth"].astype(np.float32)
    out["pixel_valid"] = (labels != IGNORE).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def setup():
    model = create_model("oracle_gossip", num_classes=1, base_features=4, depth=2, hidden=8,
                         dropout=0.0)
    task = oracle_adversarial.AdversarialOracleTask(ignore_label=IGNORE, ascent_every=2,
                                                    ascent_steps=2, ascent_step_size=0.3)
    shape = (1, HW, HW, 3)
    variables = init_variables(model, jax.random.key(0), shape, inputs=task.init_inputs(shape))
    tx, _ = optim.create_optimizer(variables["params"], base_lr=0.3, num_steps=10, momentum=0.9)
    state = create_train_state(model, None, shape, tx, variables=variables)
    rng = np.random.default_rng(3)
    return model, task, state, [_batch(rng), _batch(rng)]


@pytest.fixture(scope="module")
def reference(setup):
    """Two train steps on one device (jit)."""
    _, task, state, batches = setup
    return one_device(state, batches, task)


def _ctx(state, key):
    return StepContext(rng=key, apply_fn=state.apply_fn,
                       variables={"params": state.params, "batch_stats": state.batch_stats})


@pytest.mark.parametrize("target", ["soft", "hard"])
def test_ascent_rows_are_ascent_iterates_with_their_numpy_dice(setup, target):
    model, _, state, batches = setup
    task = oracle_adversarial.AdversarialOracleTask(
        ignore_label=IGNORE, ascent_every=2, ascent_steps=2, ascent_step_size=0.3,
        ascent_target=target)
    b = batches[0]
    mask, quality = task.ascent_examples(b, _ctx(state, jax.random.key(5)))
    mask, quality = np.asarray(mask), np.asarray(quality)
    # Odd rows (global positions 1, 3, ...) untouched.
    np.testing.assert_array_equal(mask[1::2], b["mask"][1::2])
    np.testing.assert_array_equal(quality[1::2], b["quality"][1::2])
    # Even rows: an iterate 1..2 of the current oracle's ascent from zeros or the degraded mask.
    apply = lambda v, x, m: model.apply(v, x, m, train=False)["quality"]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    iterates = [np.asarray(oracle_refine.oracle_ascent(
        apply, variables, b["image"][::2], start, steps=2, step_size=0.3,
        keep_steps=(1, 2))["masks"]) * b["pixel_valid"][None, ::2]
        for start in (np.zeros_like(b["mask"][::2]), b["mask"][::2])]
    starts = []
    for j, row in enumerate(range(0, 8, 2)):
        m = mask[row]
        found = [(s, t) for s in range(2) for t in range(2)
                 if np.allclose(m, (iterates[s][t, j] > 0.5) if target == "hard"
                                else iterates[s][t, j], atol=1e-6)]
        assert found, f"row {row} is no ascent iterate"
        starts.append(found[0][0])
        assert not np.any(m[b["pixel_valid"][row] == 0])  # ignored pixels cleared
        t = b["truth"][row]
        if target == "hard":
            assert set(np.unique(m)) <= {0.0, 1.0}
            want = 2 * np.sum(m * t) / (m.sum() + t.sum()) if m.sum() + t.sum() else 1.0
        else:
            want = (2 * np.sum(m * t) + 1e-6) / (m.sum() + t.sum() + 1e-6)
        assert quality[row] == pytest.approx(want, abs=1e-5)
        if target == "soft":
            assert not np.allclose(m, b["mask"][row])  # a new mask
    assert sorted(set(starts)) == [0, 1]  # "mixed": both starts drawn in this batch


def test_loss_is_the_mse_on_the_ascent_rows(setup, reference):
    """Step 1's loss = mean of (model on the replaced batch - targets)^2, in NumPy; the
    replaced rows are those of `ascent_examples` with the step's task key."""
    model, task, state, batches = setup
    history = reference[1]
    step_rng = jax.random.fold_in(RNG, state.step)
    model_rng, task_rng = jax.random.split(step_rng)
    mask, target = task.ascent_examples(batches[0], _ctx(state, task_rng))
    out, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         batches[0]["image"], mask, train=True, mutable=["batch_stats"],
                         rngs={"dropout": model_rng})
    err = np.asarray(out["quality"], np.float64) - np.asarray(target, np.float64)
    assert np.abs(np.asarray(target) - batches[0]["quality"]).max() > 1e-3  # targets replaced
    np.testing.assert_allclose(history[0]["loss"], np.mean(err ** 2), rtol=1e-5)


def test_pmap_on_four_devices_equals_one_device(setup, reference):
    """(BatchNorm offsets sum every pixel's gradient: ~1e-8 absolute of float32 noise.)"""
    _, task, state, batches = setup
    assert_same_run(devices("pmap", state, batches, task), reference, param_atol=1e-7)


def test_config_presets_and_refusals(setup):
    from experiments.configs import oracle as recipes
    from segjax.tasks import build_task
    from segjax.train import config_utils

    for preset in ("demo", "lesion"):
        plain, adv = recipes.get_config(preset), recipes.get_config(preset + "_adv")
        assert "oracle_adversarial" not in plain and plain.task == "oracle"
        a = adv.to_dict()
        assert a.pop("oracle_adversarial")["ascent_every"] == 4
        assert a.pop("task") == "oracle_adversarial"
        p = plain.to_dict()
        p.pop("task")
        assert a == p  # the adversarial preset is the plain one plus its section
        config_utils.check_config(adv)
    info = type("I", (), {"ignore_label": IGNORE})()
    config = recipes.get_config("demo_adv")
    config.oracle_adversarial.ascent_start = "ones"
    with pytest.raises(ValueError, match="ascent_start must be one of"):
        config_utils.check_config(config)
    with pytest.raises(ValueError, match="ascent_start must be one of"):
        build_task(config, info, None)
    _, task, state, batches = setup  # every 2nd example of a per-device batch of 3
    b = {k: v[:3] for k, v in batches[0].items()}
    with pytest.raises(ValueError, match="divisible by 2, got 3"):
        jax.eval_shape(functools.partial(steps.train_step, task=task), state, b, RNG)
