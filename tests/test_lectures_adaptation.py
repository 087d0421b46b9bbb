"""Figure 13 (style transfer and domain adaptation) of segjax.lectures.

The figure is written without runs once (FDA's row alone, the other rows saying what to pass); its
FDA numbers are recomputed with a NumPy transcription of the authors' `FDA_source_to_target_np`;
the domain-adaptation runs are found in a fake study directory laid out with the study's real
digests, and predicted through a stand-in for the task seam; an `experiments.style` work
directory written by the style command's own writer is read back.
"""

import json
import os

import numpy as np
import pytest

# Digests of the real domain_adaptation study's seed-0 runs (its runs/ directory on the machine
# where it trained): a changed config, study or digest would move them and orphan those runs.
REAL_DIGESTS = {("restyled", "source_only"): "4a891cdd28552719",
                ("restyled", "dacs"): "e8684c94f823f855",
                ("noise", "fda"): "fd0109c1b1762b3c"}


@pytest.fixture(scope="module")
def figure13(tmp_path_factory):
    from segjax import lectures

    out = tmp_path_factory.mktemp("fig13")
    result = lectures.write(str(out), [13])
    return out, result


def fda_numpy(source: np.ndarray, target: np.ndarray, beta: float) -> np.ndarray:
    """YanchaoYang/FDA's `FDA_source_to_target_np` + `low_freq_mutate_np`, on HWC images."""
    fs, ft = np.fft.fft2(source, axes=(0, 1)), np.fft.fft2(target, axes=(0, 1))
    amp_s, pha_s, amp_t = np.abs(fs), np.angle(fs), np.abs(ft)
    a_s, a_t = np.fft.fftshift(amp_s, axes=(0, 1)), np.fft.fftshift(amp_t, axes=(0, 1))
    h, w = source.shape[:2]
    b = int(np.floor(min(h, w) * beta))
    c_h, c_w = h // 2, w // 2
    a_s[c_h - b:c_h + b + 1, c_w - b:c_w + b + 1] = a_t[c_h - b:c_h + b + 1, c_w - b:c_w + b + 1]
    mixed = np.fft.ifftshift(a_s, axes=(0, 1)) * np.exp(1j * pha_s)
    return np.real(np.fft.ifft2(mixed, axes=(0, 1)))


def test_without_runs_only_fda_is_drawn_and_the_rest_says_what_to_pass(figure13):
    from segjax import lectures

    out, result = figure13
    figure = lectures.BY_NUMBER[13]
    assert result["pngs"] == {13: str(out / figure.png)}
    assert (out / figure.png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / figure.png).stat().st_size > 50000
    numbers = json.loads((out / "numbers.json").read_text())["13"]
    assert numbers["uda"] is None
    assert [b["beta"] for b in numbers["fda"]["betas"]] == [0.01, 0.05, 0.09]
    for method in ("gatys", "fast", "adain"):
        assert numbers["style"]["methods"][method]["run"] is None
    index = (out / "index.md").read_text()
    assert f"13. [**{figure.title}**]({figure.png})" in index
    for flag in ("--style_gatys_run=DIR", "--style_fast_run=DIR", "--style_adain_run=DIR",
                 "--uda_study=DIR"):
        assert flag in index
    assert "`python -m experiments.style --method=adain --content=astronaut" in index
    assert "`python -m experiments.ablations --study=domain_adaptation --workdir=DIR`" in index


