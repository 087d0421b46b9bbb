"""The study specs under experiments/ablations: every cell builds a valid config and model, and
the study runner writes byte-identical reports (with a fake, deterministic train function)."""

import json
import os

import numpy as np
import pytest

from experiments import ablations
from experiments.ablations import runner
from segjax.train import sweep
from segjax.models import create_model
from segjax.tasks import semantic
from segjax.train import build, config_utils


@pytest.mark.parametrize("name", ablations.STUDIES)
def test_every_cell_of_every_study_builds_a_valid_config_and_model(name):
    study = ablations.load_study(name)
    assert study.question and study.parts
    names = [p.name for p in study.parts]
    assert len(set(names)) == len(names)
    for part in study.parts:
        base = runner.load_base(part.base)
        resolve = lambda v: v.replace("{part:source}", "/nonexistent") if isinstance(v, str) else v  # noqa: E731
        for key, value in part.overrides.items():
            sweep._set(base, key, resolve(value))
        sweeps = [sweep.parse_sweep(s) for s in part.sweeps]
        cells = sweep.grid(sweeps)
        assert sweep.parse_baseline(part.baseline, sweeps) in (None, *cells)
        for cell in cells:
            config = sweep.make_config(base, cell, part.seeds[0], resolve=resolve)
            config_utils.check_config(config)
            info = build.dataset_info(config)
            assert info.name.startswith(("synthetic_shapes", "synthetic_lesions"))  # generated, no download
            create_model(config.model.name, num_classes=info.num_classes,
                         **config_utils.model_overrides(config.model))
            semantic.loss_kwargs(config)
        for metric in part.metrics:  # every metric name parses against a plausible eval record
            record = {"val": {"miou": 0.5, "boundary_iou": 0.4, "pixel_accuracy": 0.9,
                              "mean_accuracy": 0.6, "iou_per_class": [0.1] * 6, "mask_ap": 0.5,
                              "mask_ap50": 0.9, "mask_ap75": 0.6, "box_ap": 0.6,
                              "spearman": 0.8, "mae": 0.1}}
            assert sweep.metric_value(record, metric) >= 0


def test_unknown_study_is_named():
    with pytest.raises(ValueError, match="unknown study 'nope'"):
        ablations.load_study("nope")


def _fake_train(calls):
    def train(config, workdir):
        calls.append(workdir)
        seen = config.init_from
        value = 0.5 + 0.01 * config.seed + (0.2 if seen else 0.0) + (
            0.05 if config.optimizer.freeze_backbone else 0.0)
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 2, "split": "validation", "miou": value,
                                "boundary_iou": value / 2, "init_from": seen}) + "\n")
    return train


def test_runner_resolves_parts_shares_runs_and_rewrites_identical_reports(tmp_path):
    study = ablations.load_study("transfer")
    calls = []
    path = runner.run_study(study, str(tmp_path), train_fn=_fake_train(calls), seeds=(0, 1),
                            log=lambda s: None)
    # source: seed 0 only when --seeds overrides? The override applies to every part: 2 runs;
    # target: 2 x 2 cells x 2 seeds = 8 runs.
    assert len(calls) == 10 and len(set(calls)) == 10
    first = open(path, "rb").read()
    source_dir = os.path.join(tmp_path, "runs")
    finals = [json.load(open(os.path.join(d, sweep.RESULT_FILE)))["final"]["validation"]
              for d in calls[2:]]
    inits = {f["init_from"] for f in finals}
    assert len(inits) == 2 and "" in inits
    pretrained = (inits - {""}).pop()
    assert pretrained.startswith(source_dir) and os.path.isdir(pretrained)

    # Rerun: nothing trains again and every report is byte-identical.
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "transfer") for f in fs)
    before = {f: open(f, "rb").read() for f in files}
    runner.run_study(study, str(tmp_path), train_fn=_fake_train(calls), seeds=(0, 1),
                     log=lambda s: None)
    assert len(calls) == 10
    assert {f: open(f, "rb").read() for f in files} == before
    text = first.decode()
    assert "# Study: transfer" in text and "init_from={part:source}" in text
    assert str(tmp_path) not in text  # reports do not depend on the work dir
    # pretrained + frozen: 0.5 + 0.2 + 0.05 vs scratch fine-tuned 0.5 (+0.01 * seed both).
    assert "| init_from={part:source}, optimizer.freeze_backbone=True | 2 | 0.2500 |" in text


def test_part_command_is_a_valid_ablate_command():
    part = ablations.load_study("augmentation").parts[0]
    cmd = runner.part_command(part, "DIR/augmentation/geometric", "miou")
    assert cmd.startswith("python -m experiments.ablate --base=experiments/configs/shapes_ablation.py:unet")
    assert "--config.dataset.num_train_examples=128" in cmd
    assert "'--sweep=dataset.min_scale,dataset.max_scale=(1.0,1.0),(0.5,2.0)'" in cmd


