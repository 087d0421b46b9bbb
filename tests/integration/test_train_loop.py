"""End to end: the whole loop on tiny synthetic data (32x32 crops, a few steps).

* train 2 steps -> eval -> checkpoint -> resume for a 3rd step -> predict; work-dir contents;
  the loop's eval line equals an independent re-evaluation of the checkpoint with D1's
  `eval_step`;
* same seed => bit-identical metrics.jsonl and parameters; kill -9 after a checkpoint and a
  rerun => the same final metrics and parameters as the uninterrupted run, exactly;
* failures: NaN loss, unknown config key, incompatible resume, missing dataset - a clear message
  and a non-zero exit, checkpoints still restorable.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from segjax.tasks import semantic
from segjax.train import build, loop, pretrained
from segjax.train.checkpoint import Checkpointer
from segjax.train.restore import load_run
from segjax.train.metric_writers import read_metrics
from segjax.train.state import TrainState
from tests import compile_cache_env

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join(REPO, "experiments", "configs", "unet_shapes.py") + ":small"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """synthetic_shapes/tiny (48x48, 32 train / 16 val) generated once for the module."""
    from segjax.data import pipeline

    path = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare("synthetic_shapes/tiny", path)
    return path


def tiny_overrides(data_dir, **extra):
    """`--config.KEY=VALUE` overrides of the demo preset for a seconds-long run."""
    o = {
        "dataset.name": "synthetic_shapes/tiny", "dataset.data_dir": data_dir,
        "dataset.crop_size": 32, "eval.pad_to": 48, "eval.batch_size": 8, "batch_size": 8,
        "model.base_features": 8, "model.depth": 2,
        "num_train_steps": 4, "log_every_steps": 1, "eval_every_steps": 4,
        "checkpoint_every_steps": 2, "optimizer.base_lr": 0.05, "eval.num_visualizations": 2,
    }
    o.update(extra)
    return o


def tiny_config(data_dir, **extra):
    """unet_shapes.py:small with `tiny_overrides` applied (U-Net, base_features 8, depth 2)."""
    from experiments.configs import unet_shapes

    c = unet_shapes.get_config("small")
    c.lock()
    for key, value in tiny_overrides(data_dir, **extra).items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def cli_args(workdir, data_dir, **extra):
    args = [sys.executable, "-m", "experiments.deeplab_voc", f"--workdir={workdir}",
            f"--config={CONFIG}"]
    for key, value in tiny_overrides(data_dir, **extra).items():
        args.append(f"--config.{key}={value}")
    return args


def cli_env(cache_dir=None):
    env = dict(os.environ)  # conftest's 4 host devices and XLA flags are inherited
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    if cache_dir is not None:  # later runs reuse the first run's executables
        env.update(compile_cache_env(cache_dir))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def host_params(workdir, checkpoint="latest"):
    return jax.tree.map(np.asarray, load_run(str(workdir), checkpoint).variables)


def test_train_eval_checkpoint_resume_predict(tmp_path, data_dir, capsys):
    workdir = tmp_path / "run"
    config = tiny_config(data_dir, num_train_steps=3, eval_every_steps=2, parallelism="pmap")
    result = loop.train_and_evaluate(config, str(workdir))
    out = capsys.readouterr().out
    assert "done: metrics in" in out and "best by miou" in out  # where the results are

    # Work dir contents.
    recorded = json.load(open(workdir / "config.json"))
    assert recorded["model"]["name"] == "unet" and recorded["task"] == "semantic"
    assert set(recorded["numerics_env"]) == {"SEGJAX_WINOGRAD", "SEGJAX_CONV_IMPL"}
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    records = read_metrics(str(workdir))
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    assert [r["step"] for r in evals] == [2, 3]
    assert len(evals[0]["iou_per_class"]) == 6
    # mIoU is the mean of the defined per-class IoUs (null: a class absent from truth and
    # prediction); pixel accuracy is checked against an independent re-evaluation below.
    defined = [v for v in evals[0]["iou_per_class"] if v is not None]
    assert evals[0]["miou"] == pytest.approx(np.mean(defined), abs=1e-12)
    assert evals[-1]["miou"] == pytest.approx(result["miou"])
    # One panel per example (image | ground truth | prediction | legend), cropped to 48x48
    # and enlarged to 144 rows for the legend's text.
    pred_dir = workdir / "predictions" / "step_0000002"
    names = sorted(os.listdir(pred_dir))
    assert names == ["00000.png", "00001.png"]
    assert np.asarray(Image.open(pred_dir / names[0])).shape[0] == 144
    assert Checkpointer(workdir / "checkpoints").all_steps() == [2, 3]

    # Independent re-evaluation of checkpoint 2 with the pure eval_step (no TTA, jit, one
    # device, other batch size) against the loop's eval line at step 2.
    from segjax.data import pipeline
    from segjax.metrics import ConfusionAccumulator
    from segjax.tasks.semantic import SemanticTask
    from segjax.train import steps

    run = load_run(str(workdir), "2")
    info, model, variables = run.info, run.model, run.variables
    task = SemanticTask(num_classes=info.num_classes, ignore_label=info.ignore_label,
                        boundary_iou=False)
    acc = ConfusionAccumulator(info.num_classes)
    state = TrainState(step=0, apply_fn=model.apply, params=variables["params"], tx=None,
                       opt_state=None, batch_stats=variables["batch_stats"])
    eval_step = jax.jit(lambda params, stats, batch: steps.eval_step(
        state.replace(params=params, batch_stats=stats), batch, task=task)[0]["confusion"])
    for batch in pipeline.eval_batches("synthetic_shapes/tiny", split="validation",
                                       batch_size=5, pad_to=48, data_dir=data_dir):
        acc.update(eval_step(state.params, state.batch_stats,
                             {k: batch[k] for k in ("image", "label", "valid")}))
    again = acc.result()
    assert again["num_pixels"] == 16 * 48 * 48
    np.testing.assert_allclose(again["iou_per_class"], evals[0]["iou_per_class"], rtol=1e-6)

    # Resume: without checkpoint 3 the rerun continues from checkpoint 2 and redoes step 3
    # exactly; a finished run rerun adds nothing.
    import shutil

    shutil.rmtree(workdir / "checkpoints" / "3")
    capsys.readouterr()
    loop.train_and_evaluate(config, str(workdir))
    assert "resuming from checkpoint step 2" in capsys.readouterr().out
    assert read_metrics(str(workdir)) == records
    loop.train_and_evaluate(config, str(workdir))
    assert read_metrics(str(workdir)) == records

    # Incompatible resumes: refused, naming the key; the checkpoints are untouched. The run's
    # length is one of them (the poly schedule depends on it).
    for key, value in (("optimizer.base_lr", 0.5), ("num_train_steps", 4)):
        bad = tiny_config(data_dir, eval_every_steps=2, parallelism="pmap",
                          **{"num_train_steps": 3, key: value})
        with pytest.raises(loop.IncompatibleWorkdirError, match=key):
            loop.train_and_evaluate(bad, str(workdir))
    assert Checkpointer(workdir / "checkpoints").all_steps() == [2, 3]
    assert json.load(open(workdir / "config.json"))["num_train_steps"] == 3  # not overwritten

    # A damaged latest step (3): the rerun falls back to step 2, says so, and redoes step 3
    # exactly (same train line); eval options may change on resume (here: TTA).
    step3_train = [r for r in records if r["step"] == 3 and r["split"] == "train"]
    for root, _, files in os.walk(workdir / "checkpoints" / "3"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    capsys.readouterr()
    config_tta = tiny_config(data_dir, num_train_steps=3, eval_every_steps=2, parallelism="pmap",
                             **{"eval.tta": True, "eval.tta_scales": (0.75, 1.0)})
    tta = loop.train_and_evaluate(config_tta, str(workdir))
    out = capsys.readouterr().out
    assert "resuming from checkpoint step 2" in out and "damaged checkpoints moved" in out
    assert os.path.isdir(workdir / "damaged_checkpoints" / "3")
    records = read_metrics(str(workdir))
    assert [r for r in records if r["step"] == 3 and r["split"] == "train"] == step3_train
    assert records[-1]["split"] == "validation" and records[-1]["miou"] == tta["miou"]

    # Predict CLI function on two odd-sized images.
    from experiments import predict

    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(37, 45), (50, 33)]):  # one 64x64 bucket: one compile
        paths.append(str(img_dir / f"im{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    written = predict.predict_files(str(workdir), paths, str(tmp_path / "out"))
    assert len(written) == 6
    mask = np.asarray(Image.open(tmp_path / "out" / "im0_labels.png"))
    assert mask.shape == (37, 45) and mask.max() < 6


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, data_dir):
    workdir = tmp_path / "nan"
    config = tiny_config(data_dir, num_train_steps=4, checkpoint_every_steps=1,
                         **{"optimizer.base_lr": 1e30})
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 2\b.*checkpoint is step 1") as e:
        loop.train_and_evaluate(config, str(workdir))
    assert e.value.step == 2
    ckpt = Checkpointer(workdir / "checkpoints")
    assert ckpt.all_steps() == [1]
    ckpt.close()
    # The checkpoint named is the one saved, and it is finite (its update was checked).
    leaves = jax.tree.leaves(host_params(workdir))
    assert leaves and all(np.all(np.isfinite(x)) for x in leaves)


def test_non_finite_update_is_never_checkpointed(tmp_path, data_dir, monkeypatch):
    """A finite loss whose update is not (an infinite learning rate, given to the optimiser past
    the config check, which refuses `optimizer.base_lr=inf` by name): the step is refused before
    its state is saved, although its loss was fine."""
    from segjax.train import build

    real = build.optimizer_kwargs
    monkeypatch.setattr(build, "optimizer_kwargs", lambda c: {**real(c), "base_lr": float("inf")})
    workdir = tmp_path / "inf"
    config = tiny_config(data_dir, num_train_steps=2, checkpoint_every_steps=1)
    with pytest.raises(loop.NonFiniteLossError,
                       match=r"updated parameter is not finite .*at step 1\b.*No checkpoint") as e:
        loop.train_and_evaluate(config, str(workdir))
    assert e.value.step == 1
    ckpt = Checkpointer(workdir / "checkpoints")
    assert ckpt.all_steps() == []
    ckpt.close()


def test_cli_unknown_key_and_missing_dataset_fail_clearly(tmp_path, data_dir):
    bad_key = subprocess.run(cli_args(tmp_path / "a", data_dir) + ["--config.optimizer.lr=1"],
                             capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=300)
    assert bad_key.returncode != 0
    assert "optimizer.lr" in bad_key.stderr
    missing = subprocess.run(
        cli_args(tmp_path / "b", str(tmp_path / "empty"), **{"dataset.name": "voc2012",
                                                            "dataset.train_split": "train_aug",
                                                            "dataset.eval_split": "val"}),
        capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=300)
    assert missing.returncode == 1
    assert "error:" in missing.stderr and "VOC" in missing.stderr
    assert "Traceback" not in missing.stderr


def _run_cli(workdir, data_dir, cache_dir, **extra):
    proc = subprocess.run(cli_args(workdir, data_dir, **extra), capture_output=True, text=True,
                          cwd=REPO, env=cli_env(cache_dir), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_kill9_resume_and_same_seed_are_bit_identical(tmp_path, data_dir):
    """Run A uninterrupted; run B (same seed) killed with SIGKILL after checkpoint 2, rerun."""
    steps = {"num_train_steps": 6, "eval_every_steps": 3, "checkpoint_every_steps": 2}
    a, cache = tmp_path / "a", tmp_path / "jax_cache"
    _run_cli(a, data_dir, cache, **steps)

    b = tmp_path / "b"
    proc = subprocess.Popen(cli_args(b, data_dir, **steps), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO, env=cli_env(cache))
    killed = False
    for line in proc.stdout:  # progress lines: "step 3/6 ..." comes after checkpoint 2
        if line.startswith("step 3/"):
            deadline = time.time() + 60
            while not (b / "checkpoints" / "2").is_dir() and time.time() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
    proc.wait(timeout=60)
    assert killed and proc.returncode == -signal.SIGKILL
    done = [r["step"] for r in read_metrics(str(b)) if r["split"] == "train"]
    assert max(done) < 6  # it really was interrupted
    rerun = _run_cli(b, data_dir, cache, **steps)
    assert "resuming from checkpoint step" in rerun.stdout
    resumed_from = int(rerun.stdout.split("resuming from checkpoint step")[1].split()[0])
    assert 2 <= resumed_from < 6

    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    pa, pb = host_params(a), host_params(b)
    for (path, x), (_, y) in zip(jax.tree_util.tree_flatten_with_path(pa)[0],
                                 jax.tree_util.tree_flatten_with_path(pb)[0]):
        np.testing.assert_array_equal(x, y, err_msg=str(path))


def test_kfold_run_evaluates_the_held_out_fold(tmp_path, data_dir):
    """dataset.fold: evaluation reads the held-out quarter of the 32 train images (8 × 48²
    pixels, not the 16 validation images), labelled as that fold in metrics.jsonl."""
    config = tiny_config(data_dir, num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
    config.dataset.fold, config.dataset.num_folds = 1, 4
    loop.train_and_evaluate(config, str(tmp_path))
    evals = [r for r in read_metrics(str(tmp_path)) if r["split"] != "train"]
    assert [r["split"] for r in evals] == ["train/fold1of4"]
    assert evals[0]["num_pixels"] == 8 * 48 * 48
    # Rerunning the finished fold reports its eval and writes nothing new.
    before = read_metrics(str(tmp_path))
    again = loop.train_and_evaluate(config, str(tmp_path))
    assert read_metrics(str(tmp_path)) == before and again["miou"] == evals[0]["miou"]


def test_leave_p_out_run_evaluates_the_held_out_pair(tmp_path, data_dir):
    """dataset.leave_out=2: evaluation reads exactly the two held-out train images (2 × 48²
    pixels), labelled with the fold; class weights count only the images trained on."""
    config = tiny_config(data_dir, num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
    config.dataset.fold, config.dataset.leave_out = 3, 2
    config.loss.class_weights = "inverse_frequency"
    loop.train_and_evaluate(config, str(tmp_path))
    evals = [r for r in read_metrics(str(tmp_path)) if r["split"] != "train"]
    assert [r["split"] for r in evals] == ["train/leave2out/fold3"]
    assert evals[0]["num_pixels"] == 2 * 48 * 48


def test_init_from_a_training_run_class_weights_and_a_training_subset(tmp_path, data_dir, capsys):
    """Transfer: `init_from=<work dir of another run>` starts from that run's newest checkpoint;
    `loss.class_weights` resolves from the pixel counts of the examples trained on; eval lines
    carry Boundary IoU."""
    from segjax.data import balance

    source = tmp_path / "source"
    loop.train_and_evaluate(tiny_config(data_dir, num_train_steps=2, eval_every_steps=2),
                            str(source))
    evals = [r for r in read_metrics(str(source)) if r["split"] == "validation"]
    assert 0 < evals[-1]["boundary_iou"] <= 1 and len(evals[-1]["boundary_iou_per_class"]) == 6

    target = tiny_config(data_dir, num_train_steps=1, init_from=str(source),
                         **{"loss.class_weights": "median_frequency",
                            "dataset.num_train_examples": 8})
    info = build.dataset_info(target)
    model = build.build_model(target, info.num_classes)
    state, _ = build.create_state(target, model, 1,
                                  init=pretrained.initializer(target, model.num_classes))
    want = host_params(source)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), want["params"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.batch_stats),
                 want["batch_stats"])
    assert "newest checkpoint of the training run" in capsys.readouterr().out

    weights = semantic.resolve_class_weights(target, info, data_dir)
    counts = balance.class_pixel_counts(info, data_dir, "train")[:8]
    np.testing.assert_allclose(weights, balance.loss_class_weights(counts, "median_frequency"))
    assert semantic.loss_kwargs(target, weights)["class_weights"] == weights
    target.loss.class_weights = "1,2,3"
    with pytest.raises(ValueError, match="6 non-negative"):
        semantic.resolve_class_weights(target, info, data_dir)
    target.loss.class_weights = "0,1,1,1,1,2.5"
    assert semantic.resolve_class_weights(target, info, data_dir) == (0, 1, 1, 1, 1, 2.5)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        pretrained.load_pretrained(str(tmp_path / "missing"))