def test_fda_numbers_equal_a_numpy_transcription(figure13):
    """Per beta: the window half-size, the mean colour, the RMS change from the source and the
    share of values outside 0..255 of the swapped image, against the authors' NumPy code."""
    from segjax.data.builders.synthetic_shapes import BUILDER_CONFIGS, generate

    fda = figure13[1]["numbers"]["13"]["fda"]
    configs = {c.name: c for c in BUILDER_CONFIGS}
    images = {}
    for role in ("source", "target"):
        name = fda[role]["dataset"].split("/")[1]
        images[role] = generate(configs[name], "validation", fda[role]["index"])["image"]
        np.testing.assert_allclose(fda[role]["channel_mean"], images[role].mean((0, 1)), atol=1e-4)
    assert fda["source"]["dataset"] == "synthetic_shapes/clean"
    assert fda["target"]["dataset"] == "synthetic_shapes/restyled"
    source = images["source"].astype(np.float64)
    rms = []
    for entry in fda["betas"]:
        want = fda_numpy(source, images["target"].astype(np.float64), entry["beta"])
        assert entry["half_size"] == int(np.floor(128 * entry["beta"]))
        np.testing.assert_allclose(entry["channel_mean"], want.mean((0, 1)), atol=2e-3)
        assert entry["rms_change"] == pytest.approx(np.sqrt(np.mean((want - source) ** 2)), abs=2e-3)
        assert entry["clipped"] == pytest.approx(np.mean((want < 0) | (want > 255)), abs=1e-3)
        rms.append(entry["rms_change"])
    assert rms[0] < rms[1] < rms[2]  # a wider window moves the image further


def _fake_study(root, digests):
    for digest, finished in digests.items():
        os.makedirs(root / "runs" / digest)
        if finished:
            (root / "runs" / digest / "result.json").write_text(json.dumps(
                {"final": {"validation": {"miou": finished}}}))


def test_runs_are_found_by_the_real_digests(tmp_path):
    """A fake study: two finished seed-0 runs at the real study's digests, one unfinished; the
    finder returns exactly the finished ones. A config built here by hand lands where it says."""
    from experiments.configs import uda
    from segjax.lectures.data import adaptation
    from segjax.train import sweep

    _fake_study(tmp_path, {REAL_DIGESTS["restyled", "source_only"]: 0.4,
                           REAL_DIGESTS["restyled", "dacs"]: 0.5,
                           REAL_DIGESTS["noise", "fda"]: None})
    runs = adaptation.finished_uda_runs(str(tmp_path), seed=0)
    root = str(tmp_path / "runs")
    assert runs == {"restyled": {"source_only": os.path.join(root, "4a891cdd28552719"),
                                 "dacs": os.path.join(root, "e8684c94f823f855")},
                    "illumination": {}, "noise": {}}
    config = uda.get_config("shapes")
    config.uda.target, config.uda.method, config.dataset.photometric = (
        "synthetic_shapes/illumination", "source_only", True)
    config.seed = 2
    from experiments.ablations.domain_adaptation import run_dirs

    assert run_dirs(str(tmp_path), seed=2)["illumination", "photometric"] == \
        sweep.config_run_dir(root, config)
    with pytest.raises(FileNotFoundError, match="--study=domain_adaptation"):
        adaptation.finished_uda_runs(str(tmp_path / "nothing"))