def test_domain_adaptation_summary_matches_scipy(tmp_path):
    """The study's summary of finished runs (found at the real digests): each arm's mean and
    Student-t CI and the paired difference against source only equal scipy's, seed by seed;
    unfinished runs are left out."""
    import json

    import numpy as np
    from scipy import stats as sps

    from experiments.ablations import domain_adaptation as da

    values = {"source_only": [0.31, 0.42, 0.37], "fda": [0.40, 0.47, 0.45]}
    for seed in range(3):
        dirs = da.run_dirs(str(tmp_path), seed)
        for arm, vs in values.items():
            os.makedirs(dirs["restyled", arm])
            with open(os.path.join(dirs["restyled", arm], "result.json"), "w") as f:
                json.dump({"final": {"validation": {"miou": vs[seed]}}}, f)
        os.makedirs(dirs["restyled", "dacs"])  # unfinished: no result.json
    text = da.summary(str(tmp_path), figure=str(tmp_path / "f.png"))
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) == {"arm", "source only",
                         "FDA (β 0.01, entropy)"}
    fda, src = np.array(values["fda"]), np.array(values["source_only"])
    lo, hi = sps.t.interval(0.95, 2, loc=fda.mean(), scale=sps.sem(fda))
    assert f"{fda.mean():.3f} ± {fda.std(ddof=1):.3f} | [{lo:.3f}, {hi:.3f}]" in rows[
        "FDA (β 0.01, entropy)"]
    d = fda - src
    dlo, dhi = sps.t.interval(0.95, 2, loc=d.mean(), scale=sps.sem(d))
    p = sps.ttest_rel(fda, src).pvalue
    assert rows["FDA (β 0.01, entropy)"].endswith(
        f"{d.mean():+.3f} [{dlo:+.3f}, {dhi:+.3f}] | {p:.3f} |")
    assert os.path.getsize(tmp_path / "f.png") > 0


def _report(heldout, ascent, curve, select, tv_weight, start="zeros"):
    best = int(np.argmax(select))
    return {"oracle": {"spearman": heldout}, "tv_weight": tv_weight,
            start: {"ascent_spearman": ascent, "dice_after": curve[best], "steps": best,
                    "dice_last_step": curve[-1], "dice_per_step": curve,
                    "dice_per_step_select": select, "spearman": heldout,
                    "dice_before": curve[0],
                    "quality_per_step": [0.2 + 0.005 * i for i in range(len(curve))]}}


