"""segjax.train.sweep, the seeded sweep runner, with a fake, deterministic train function (the real
loop is tested elsewhere)."""

import copy
import json
import os

import ml_collections
import pytest

from segjax.train import sweep


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
    s = sweep.parse_sweep("model.multi_grid=(1,2,4),(1,1,1)")
    assert s == sweep.Sweep("model.multi_grid", ((1, 2, 4), (1, 1, 1)))
    assert sweep.parse_sweep("lr=0.1,1e-2").values == (0.1, 0.01)
    assert sweep.parse_sweep("model.name=unet,deeplab").values == ("unet", "deeplab")
    for bad in ("lr", "=1,2", "lr=", "lr=1,1"):
        with pytest.raises(ValueError):
            sweep.parse_sweep(bad)
    assert sweep.parse_seeds("0, 2,1") == [0, 2, 1]
    with pytest.raises(ValueError):
        sweep.parse_seeds("0,0")


def test_make_config_sets_values_and_rejects_unknown_keys():
    base = _base()
    c = sweep.make_config(base, (("lr", 1), ("model.name", "deeplab")), seed=3)
    assert (c.lr, c.model.name, c.seed) == (1.0, "deeplab", 3) and isinstance(c.lr, float)
    assert (base.lr, base.model.name, base.seed) == (0.1, "unet", 0)  # base untouched
    with pytest.raises(ValueError, match="model.nmae"):
        sweep.make_config(base, (("model.nmae", "x"),), seed=0)
    with pytest.raises(ValueError, match="lr"):
        sweep.make_config(base, (("lr", "fast"),), seed=0)


def test_sweep_runs_grid_skips_finished_and_reports_identically(tmp_path):
    sweeps = [sweep.parse_sweep("model.name=unet,deeplab"), sweep.parse_sweep("lr=0.1,0.2")]
    calls = []
    results = sweep.run_sweep(_base(), sweeps, [0, 1, 2], str(tmp_path), train_fn=_fake_train(calls), log=lambda s: None)
    assert len(calls) == 12 and len(set(calls)) == 12
    paths = sweep.write_report(results, sweeps, str(tmp_path), command="python -m experiments.ablate ...")
    first = {k: open(p, "rb").read() for k, p in paths.items()}

    # Second invocation: nothing retrains, tables are byte-identical.
    results2 = sweep.run_sweep(_base(), sweeps, [0, 1, 2], str(tmp_path), train_fn=_fake_train(calls), log=lambda s: None)
    assert len(calls) == 12
    paths2 = sweep.write_report(results2, sweeps, str(tmp_path), command="python -m experiments.ablate ...")
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
    sweeps = [sweep.parse_sweep("lr=0.1")]
    calls = []

    def crash(config, workdir):
        calls.append(workdir)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        sweep.run_sweep(_base(), sweeps, [0], str(tmp_path), train_fn=crash, log=lambda s: None)
    results = sweep.run_sweep(_base(), sweeps, [0], str(tmp_path), train_fn=_fake_train(calls), log=lambda s: None)
    assert calls[0] == sweep.run_dir(str(tmp_path), (("lr", 0.1),), 0)
    assert sweep.metric_value(results[0].final, "miou") == pytest.approx(0.61)
    assert sweep.metric_value(results[0].final, "train/loss") == pytest.approx(0.39)
    with pytest.raises(ValueError, match="accuracy"):
        sweep.metric_value(results[0].final, "accuracy")


def test_baseline_must_be_a_cell(tmp_path):
    sweeps = [sweep.parse_sweep("lr=0.1,0.2")]
    results = sweep.run_sweep(_base(), sweeps, [0, 1], str(tmp_path), train_fn=_fake_train([]), log=lambda s: None)
    with pytest.raises(ValueError, match="baseline"):
        sweep.write_report(results, sweeps, str(tmp_path), baseline=(("lr", 0.3),))
    md = open(sweep.write_report(results, sweeps, str(tmp_path), baseline=(("lr", 0.2),))["md"]).read()
    assert "against lr=0.2" in md and "| lr=0.1 | 2 | -0.0100 |" in md


