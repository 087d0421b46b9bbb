"""The sweep runner with a fake, deterministic train function (the real loop is tested elsewhere)."""

import json
import os

import ml_collections
import pytest

from segjax import ablation


def _base():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.lr = 0.1
    c.model = ml_collections.ConfigDict({"name": "unet", "multi_grid": (1, 1, 1)})
    c.lock()
    return c


def _fake_train(calls):
    def train(config, workdir):
        calls.append((config.model.name, config.lr, config.seed))
        miou = {"unet": 0.6, "deeplab": 0.7}[config.model.name] + config.lr / 10 + 0.01 * config.seed
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": 1, "split": "train", "loss": 1.0 - miou}) + "\n")
            f.write(json.dumps({"step": 2, "split": "val", "miou": miou - 0.5}) + "\n")
            f.write(json.dumps({"step": 4, "split": "val", "miou": miou}) + "\n")
    return train


def test_parse_sweep_values_and_errors():
    s = ablation.parse_sweep("model.multi_grid=(1,2,4),(1,1,1)")
    assert s == ablation.Sweep("model.multi_grid", ((1, 2, 4), (1, 1, 1)))
    assert ablation.parse_sweep("lr=0.1,1e-2").values == (0.1, 0.01)
    assert ablation.parse_sweep("model.name=unet,deeplab").values == ("unet", "deeplab")
    for bad in ("lr", "=1,2", "lr=", "lr=1,1"):
        with pytest.raises(ValueError):
            ablation.parse_sweep(bad)
    assert ablation.parse_seeds("0, 2,1") == [0, 2, 1]
    with pytest.raises(ValueError):
        ablation.parse_seeds("0,0")


def test_make_config_sets_values_and_rejects_unknown_keys():
    base = _base()
    c = ablation.make_config(base, (("lr", 1), ("model.name", "deeplab")), seed=3)
    assert (c.lr, c.model.name, c.seed) == (1.0, "deeplab", 3) and isinstance(c.lr, float)
    assert (base.lr, base.model.name, base.seed) == (0.1, "unet", 0)  # base untouched
    with pytest.raises(ValueError, match="model.nmae"):
        ablation.make_config(base, (("model.nmae", "x"),), seed=0)
    with pytest.raises(ValueError, match="lr"):
        ablation.make_config(base, (("lr", "fast"),), seed=0)


def test_sweep_runs_grid_skips_finished_and_reports_identically(tmp_path):
    sweeps = [ablation.parse_sweep("model.name=unet,deeplab"), ablation.parse_sweep("lr=0.1,0.2")]
    calls = []
    results = ablation.run_sweep(_base(), sweeps, [0, 1, 2], str(tmp_path), train_fn=_fake_train(calls), log=lambda s: None)
    assert len(calls) == 12 and len(set(calls)) == 12
    paths = ablation.write_report(results, sweeps, str(tmp_path), command="python -m experiments.ablate ...")
    first = {k: open(p, "rb").read() for k, p in paths.items()}

    # Second invocation: nothing retrains, tables are byte-identical.
    results2 = ablation.run_sweep(_base(), sweeps, [0, 1, 2], str(tmp_path), train_fn=_fake_train(calls), log=lambda s: None)
    assert len(calls) == 12
    paths2 = ablation.write_report(results2, sweeps, str(tmp_path), command="python -m experiments.ablate ...")
    assert {k: open(p, "rb").read() for k, p in paths2.items()} == first

    md = first["md"].decode()
    # deeplab, lr 0.2: miou = 0.7 + 0.02 + 0.01*seed -> mean 0.73, std 0.01; the final eval line wins.
    assert "| deeplab | 0.2 | 3 | 0.7300 ± 0.0100 |" in md
    # Paired vs the first cell (unet, 0.1): +0.11 for every seed, zero variance, p = 0.
    assert "| model.name=deeplab, lr=0.2 | 3 | 0.1100 | [0.1100, 0.1100] | 0.000 |" in md
    rows = first["csv"].decode().splitlines()
    assert rows[0] == "model.name,lr,seed,miou" and len(rows) == 13
    assert first["png"][:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupted_run_is_rerun_in_the_same_directory(tmp_path):
    sweeps = [ablation.parse_sweep("lr=0.1")]
    calls = []

    def crash(config, workdir):
        calls.append(workdir)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ablation.run_sweep(_base(), sweeps, [0], str(tmp_path), train_fn=crash, log=lambda s: None)
    results = ablation.run_sweep(_base(), sweeps, [0], str(tmp_path), train_fn=_fake_train(calls), log=lambda s: None)
    assert calls[0] == ablation.run_dir(str(tmp_path), (("lr", 0.1),), 0)
    assert ablation.metric_value(results[0].final, "miou") == pytest.approx(0.61)
    assert ablation.metric_value(results[0].final, "train/loss") == pytest.approx(0.39)
    with pytest.raises(ValueError, match="accuracy"):
        ablation.metric_value(results[0].final, "accuracy")


def test_baseline_must_be_a_cell(tmp_path):
    sweeps = [ablation.parse_sweep("lr=0.1,0.2")]
    results = ablation.run_sweep(_base(), sweeps, [0, 1], str(tmp_path), train_fn=_fake_train([]), log=lambda s: None)
    with pytest.raises(ValueError, match="baseline"):
        ablation.write_report(results, sweeps, str(tmp_path), baseline=(("lr", 0.3),))
    md = open(ablation.write_report(results, sweeps, str(tmp_path), baseline=(("lr", 0.2),))["md"]).read()
    assert "against lr=0.2" in md and "| lr=0.1 | 2 | -0.0100 |" in md