def test_oracle_ascent_refines_finished_oracles_once_and_summary_matches_scipy(tmp_path,
                                                                               monkeypatch):
    """`refine` runs `experiments.oracle_refine` (the part's steps, each refinement's flags) only
    on finished oracles without that report, from the segmenter only once the part's segmenter
    of that seed has finished; the summary's per-arm mean ± std and the paired arm - plain
    differences (mean, Student-t CI, p) equal scipy's, seed by seed; the chosen-TV arm is, per
    oracle, the grid weight whose selection half peaks highest; the segmenter start has its own
    table, with the Dice before the ascent."""
    import subprocess

    from scipy import stats as sps

    from experiments.ablations import oracle_ascent as oa

    dirs = oa.run_dirs(str(tmp_path))
    assert {arm for _, arm, _ in dirs} == {"plain", "adversarial"} and len(dirs) == 18
    rng = np.random.default_rng(0)
    curves, selects, falls = {}, {}, {}
    for seed in range(3):
        for arm in ("plain", "adversarial"):
            run = dirs["lesion", arm, seed]
            open(os.path.join(run if os.path.isdir(run) else os.makedirs(run) or run,
                              "result.json"), "w").close()
            for refinement in oa.REFINES:
                if (arm, seed) == ("adversarial", 2) or (refinement and seed > 0):
                    continue  # finished but not refined yet
                curve, select = (list(np.clip(np.cumsum(rng.uniform(-0.002, 0.003, 501)), 0, 1))
                                 for _ in range(2))
                curves[arm + refinement, seed] = curve
                selects[arm + refinement, seed] = max(select)
                falls[arm + refinement, seed] = curve[int(np.argmax(select))] - curve[-1]
                os.makedirs(oa.refine_dir(run, "lesion", refinement))
                with open(os.path.join(oa.refine_dir(run, "lesion", refinement), "report.json"),
                          "w") as f:
                    json.dump(_report(float(rng.uniform(0.8, 0.9)), float(rng.uniform(0, 0.5)),
                                      curve, select, float(oa.REFINES[refinement][0][3:] or 0)),
                              f)
    os.makedirs(dirs["shapes", "plain", 0])  # unfinished: neither refined nor reported
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    oa.refine(str(tmp_path), log=lambda _: None)
    run = dirs["lesion", "adversarial", 2]
    assert [c[1:] for c in calls] == [
        ["-m", "experiments.oracle_refine", f"--oracle={r}",
         f"--workdir={oa.refine_dir(r, 'lesion', tv)}", "--steps=500", "--num_images=32",
         "--batch=32", *([f"--tv_weight={tv[5:] or 3}"] if tv else [])]
        for tv, r in (("", run), *((w, dirs["lesion", a, s]) for w in (" + TV", " + TV1", " + TV10")
                                   for a in ("plain", "adversarial") for s in (1, 2)))]
    assert oa.refine_dir(run, "lesion", " + TV").endswith("refine_zeros_500_tv3")

    text = oa.summary(str(tmp_path), figure=str(tmp_path / "f.png"))
    assert "**shapes**" not in text
    last = list(oa.MEASURES).index("last") + 1
    arms_table, diff_table = [{line.split(" | ")[0][2:]: line.split(" | ")[1:]
                               for line in block.splitlines() if line.startswith("| ")}
                              for block in text.split("\n\n")[1:3]]
    assert list(arms_table)[1:] == [
        "plain", "adversarial", "plain + TV", "adversarial + TV", "plain + TV1",
        "adversarial + TV1", "plain + TV10", "adversarial + TV10", "plain + TV chosen",
        "adversarial + TV chosen"]
    # The chosen arm (seed 0 only: the one seed with every weight refined) is the weight whose
    # selection half peaks highest; its row reports that refinement's test half.
    chosen = {}
    for arm in ("plain", "adversarial"):
        w = max(("", " + TV1", " + TV", " + TV10"), key=lambda r: selects[arm + r, 0])
        chosen[arm] = {"": 0, " + TV1": 1, " + TV": 3, " + TV10": 10}[w]
        assert arms_table[arm + " + TV chosen"][0] == "1"
        assert arms_table[arm + " + TV chosen"][last] == f"{curves[arm + w, 0][-1]:.3f}"
    assert (f"plain + TV chosen: seed 0 → {chosen['plain']}; adversarial + TV chosen: seed 0 → "
            f"{chosen['adversarial']}.") in text
    plain = np.array([curves["plain", s][-1] for s in range(3)])
    assert arms_table["plain"][0] == "3" and arms_table["adversarial + TV"][0] == "1"
    assert arms_table["plain"][last] == f"{plain.mean():.3f} ± {plain.std(ddof=1):.3f}"
    a = [falls["adversarial", s] for s in range(2)]
    b = [falls["plain", s] for s in range(2)]
    d = np.subtract(a, b)
    lo, hi = sps.t.interval(0.95, 1, loc=d.mean(), scale=sps.sem(d))
    p = sps.ttest_rel(a, b).pvalue
    column = list(oa.COMPARED).index("fall")
    assert diff_table["adversarial"][column].rstrip(" |") == (
        f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}], p {p:.3f}")
    one = falls["adversarial + TV", 0] - falls["plain", 0]
    assert diff_table["adversarial + TV"][column].rstrip(" |") == f"{one:+.3f} (1 seed)"
    assert os.path.getsize(tmp_path / "f.png") > 0

    # From the segmenter: seed 0's lesion segmenter finishes; each finished oracle of seed 0
    # refines its probabilities (--nofrom_zeros: that start only), into its own directory.
    segmenters = oa.segmenter_dirs(str(tmp_path))
    assert set(segmenters) == {(p, s) for p in oa.PARTS for s in range(3)}
    assert len(set(segmenters.values()) | set(dirs.values())) == 27  # 9 segmenters, 18 oracles
    os.makedirs(segmenters["lesion", 0])
    open(os.path.join(segmenters["lesion", 0], "result.json"), "w").close()
    calls.clear()
    oa.refine(str(tmp_path), refinements=("",), log=lambda _: None, starts=("segmenter",))
    assert [c[1:] for c in calls] == [
        ["-m", "experiments.oracle_refine", f"--oracle={dirs['lesion', a, 0]}",
         f"--workdir={oa.refine_dir(dirs['lesion', a, 0], 'lesion', '', 'segmenter')}",
         f"--segmenter={segmenters['lesion', 0]}", "--nofrom_zeros", "--steps=150",
         "--num_images=32", "--batch=32"] for a in ("plain", "adversarial")]
    assert oa.refine_dir(run, "lesion", "", "segmenter").endswith("refine_segmenter_150")
    before = {}
    for arm in ("plain", "adversarial"):
        curve = list(np.clip(0.6 + np.cumsum(rng.uniform(-0.003, 0.002, 151)), 0, 1))
        before[arm] = curve[0]
        out = oa.refine_dir(dirs["lesion", arm, 0], "lesion", "", "segmenter")
        os.makedirs(out)
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(_report(0.9, 0.5, curve, curve, 0.0, start="segmenter"), f)
    text = oa.summary(str(tmp_path), figure=str(tmp_path / "g.png"))
    block = text.split("**lesion, from the under-trained segmenter**")[1].split("\n\n")[1]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in block.splitlines()
            if line.startswith("| ")}
    assert rows["arm"][1] == "Dice at the start" and list(rows)[1:] == ["plain", "adversarial"]
    for arm in ("plain", "adversarial"):
        assert rows[arm][:2] == ["1", f"{before[arm]:.3f}"]
    assert os.path.getsize(tmp_path / "g.png") > 0