def test_joint_sweep_sets_keys_together_and_validates_widths():
    c = ml_collections.ConfigDict({"seed": 0, "lo": 1.0, "hi": 1.0})
    s = sweep.parse_sweep("lo,hi=(1.0,1.0),(0.5,2.0)")
    assert s.key == "lo,hi" and sweep.grid([s])[1] == (("lo,hi", (0.5, 2.0)),)
    config = sweep.make_config(c, sweep.grid([s])[1], seed=1)
    assert (config.lo, config.hi, config.seed) == (0.5, 2.0, 1)
    with pytest.raises(ValueError, match="tuple of 2"):
        sweep.parse_sweep("lo,hi=(1.0,1.0),0.5")
    with pytest.raises(ValueError, match="swept twice"):
        sweep.grid([s, sweep.parse_sweep("hi=1,2")])


def test_metric_value_indexes_lists_and_names_missing_keys():
    final = {"train": {"loss": 0.3}, "val": {"miou": 0.5, "iou_per_class": [0.9, 0.1, 0.2]}}
    assert sweep.metric_value(final, "iou_per_class[1]") == 0.1
    assert sweep.metric_value(final, "val/miou") == 0.5
    assert sweep.metric_value(final, "loss") == 0.3
    with pytest.raises(ValueError, match="no entry 3"):
        sweep.metric_value(final, "iou_per_class[3]")
    with pytest.raises(ValueError, match="not in the run's final metrics"):
        sweep.metric_value(final, "boundary_iou")


def test_parse_baseline_fills_unnamed_keys_and_rejects_unswept_ones():
    sweeps = [sweep.parse_sweep("model.name=unet,deeplab"), sweep.parse_sweep("lr=0.1,0.2")]
    assert sweep.parse_baseline("", sweeps) is None
    assert sweep.parse_baseline("lr=0.2", sweeps) == (("model.name", "unet"), ("lr", 0.2))
    with pytest.raises(ValueError, match="not swept"):
        sweep.parse_baseline("seed=1", sweeps)


def test_config_run_dir_is_shared_by_equal_configs_only(tmp_path):
    sweeps = [sweep.parse_sweep("lr=0.1,0.2")]
    calls = []
    place = lambda cell, seed, config: sweep.config_run_dir(str(tmp_path / "runs"), config)  # noqa: E731
    sweep.run_sweep(_base(), sweeps, [0, 1], str(tmp_path / "a"), train_fn=_fake_train(calls),
                    log=lambda s: None, run_dir_fn=place)
    # A second sweep sharing the lr=0.1 cell trains only its new cell.
    results = sweep.run_sweep(_base(), [sweep.parse_sweep("lr=0.1,0.3")], [0, 1],
                              str(tmp_path / "b"), train_fn=_fake_train(calls),
                              log=lambda s: None, run_dir_fn=place)
    assert len(calls) == 6 and [c[1] for c in calls[4:]] == [0.3, 0.3]
    assert len(os.listdir(tmp_path / "runs")) == 6
    assert [r.cell[0][1] for r in results] == [0.1, 0.1, 0.3, 0.3]


def test_an_option_at_its_neutral_value_keeps_the_digest(monkeypatch, tmp_path):
    """An option added after runs were cached stays out of the digest at its neutral value (so
    the cache stays valid) and enters it at any other value."""
    base = ml_collections.ConfigDict({"lr": 0.1, "uda": {"method": "dacs"}})
    before = sweep.config_run_dir(str(tmp_path), base)
    monkeypatch.setitem(sweep.DIGEST_NEUTRAL, "uda.jitter", False)
    added = copy.deepcopy(base)
    added.uda.jitter = False
    assert sweep.config_run_dir(str(tmp_path), added) == before
    added.uda.jitter = True
    assert sweep.config_run_dir(str(tmp_path), added) != before
    top = copy.deepcopy(base)  # the same name in another section is not neutral
    top.jitter = False
    assert sweep.config_run_dir(str(tmp_path), top) != before


def test_a_cell_with_another_model_leaves_out_the_base_models_fields():
    """Sweeping model.name over the DeepLab demo: unet gets neither backbone_width nor
    output_stride (set for deeplabv3plus_resnet18), and a field the cell sets is kept."""
    from experiments.configs import deeplab_voc

    base = deeplab_voc.get_config("demo")
    config = sweep.make_config(base, (("model.name", "unet"),), 0)
    assert config.model.backbone_width is None and config.model.output_stride is None
    assert base.model.backbone_width == 16  # the base is not modified
    same = sweep.make_config(base, (("model.name", "deeplabv3plus_resnet18"),), 0)
    assert same.model.backbone_width == 16 and same.model.output_stride == 8
    kept = sweep.make_config(base, (("model.name,model.output_stride", ("unet", 16)),), 0)
    assert kept.model.output_stride == 16 and kept.model.backbone_width is None