def test_uda_rows_predict_through_the_task_seam(tmp_path, monkeypatch):
    """Each finished run is loaded at its last checkpoint and its task's predictor gets the
    target's validation image; the image mIoU equals scikit-learn's jaccard_score averaged over
    the classes present, the run's mIoU is its result.json's."""
    import types

    from sklearn.metrics import jaccard_score

    from segjax.data.builders.synthetic_shapes import BUILDER_CONFIGS, generate
    from segjax.lectures.data import adaptation
    from segjax.train import restore

    _fake_study(tmp_path, {REAL_DIGESTS["restyled", "source_only"]: 0.25,
                           REAL_DIGESTS["restyled", "dacs"]: 0.75})
    seen = []

    def load_run(run_dir, checkpoint):
        assert checkpoint == "latest"
        shift = 1 if run_dir.endswith("4a891cdd28552719") else 0  # source only: every class off by one

        def predictor(model, variables):
            def predict(image):
                seen.append(image)
                return (np.asarray(image)[..., 0] // 43 + shift) % 6
            return predict

        return types.SimpleNamespace(
            config=types.SimpleNamespace(uda=types.SimpleNamespace(target="synthetic_shapes/restyled")),
            info=types.SimpleNamespace(num_classes=6, ignore_label=255), step=300, model=None,
            variables=None, task=types.SimpleNamespace(predictor=predictor))

    monkeypatch.setattr(restore, "load_run", load_run)
    rows = adaptation.uda_rows(str(tmp_path))
    assert list(rows["targets"]) == ["restyled"] and rows["missing_targets"] == ["illumination", "noise"]
    row = rows["targets"]["restyled"]
    assert row["missing"] == ["photometric", "fda", "adversarial", "adain",
                              "target_oracle"]
    example = generate({c.name: c for c in BUILDER_CONFIGS}["restyled"], "validation", rows["index"])
    assert all(np.array_equal(image, example["image"]) for image in seen) and len(seen) == 2
    label = example["label"][..., 0]
    assert len(set(generate({c.name: c for c in BUILDER_CONFIGS}["clean"], "validation",
                            rows["index"])["classes"].tolist())) >= 3
    for arm, run_miou in (("source_only", 0.25), ("dacs", 0.75)):
        r = row["arms"][arm]
        present = np.union1d(np.unique(label), np.unique(r["prediction"]))
        want = jaccard_score(label.ravel(), r["prediction"].ravel(), labels=present, average="macro")
        assert r["image_miou"] == pytest.approx(want, abs=1e-12)
        assert r["run_miou"] == run_miou and r["step"] == 300


def test_a_style_workdir_is_read_back(tmp_path):
    """Work directories written by the style command's own writer (`write_workdir`) in the
    gatys and fast formats are read back: pictures, final loss, time, weights."""
    from segjax.lectures.data import adaptation
    from segjax.style.run import write_workdir

    rng = np.random.default_rng(0)
    content, style, result = (rng.uniform(0, 1, (1, 20, 24, 3)).astype(np.float32) for _ in range(3))
    history = [{"step": 0, "loss": 2.0}, {"step": 5, "loss": 0.125}]
    gatys = {"method": "gatys", "content": "chelsea", "style": "brick", "steps": 5,
             "weights": "random VGG-19 (seed 0)", "start": history[0], "final": history[-1]}
    write_workdir(str(tmp_path / "g"), content, style, result, history, gatys, out=lambda s: None)
    fast = {"method": "fast", "content": "chelsea", "style": "brick", "steps": 5,
            "weights": "VGG-16 weights from /w/vgg16", "first": history[0],
            "final": {"step": 5, "loss": 7.5}, "train_seconds": 12.5}
    write_workdir(str(tmp_path / "f"), content, style, result, history, fast, out=lambda s: None)

    g = adaptation.read_style_run(str(tmp_path / "g"), "gatys")
    expected = {k: np.clip(np.rint(v[0] * 255), 0, 255).astype(np.uint8)
                for k, v in (("content", content), ("style", style), ("result", result))}
    for name, picture in expected.items():
        np.testing.assert_array_equal(g[name], picture)
    assert (g["final_loss"], g["seconds"], g["steps"], g["random_vgg"]) == (0.125, None, 5, True)
    assert (g["content_name"], g["style_name"]) == ("chelsea", "brick")
    f = adaptation.read_style_run(str(tmp_path / "f"), "fast")
    assert (f["final_loss"], f["seconds"], f["random_vgg"]) == (7.5, 12.5, False)
    assert f["weights"] == "VGG-16 weights from /w/vgg16"
    applied = {"method": "fast", "content": "chelsea", "style": "brick", "model": "/w/fast"}
    write_workdir(str(tmp_path / "a"), content, style, result, [], applied, out=lambda s: None)
    a = adaptation.read_style_run(str(tmp_path / "a"), "fast")  # --model: applied, not trained
    assert (a["final_loss"], a["seconds"], a["random_vgg"]) == (None, None, None)
    assert a["weights"] == "applied the trained network of /w/fast"
    with pytest.raises(ValueError, match="is a 'fast' run.*--method=adain"):
        adaptation.read_style_run(str(tmp_path / "f"), "adain")
    with pytest.raises(FileNotFoundError, match="run.json"):
        adaptation.read_style_run(str(tmp_path), "gatys")
    row = adaptation.style_row({"gatys": str(tmp_path / "g"), "fast": None, "adain": None})
    np.testing.assert_array_equal(row["content"], expected["content"])
    assert row["methods"]["fast"] == {"method": "fast", "run": None,
                                      "command": adaptation.style_command("fast")}
