"""The oracle task: examples derived deterministically with their true Dice, the rank metrics
against a hand computation, a config written before the quality -> oracle rename still builds,
its loss on 4 host devices (pmap and mesh) equal to 1 device, and a 2-step run of the generic
trainer on synthetic_shapes/tiny (then the refinement command, and the run loaded as written
before the rename)."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from segjax.data import degrade
from segjax.models import create_model
from segjax.tasks import build_task, oracle
from segjax.train import optim
from segjax.train.state import create_train_state, init_variables
from tests.integration.test_train_loop import data_dir, tiny_overrides  # noqa: F401 (fixture)
from tests.train.test_device_invariance import assert_same_run, devices, one_device

IGNORE = 255


def _labels(rng, n=4, h=16, w=16):
    labels = np.zeros((n, h, w), np.int32)
    for i in range(n):
        labels[i, 2:9, 3:11] = 1 + i % 3
        labels[i, 10:14, 1:5] = 2
    labels[0, :, -2:] = IGNORE
    return labels


def test_degraded_examples_are_deterministic_with_their_dice(np_rng):
    labels = _labels(np_rng)
    images = np_rng.standard_normal(labels.shape + (3,)).astype(np.float32)
    probs = np.ones(len(degrade.BINS))
    a = oracle.degraded_examples(images, labels, seed=1, stream=0, position=3, probs=probs,
                                  ignore_label=IGNORE)
    b = oracle.degraded_examples(images, labels, seed=1, stream=0, position=3, probs=probs,
                                  ignore_label=IGNORE)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = oracle.degraded_examples(images, labels, seed=1, stream=0, position=4, probs=probs,
                                  ignore_label=IGNORE)
    assert not np.array_equal(a["mask"], c["mask"])
    for i in range(len(labels)):
        cls = a["class_id"][i]
        assert cls in (1, 2, 3) and np.any(labels[i] == cls)  # a present foreground class
        np.testing.assert_array_equal(a["truth"][i], labels[i] == cls)
        m, t, valid = a["mask"][i] > 0.5, a["truth"][i], labels[i] != IGNORE
        assert not np.any(m & ~valid)
        want = 2 * np.sum(m & t & valid) / (np.sum(m & valid) + np.sum(t & valid))
        assert a["quality"][i] == pytest.approx(want, abs=1e-6)
    # Row i of a batch starting at global offset 2 is row i + 2 of the whole batch.
    d = oracle.degraded_examples(images[2:], labels[2:], seed=1, stream=0, position=3,
                                  probs=probs, ignore_label=IGNORE, offset=2)
    np.testing.assert_array_equal(d["mask"], a["mask"][2:])


def test_metrics_by_hand():
    pred = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    true = np.array([0.0, 0.5, 0.2, 0.7, 1.0])
    got = oracle.oracle_metrics(pred, true)
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)  # no ties
    d = rank(pred) - rank(true)
    assert got["spearman"] == pytest.approx(1 - 6 * np.sum(d ** 2) / (5 * (25 - 1)))
    assert got["mae"] == pytest.approx(np.mean(np.abs(pred - true)))
    assert got["num_examples"] == 5
    assert oracle.oracle_metrics(np.full(3, 0.5), true[:3])["spearman"] == 0.0
    acc = oracle.OracleAccumulator()
    acc.update({}, {"pred": pred[:3]}, {"valid": np.array([1, 1, 0], bool), "quality": true[:3]})
    acc.update({}, {"pred": pred[3:]}, {"valid": np.array([1, 1], bool), "quality": true[3:]})
    assert acc.result()["num_examples"] == 4


def _old_style(config) -> ml_collections.ConfigDict:
    """`config` as a run written before the rename recorded it: `task: "quality"` and its
    section under `quality`."""
    d = config.to_dict()
    d["task"] = "quality"
    d["quality"] = d.pop("oracle")
    return ml_collections.ConfigDict(d)


def test_a_config_written_before_the_rename_still_builds():
    """Runs' config.json from before the quality -> oracle rename: `registry._RENAMED` reads the
    old task name and section as the oracle's (their values kept), the config check passes, and
    the old name cannot be registered again."""
    from experiments.configs import oracle as recipes
    from segjax.tasks import check_task_config, register, section

    config = recipes.get_config("demo")
    config.oracle.eval_copies, config.oracle.background = 3, None
    old = _old_style(config)
    assert "oracle" not in old and old.task == "quality"
    task = build_task(old, type("I", (), {"ignore_label": IGNORE})(), None)
    assert isinstance(task, oracle.OracleTask) and task.name == "oracle"
    assert task.eval_copies == 3 and task.background is None
    assert section(old, "oracle").to_dict() == section(config, "oracle").to_dict()
    check_task_config(old)
    with pytest.raises(ValueError, match="old name"):
        register("quality")(lambda config, info, data_dir: None)


@pytest.fixture(scope="module")
def oracle_state():
    model = create_model("oracle_gossip", num_classes=1, base_features=4, depth=2, hidden=8,
                         dropout=0.5)
    task = oracle.OracleTask(ignore_label=IGNORE)
    variables = init_variables(model, jax.random.key(0), (1, 12, 12, 3),
                               inputs=task.init_inputs((1, 12, 12, 3)))
    tx, _ = optim.create_optimizer(variables["params"], base_lr=0.3, num_steps=10, momentum=0.9)
    state = create_train_state(model, None, (1, 12, 12, 3), tx, variables=variables)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):
        labels = _labels(rng, n=8, h=12, w=12)
        images = rng.standard_normal(labels.shape + (3,)).astype(np.float32)
        ex = oracle.degraded_examples(images, labels, seed=0, stream=0, position=0,
                                       probs=None, ignore_label=IGNORE)
        batches.append({k: ex[k] for k in ("image", "mask", "quality")})
    return task, state, batches


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_loss_on_four_devices_equals_one_device(oracle_state, mode):
    """Dropout and BatchNorm inside, 2 SGD steps: loss, gradient norm, parameters and batch
    statistics on 4 host devices equal 1 device."""
    task, state, batches = oracle_state
    ref = one_device(state, batches, task)
    assert_same_run(devices(mode, state, batches, task), ref)


def test_two_step_training_run(tmp_path, data_dir):  # noqa: F811 (fixture)
    from segjax.train import loop
    from segjax.train.metric_writers import read_metrics
    from experiments.configs import oracle as recipes

    config = recipes.get_config("demo")
    config.lock()
    overrides = tiny_overrides(data_dir, num_train_steps=2, eval_every_steps=2,
                               checkpoint_every_steps=2, **{"model.hidden": 8,
                               "oracle.calibration_masks": 8, "dataset.min_scale": 0.75})
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    task = build_task(config, type("I", (), {"ignore_label": IGNORE})(), None)
    assert isinstance(task, oracle.OracleTask)
    result = loop.train_and_evaluate(config, str(tmp_path / "run"))
    records = read_metrics(str(tmp_path / "run"))
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in train] == [1, 2] and all(np.isfinite(r["loss"]) for r in train)
    assert evals[-1]["num_examples"] == 16 * 2  # 16 val images x 2 degradations
    assert result["spearman"] == evals[-1]["spearman"] and result["mae"] == evals[-1]["mae"]
    # MAE <= RMSE <= sqrt(MAE) for errors in [0, 1] (a relation of two independently reduced
    # statistics that fails if either is mis-normalised); Spearman in [-1, 1].
    assert 0 <= result["mae"] <= result["rmse"] <= np.sqrt(result["mae"]) + 1e-9
    assert -1 <= result["spearman"] <= 1
    # The refinement command on that run: report.json as DESIGN section 3 says.
    # In its own process, as a user runs it (its flags are defined under __main__ only).
    import json
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "refine"
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.oracle_refine", f"--oracle={tmp_path / 'run'}",
         f"--workdir={out}", "--num_images=4", "--steps=2", "--batch=4", "--num_overlays=1"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(out / "report.json"),
                       parse_constant=lambda name: pytest.fail(f"{name} in report.json"))
    entry = report["zeros"]
    assert {"dice_before", "dice_after", "steps", "spearman"} <= set(entry)
    assert 0 <= entry["steps"] <= 2 and entry["dice_before"] == 0.0  # empty vs present class
    # The step is the selection half's best; the reported Dice is the test half's at that step.
    assert entry["steps"] == int(np.argmax(entry["dice_per_step_select"]))
    assert entry["dice_after"] == pytest.approx(entry["dice_per_step"][entry["steps"]])
    # Images 0..3: the even indices choose the step, the odd ones are reported; the held-out
    # Spearman is over 16 val images x 2 fresh degradations; the paired gain's mean is the
    # difference of the means; IoU = Dice / (2 - Dice) image by image (0 for Dice 0).
    assert (report["num_images"], report["num_select"], report["num_test"]) == (4, 2, 2)
    assert report["oracle"]["num_examples"] == 32
    assert entry["dice_gain_ci95"][0] == pytest.approx(entry["dice_after"] - entry["dice_before"])
    assert entry["iou_before"] == 0.0 and entry["spearman"] == report["oracle"]["spearman"]
    assert os.path.exists(out / "report.md") and os.path.exists(out / "dice_vs_step.png")
    assert len(os.listdir(out / "overlays")) == 1
    # The same run as written before the rename (task "quality", section `quality`) still loads,
    # and the refinement command takes it as an oracle run.
    import shutil

    from experiments.oracle_refine import load_oracle
    from segjax.train.restore import load_run

    old_dir = tmp_path / "old_run"
    shutil.copytree(tmp_path / "run", old_dir)
    with open(old_dir / "config.json") as f:
        record = json.load(f)
    record["task"], record["quality"] = "quality", record.pop("oracle")
    with open(old_dir / "config.json", "w") as f:
        json.dump(record, f)
    run = load_run(str(old_dir), "latest")
    assert run.config.task == "quality" and run.task.name == "oracle" and run.step == 2
    assert load_oracle(str(old_dir), "latest")[-1].name == "oracle"
    # experiments.predict refuses the oracle run by name: its model needs an image and a mask.
    from experiments import predict

    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="'oracle' task does not predict single images"):
        predict.predict_files(str(tmp_path / "run"), [str(tmp_path / "a.png")],
                              str(tmp_path / "pred"))
