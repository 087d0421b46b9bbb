"""Plugins from the user's own code: examples/plugin registers a model, a loss, a task and a
dataset without editing segjax, and the commands train, resume and predict with them.

The example's Tversky loss is checked against a NumPy transcription of its formula (Salehi et al.
2017), and the registries' refusals (twice the same name, an unknown key of a task's section) are
checked by name.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import compile_cache_env

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PLUGIN_DIR = os.path.join(REPO, "examples", "plugin")
CONFIG = os.path.join(PLUGIN_DIR, "config.py")


@pytest.fixture(scope="module")
def plugin():
    """The example module, imported the way its config imports it."""
    sys.path.insert(0, PLUGIN_DIR)
    try:
        import my_segmentation
    finally:
        sys.path.remove(PLUGIN_DIR)
    return my_segmentation


def _env(cache_dir=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PLUGIN_DIR, REPO, env.get("PYTHONPATH", "")])
    if cache_dir is not None:  # later processes reuse the first one's executables
        env.update(compile_cache_env(cache_dir))
    return env


def _run(*args, cache_dir=None):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=_env(cache_dir),
                          capture_output=True, text=True, timeout=600)


def test_tversky_equals_a_numpy_transcription(plugin, np_rng):
    import jax

    logits = np_rng.normal(size=(3, 5, 6, 4)).astype(np.float32)
    labels = np_rng.integers(0, 4, (3, 5, 6)).astype(np.int32)
    labels[0, :2] = 255
    alpha, beta = 0.3, 0.7
    total, count = plugin.tversky(logits, labels, ignore_label=255, alpha=alpha, beta=beta)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = 0.0
    for n in range(3):
        valid = labels[n] != 255
        losses = []
        for k in range(4):
            g = (labels[n] == k) & valid
            tp = (p[n, ..., k] * g).sum()
            fp = (p[n, ..., k] * (~g & valid)).sum()
            fn = ((1 - p[n, ..., k]) * g).sum()
            losses.append(1 - tp / (tp + alpha * fp + beta * fn))
        want += np.mean(losses)
    assert float(count) == 3
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    # Gradients flow (the trainer differentiates it).
    g = jax.grad(lambda x: plugin.tversky(x, labels, ignore_label=255)[0])(logits)
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


def test_registries_refuse_twice_the_same_name(plugin):
    import segjax
    from segjax.data import register_dataset

    with pytest.raises(ValueError, match="tiny_fcn.*twice"):
        segjax.models.register("tiny_fcn")(plugin.tiny_fcn)
    with pytest.raises(ValueError, match="tversky.*twice"):
        segjax.losses.register("tversky")(plugin.tversky)
    with pytest.raises(ValueError, match="foreground.*twice"):
        segjax.tasks.register("foreground")(plugin.build_foreground)
    with pytest.raises(ValueError, match="shapes_fg.*twice"):
        register_dataset(plugin._shapes_fg, name="shapes_fg")


def test_config_checks_the_plugin_task_section(plugin):
    del plugin
    from segjax.train import config_utils

    sys.path.insert(0, PLUGIN_DIR)
    try:
        config = config_utils.load_config_file(CONFIG)
    finally:
        sys.path.remove(PLUGIN_DIR)
    config_utils.check_config(config)
    config.foreground.alpah = 0.5  # misspelt: refused by name, not ignored
    with pytest.raises(ValueError, match=r"config.foreground.alpah .*'foreground' task.*alpha"):
        config_utils.check_config(config)
    del config.foreground["alpah"]
    config.loss = {"kind": "ce"}  # the semantic task's section, not this task's
    with pytest.raises(ValueError, match=r"config.loss is neither a trainer key"):
        config_utils.check_config(config)


@pytest.mark.slow
def test_out_of_tree_plugin_trains_resumes_and_predicts(tmp_path):
    """`experiments.train --config=examples/plugin/config.py` (user's model, loss, task and
    dataset), then a resume from its first checkpoint reproduces the last steps exactly, then
    `experiments.predict --run` draws with the user's task (imported from config.json)."""
    workdir = tmp_path / "run"
    data_dir = tmp_path / "tfds"
    args = ["experiments.train", f"--workdir={workdir}", f"--config={CONFIG}",
            f"--config.dataset.data_dir={data_dir}", "--config.num_train_steps=4",
            "--config.log_every_steps=1", "--config.eval_every_steps=4",
            "--config.checkpoint_every_steps=2"]
    cache = tmp_path / "jax_cache"
    proc = _run(*args, cache_dir=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fg_iou" in proc.stdout
    recorded = json.load(open(workdir / "config.json"))
    assert recorded["imports"] == ["my_segmentation"] and recorded["task"] == "foreground"

    def train_losses():
        lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
        return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}

    first = train_losses()
    assert sorted(first) == [1, 2, 3, 4]
    evals = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    assert [r for r in evals if r["split"] != "train"][-1]["fg_iou"] >= 0

    # Resume from step 2: steps 3 and 4 again, bit for bit.
    import shutil

    shutil.rmtree(workdir / "checkpoints" / "4")
    proc = _run(*args, cache_dir=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint step 2" in proc.stdout
    again = train_losses()
    assert again[3] == first[3] and again[4] == first[4]

    image = np.random.default_rng(0).integers(0, 256, (40, 44, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    proc = _run("experiments.predict", f"--run={workdir}", f"--images={tmp_path / 'a.png'}",
                f"--workdir={tmp_path / 'pred'}", cache_dir=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = np.asarray(Image.open(tmp_path / "pred" / "a_labels.png"))
    assert labels.shape == (40, 44) and set(np.unique(labels)) <= {0, 1}


def test_a_model_without_dtype_or_axis_name_gets_defaults_or_says_what_to_add(plugin):
    """tiny_fcn takes neither `dtype` nor `axis_name`: float32 (the config default) is fine and
    mesh needs no axis; bfloat16 and pmap fail saying what to add to the model."""
    import jax
    import jax.numpy as jnp

    from segjax.models import create_model
    from segjax.train import parallel
    from segjax.train.state import TrainState

    model = create_model("tiny_fcn", num_classes=2, dtype="float32", features=4)
    assert isinstance(model, plugin.TinyFCN)
    with pytest.raises(ValueError, match=r"takes no `dtype` argument.*add `dtype"):
        create_model("tiny_fcn", num_classes=2, dtype="bfloat16")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    state = TrainState(step=0, apply_fn=model.apply, params=variables["params"], tx=None,
                       opt_state=None, batch_stats={})
    assert parallel._with_axis(state, None) is state
    with pytest.raises(ValueError, match=r"no `axis_name` field.*axis_name: str \| None = None"):
        parallel._with_axis(state, "batch")
