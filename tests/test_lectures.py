"""segjax.lectures and `python -m experiments.lectures`: the decks' numbers, where they come from,
and the command end to end.

The decks print figure 1's numbers, asserted exactly here. Every other figure is checked against
an independent reference (numpy interpolation, the convolution matrix, path counts, the
triplet-loss formula, the models' own attributes) and by spying on the segjax call it names.
"""

import functools
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from segjax import ops
from segjax.lectures import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_FIGURES = (1, 2, 3, 4, 5, 7, 8)

DECK_CONV = [[122, 148], [126, 134]]
DECK_MATRIX = [[1, 4, 1, 0, 1, 4, 3, 0, 3, 3, 1, 0, 0, 0, 0, 0],
               [0, 1, 4, 1, 0, 1, 4, 3, 0, 3, 3, 1, 0, 0, 0, 0],
               [0, 0, 0, 0, 1, 4, 1, 0, 1, 4, 3, 0, 3, 3, 1, 0],
               [0, 0, 0, 0, 0, 1, 4, 1, 0, 1, 4, 3, 0, 3, 3, 1]]
DECK_TRANSPOSED = [[2, 9, 6, 1], [6, 29, 30, 7], [10, 29, 33, 13], [12, 24, 16, 4]]


@pytest.fixture(scope="module")
def command_output(tmp_path_factory):
    """Runs the command once for the fast figures; returns (out dir, numbers.json, seconds)."""
    out = tmp_path_factory.mktemp("lectures")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.lectures", f"--workdir={out}",
         "--figures=" + ",".join(map(str, FAST_FIGURES))],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"\nexperiments.lectures --figures={FAST_FIGURES}: {seconds:.1f} s wall")
    with open(out / "numbers.json") as f:
        return out, json.load(f), seconds


def spy(monkeypatch, module, name):
    """Replaces `module.name` by a wrapper recording each call's arguments; returns the list."""
    calls = []
    original = getattr(module, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


# --------------------------------------------------------------------------------------------
# The command


def test_command_writes_every_fast_figure(command_output):
    out, numbers, _ = command_output
    from segjax import lectures

    assert sorted(numbers) == [str(n) for n in FAST_FIGURES]
    index = (out / "index.md").read_text()
    for n in FAST_FIGURES:
        figure = lectures.BY_NUMBER[n]
        png = out / figure.png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"{n}. [**{figure.title}**]({figure.png})" in index
    assert not (out / lectures.BY_NUMBER[6].png).exists()


def test_command_prints_the_decks_numbers(command_output):
    _, numbers, _ = command_output
    assert numbers["1"]["conv"] == DECK_CONV
    assert numbers["1"]["conv_matrix"] == DECK_MATRIX
    assert numbers["1"]["transposed"] == DECK_TRANSPOSED
    assert numbers["3"]["pooled"] == [[5, 7], [9, 8]]
    assert numbers["4"]["transposed"] == numbers["4"]["via_zeros"]


def test_write_skips_figures_with_a_line(tmp_path, monkeypatch):
    from segjax import lectures, losses

    monkeypatch.delattr(losses, "triplet_loss", raising=False)
    result = lectures.write(str(tmp_path), [6, 9], skip_training=True)
    assert result["pngs"] == {} and sorted(result["skipped"]) == [6, 9]
    index = (tmp_path / "index.md").read_text()
    assert "6. **FCN-32s / 16s / 8s**: skipped (--skip_training)" in index
    assert "9. **Triplet loss and class imbalance**: skipped: segjax.losses has no triplet_loss" in index
    assert json.loads((tmp_path / "numbers.json").read_text()) == {}
    result = lectures.write(str(tmp_path), [10])
    assert result["skipped"] == {10: lectures.skip_reason(lectures.BY_NUMBER[10], False)}
    assert "--tensormask_run=DIR" in (tmp_path / "index.md").read_text()
    with pytest.raises(ValueError, match="unknown figure"):
        lectures.write(str(tmp_path), [99])


# --------------------------------------------------------------------------------------------
# 1-4: small worked examples


def test_convolution_is_the_decks_example_exactly(monkeypatch):
    calls = {name: spy(monkeypatch, ops, name)
             for name in ("conv2d", "conv_as_matrix", "conv_transpose2d")}
    d = data.convolution()
    assert all(len(c) == 1 for c in calls.values()), {k: len(v) for k, v in calls.items()}
    np.testing.assert_array_equal(d["conv"], DECK_CONV)
    np.testing.assert_array_equal(d["conv_matrix"], DECK_MATRIX)
    np.testing.assert_array_equal(d["transposed"], DECK_TRANSPOSED)
    np.testing.assert_array_equal(d["conv_via_matrix"], DECK_CONV)
    np.testing.assert_array_equal(d["transposed_via_matrix"], DECK_TRANSPOSED)
    json_numbers = data.to_json(d)
    assert json_numbers["conv"] == DECK_CONV and json_numbers["transposed"] == DECK_TRANSPOSED
    assert all(isinstance(v, int) for row in json_numbers["conv_matrix"] for v in row)


def test_interpolation_matches_numpy_and_comes_from_resize(monkeypatch):
    calls = spy(monkeypatch, ops, "resize")
    d = data.interpolation()
    assert sorted(c[0][2] for c in calls) == sorted(["nearest", "bilinear", "bicubic"] * 2)
    s = np.asarray(data.INTERPOLATION_SAMPLES)
    n, big = len(s), len(s) * d["factor_1d"]
    pos = np.asarray(d["positions"])
    np.testing.assert_allclose(pos, (np.arange(big) + 0.5) * n / big - 0.5)
    # Linear: np.interp with the ends held (torch clamps the source coordinate at 0 and n - 1).
    np.testing.assert_allclose(d["upsampled_1d"]["linear"], np.interp(pos, np.arange(n), s), atol=1e-5)
    np.testing.assert_array_equal(d["upsampled_1d"]["nearest"], s[np.arange(big) * n // big])
    np.testing.assert_allclose(d["upsampled_1d"]["cubic"][d["factor_1d"] // 2::d["factor_1d"]], s,
                               atol=0.15)  # near the samples at their positions (+- 1/32)
    img = np.asarray(data.INTERPOLATION_IMAGE)
    m = img.shape[0] * d["factor_2d"]
    p2 = (np.arange(m) + 0.5) * img.shape[0] / m - 0.5
    rows = np.stack([np.interp(p2, np.arange(4), r) for r in img])
    bilinear = np.stack([np.interp(p2, np.arange(4), c) for c in rows.T], 1)
    np.testing.assert_allclose(d["upsampled_2d"]["bilinear"], bilinear, atol=1e-5)
    lo, hi = d["bicubic_range"]
    assert lo < img.min() and hi > img.max()  # the cubic kernel's overshoot


def test_unpooling_numbers(monkeypatch):
    calls = {name: spy(monkeypatch, ops, name) for name in
             ("max_pool_with_argmax", "max_unpool", "nearest_unpool", "bed_of_nails_unpool")}
    d = data.unpooling()
    assert all(len(c) == 1 for c in calls.values())
    np.testing.assert_array_equal(d["pooled"], [[5, 7], [9, 8]])
    np.testing.assert_array_equal(d["indices"], [[4, 6], [9, 15]])
    np.testing.assert_array_equal(d["nearest"], np.kron([[5, 7], [9, 8]], np.ones((2, 2))))
    np.testing.assert_array_equal(d["bed_of_nails"], [[5, 0, 7, 0], [0, 0, 0, 0],
                                                      [9, 0, 8, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(d["max_unpool"], [[0, 0, 0, 0], [5, 0, 7, 0],
                                                    [0, 9, 0, 0], [0, 0, 0, 8]])


def test_fractionally_strided_equals_the_transposed_matrix(monkeypatch):
    calls = {name: spy(monkeypatch, ops, name)
             for name in ("conv_transpose2d", "bed_of_nails_unpool", "conv2d")}
    d = data.fractionally_strided()
    assert all(len(c) == 1 for c in calls.values())
    assert calls["conv_transpose2d"][0][1] == {"stride": 2, "padding": 1, "output_padding": 1}
    np.testing.assert_array_equal(d["via_zeros"], d["transposed"])
    # Independent: C^T y, C the matrix of the forward stride-2 conv on the 6x6 output size.
    w = np.asarray(data.DECK_KERNEL, np.float32)[:, :, None, None]
    c = np.asarray(ops.conv_as_matrix(w, (6, 6), stride=2, padding=1))
    y = np.asarray(data.STRIDED_INPUT, np.float32).ravel()
    np.testing.assert_array_equal(d["transposed"], (c.T @ y).reshape(6, 6))
    zeros = np.asarray(d["zeros_inserted"])
    assert zeros.shape == (6, 6) and np.count_nonzero(zeros[1::2]) == 0
    np.testing.assert_array_equal(zeros[::2, ::2], data.STRIDED_INPUT)


# --------------------------------------------------------------------------------------------
# 5: receptive fields and the DeepLab heads


def _path_counts(rates, size):
    """Number of paths from each input pixel to the centre through 3x3 ones kernels (numpy)."""
    one_d = np.zeros(size)
    one_d[size // 2] = 1.0
    for r in rates:
        one_d = sum(np.roll(one_d, k * r) for k in (-1, 0, 1))
    return np.outer(one_d, one_d)


def test_receptive_field_from_gradients(monkeypatch):
    calls = spy(monkeypatch, ops, "atrous_conv2d")
    rates = (1, 3, 2)
    field = data.receptive_field(rates, size=17)
    assert [c[0][2] for c in calls] == list(rates)
    np.testing.assert_array_equal(field, _path_counts(rates, 17))
    assert data.extent(field) == 1 + 2 * sum(rates)
    with pytest.raises(ValueError, match="smaller than the receptive field"):
        data.receptive_field((4, 4), size=15)


def test_receptive_field_sizes_follow_the_closed_form(command_output):
    _, numbers, _ = command_output
    rf = numbers["5"]["receptive_field"]
    assert len(rf["constant"]) == len(data.RF_RATES) * len(data.RF_LAYERS)
    for key, v in rf["constant"].items():
        r, layers = v["rates"][0], len(v["rates"])
        assert key == f"rate{r}_layers{layers}"
        assert v["extent"] == 1 + 2 * r * layers  # extent grows with the rate ...
        assert v["support"] == (2 * layers + 1) ** 2  # ... the pixels seen do not (gridding)
    for layers in data.RF_LAYERS:
        v = rf["exponential"][f"layers{layers}"]
        assert v["rates"] == [2 ** i for i in range(layers)]
        assert v["extent"] == 2 ** (layers + 1) - 1 == 1 + 2 * sum(v["rates"])
        assert v["support"] == v["extent"] ** 2  # rates 1, 2, 4, ...: dense


def test_deeplab_heads_are_read_from_the_registered_models(monkeypatch):
    import segjax.models
    from segjax.models.deeplab import default_atrous_rates

    calls = spy(monkeypatch, segjax.models, "create_model")
    heads = data.deeplab_heads()
    assert [c[0][0] for c in calls] == [name for _, name in data.DEEPLAB_MODELS]
    v1, v2, v3, v3p = (heads[v] for v in ("v1", "v2", "v3", "v3+"))
    assert v1["output_stride"] == v2["output_stride"] == v3["output_stride"] == 8
    assert v3p["output_stride"] == 16
    assert [(c["path"], c["kernel"], c["dilation"]) for s in v1["stages"] for c in s] == [
        ("backbone/fc6", 3, 12), ("backbone/fc7", 1, 1), ("classifier", 1, 1)]
    # v2: one stage of parallel 3x3 atrous classifiers, summed.
    assert [c["dilation"] for c in v2["stages"][0]] == list(default_atrous_rates("v2", 8))
    assert len(v2["stages"]) == 1 and v2["merges"] == ["sum"]
    assert {c["features"] for c in v2["stages"][0]} == {21}
    # v3 / v3+: ASPP = 1x1 + atrous 3x3s + image pooling, concatenated, projected.
    for info, version, stride in ((v3, "v3", 8), (v3p, "v3plus", 16)):
        aspp = info["stages"][0]
        assert [c["dilation"] for c in aspp if c["kernel"] == 3] == \
            list(default_atrous_rates(version, stride))
        assert aspp[0]["path"] == "aspp/conv1x1/conv" and aspp[-1]["path"] == "aspp/pooling/conv"
        assert info["merges"][0] == "concatenate"
        assert info["stages"][1][0]["path"] == "aspp/project/conv"
    # v3+ only: the decoder at stride 4 (layer1 features).
    assert [s[0]["path"] for s in v3p["stages"][2:]] == [
        "low_level/conv", "refine_0/conv", "refine_1/conv", "cls"]
    assert {s[0]["input_stride"] for s in v3p["stages"][2:]} == {4}
    assert all(c["input_stride"] == 8 for s in v3["stages"][1:] for c in s)


# --------------------------------------------------------------------------------------------
# 7: ROI Align


@pytest.mark.parametrize("aligned", [True, False])
def test_sampling_points_reproduce_roi_align(np_rng, aligned):
    feature = np_rng.normal(size=(9, 11)).astype(np.float32)
    boxes = [(0.3, 1.7, 8.9, 6.2), (-0.8, 4.5, 3.1, 9.6), (2.0, 2.0, 2.4, 2.3)]
    pooled = np.asarray(ops.roi_align(
        feature[None, :, :, None], np.array([[0, *b] for b in boxes], np.float32), (3, 2),
        sampling_ratio=3, aligned=aligned))[..., 0]
    for k, box in enumerate(boxes):
        ys, xs = data.roi_sampling_points(box, (3, 2), 3, aligned=aligned)
        manual = [[np.mean([data.bilinear_at(feature, y, x) for y in ys[i] for x in xs[j]])
                   for j in range(2)] for i in range(3)]
        np.testing.assert_allclose(pooled[k], manual, rtol=1e-5, atol=1e-5)


def test_roi_align_figure_data(monkeypatch):
    calls = spy(monkeypatch, ops, "roi_align")
    d = data.roi_align_sampling()
    assert len(calls) == 1 and calls[0][1]["aligned"] is True
    np.testing.assert_allclose(d["from_points"], d["pooled"], rtol=1e-5)
    ys, xs = np.asarray(d["sample_ys"]), np.asarray(d["sample_xs"])
    x1, y1, x2, y2 = data.ROI_BOX
    assert ys.shape == xs.shape == (2, 2)
    assert y1 - 0.5 < ys.min() and ys.max() < y2 - 0.5 and x1 - 0.5 < xs.min() and xs.max() < x2 - 0.5


# --------------------------------------------------------------------------------------------
# 8: difficulty factors


def test_difficulty_uses_each_builder_config(monkeypatch):
    from segjax.data.builders import synthetic_shapes

    calls = spy(monkeypatch, synthetic_shapes, "generate")
    d = data.difficulty(class_count_images=2)
    names = [c[0][0].name for c in calls]
    assert set(names) == {"clean", *synthetic_shapes.FACTORS}
    assert list(d["factors"]) == ["clean", *synthetic_shapes.FACTORS]
    ex = synthetic_shapes.generate(data.shapes_config("occlusion"), "train", d["index"])
    np.testing.assert_array_equal(d["factors"]["occlusion"]["image"], ex["image"])


def test_difficulty_numbers(command_output):
    from segjax.data.builders import synthetic_shapes

    _, numbers, _ = command_output
    f = numbers["8"]["factors"]
    assert len(f["clean"]["classes"]) >= 3
    assert f["label_noise"]["label_disagreement"] > 0
    assert all(f[k]["label_disagreement"] == 0 for k in f if k != "label_noise")
    assert f["clean"]["noise_rms"] == 0 and f["noise"]["noise_rms"] > 5
    assert min(f["occlusion"]["visible_fraction"]) < 1
    counts = numbers["8"]["class_counts"]
    assert counts["imbalance"][0] > counts["imbalance"][-1]  # circles common, crosses rare
    assert sum(counts["clean"]) == sum(
        len(synthetic_shapes.generate(data.shapes_config("clean"), "train", i)["classes"])
        for i in range(numbers["8"]["class_count_images"]))


# --------------------------------------------------------------------------------------------
# 6 and 9


def test_fcn_demo_trains_the_registered_fcns(monkeypatch):
    import segjax.losses
    import segjax.models
    from segjax.lectures import fcn_demo

    assert [name for _, name in fcn_demo.FCN_MODELS] == ["fcn32s_vgg16", "fcn16s_vgg16",
                                                         "fcn8s_vgg16"]
    models = spy(monkeypatch, segjax.models, "create_model")
    ce = spy(monkeypatch, segjax.losses, "cross_entropy")
    # One model, one step, tiny images: the plumbing (compiling three VGGs costs ~30 s here).
    d = fcn_demo.fcn_skips(steps=1, num_train=2, batch_size=2, num_eval=1, image_size=32,
                           models=fcn_demo.FCN_MODELS[-1:])
    assert [c[0][0] for c in models] == ["fcn8s_vgg16"]
    assert ce, "trained with segjax.losses.cross_entropy"
    (m,) = d["models"].values()
    assert m["prediction"].shape == (32, 32) and 0 <= m["miou"] <= 1
    assert np.isfinite(m["final_loss"]) and d["label"].shape == (32, 32)
    assert "1 steps" in d["recipe"]["optimizer"]


@pytest.mark.skipif(not data.has_triplet_loss(), reason="segjax.losses.triplet_loss not there yet")
def test_metric_learning_geometry(monkeypatch):
    from segjax import losses

    calls = spy(monkeypatch, losses, "triplet_loss")
    d = data.metric_learning(grid=21)
    assert calls
    g = np.asarray(d["grid"])
    n = np.stack(np.meshgrid(g, g, indexing="xy"), -1)
    a, p, m = d["anchor"], d["positive"], d["margin"]
    d_ap = np.linalg.norm(a - p)
    expected = (np.maximum(0, d_ap - np.linalg.norm(n - a, axis=-1) + m)
                + np.maximum(0, d_ap - np.linalg.norm(n - p, axis=-1) + m))
    np.testing.assert_allclose(d["loss_map"], expected, atol=1e-4)
    b = d["boundaries"]
    assert b["imbalanced"]["boundary_x"] > b["balanced"]["boundary_x"] + 0.3
    assert abs(b["imbalanced_weighted"]["boundary_x"] - b["balanced"]["boundary_x"]) < 0.5


# --------------------------------------------------------------------------------------------
# 10: TensorMask


def test_tensormask_figure_reads_the_models_tensors(np_rng, tmp_path):
    """Figure 10 on a narrow random TensorMask: the detections are the model's own (score, box and
    the window `mask_boxes` names), each mask is the loop transcription of swap_align2nat over the
    head's aligned tensor at the detection's window, the bipyramid's masks grow as 2**l V, and
    the drawing is written."""
    import jax

    from segjax.lectures import draw
    from segjax.models import create_model
    from tests.ops.test_swap_align2nat import reference

    model = create_model("tensormask_resnet18_fpn", num_classes=3, backbone_width=8, fpn_channels=8,
                         cls_channels=8, bbox_channels=8, mask_channels=8, num_convs=1,
                         anchor_sizes=((16, 24), (32, 48)), size_divisible=32, score_thresh=0.0)
    image = np_rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    from segjax.tasks.base import padded_input

    x = padded_input(image)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    d = data.tensormask_windows(model, variables, image, score_thresh=0.0, max_detections=3)
    out, aligned = jax.device_get(jax.jit(lambda v, x: model.apply(
        v, x, method=lambda m, x: (m(x), m.head(m.features(x))[2])))(variables, x))
    sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    natural = functools.lru_cache(lambda lvl, a: reference(aligned[lvl][a], 2 ** lvl, -6.0))
    assert len(d["detections"]) == 3
    for k, det in enumerate(d["detections"]):
        assert det["score"] == pytest.approx(float(out["scores"][0, k]))
        np.testing.assert_allclose(det["box"], out["boxes"][0, k], rtol=1e-6)
        np.testing.assert_allclose(det["window"], out["mask_boxes"][0, k])
        lvl, anchor, (y, xx) = det["level"], det["anchor"], det["cell"]
        side = (4, 6)[anchor] * 2 ** lvl
        want = natural(lvl, anchor)[0, y, xx].reshape(side, side)
        np.testing.assert_allclose(det["mask"], sigmoid(want), atol=1e-5)
    n = d["natural_vs_aligned"]
    (y, xx), v = n["cell"], n["V"]
    assert v == (4, 6)[n["anchor"]] and [b["mask_side"] for b in d["bipyramid"]] == [v, 2 * v]
    np.testing.assert_allclose(n["aligned"], sigmoid(aligned[0][n["anchor"]][0, y, xx].reshape(v, v)), atol=1e-6)
    want = natural(0, n["anchor"])[0, y, xx].reshape(v, v)
    np.testing.assert_allclose(n["natural"], sigmoid(want), atol=1e-5)
    draw.draw_tensormask(d, str(tmp_path / "fig10.png"))
    assert (tmp_path / "fig10.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# 11: patch classifier vs FCN


def test_patch_figure_counts_reads_and_times_both_ways(monkeypatch, tmp_path):
    """Each pixel is read by the patches of the pixel centres within the window around it (a
    product of per-axis counts, written here as loops); the timings are `measure`'s (tested with
    the model in tests/models/test_patch.py: same outputs both ways), called per size."""
    from experiments.benchmarks import patch_vs_fcn
    from segjax.lectures import draw

    def fake(size, rounds=3):
        return {"size": size, "patch_size": 46, "fcn_s_per_image": 0.1, "patches_s_per_image": 1.0,
                "time_ratio": 10.0, "fcn_gflops": 2.0, "patches_gflops": 30.0, "flops_ratio": 15.0,
                "max_abs_difference": 0.0, "device": "cpu"}

    calls = []
    monkeypatch.setattr(patch_vs_fcn, "measure", lambda size, rounds=3: calls.append(size) or fake(size))
    d = data.patch_vs_fcn(size=60, sizes=(16, 24))
    assert calls == [16, 24] and [r["size"] for r in d["timings"]] == [16, 24]
    p, lo = 46, 23
    per_axis = [sum(1 for c in range(60) if c - lo <= i <= c - lo + p - 1) for i in range(60)]
    np.testing.assert_array_equal(d["read_counts"], np.outer(per_axis, per_axis))
    assert d["max_reads"] == p * p and d["pad"] == [23, 22] and d["image"].shape == (60, 60, 3)
    draw.draw_patch_vs_fcn(d, str(tmp_path / "fig11.png"))
    assert (tmp_path / "fig11.png").stat().st_size > 5000


# --------------------------------------------------------------------------------------------
# 12: deep learning for 3D


def test_deep3d_figure_writes_without_runs_and_reports_the_truth(tmp_path):
    """Without runs: the truth alone, a line per missing run in index.md, and numbers.json equal
    to a recount of the generated examples (scipy's centre of mass for the slice planes)."""
    from scipy import ndimage

    from segjax import lectures
    from segjax.data.builders import synthetic_parts, synthetic_volumes

    result = lectures.write(str(tmp_path), [12])
    assert (tmp_path / lectures.BY_NUMBER[12].png).stat().st_size > 20000
    index = (tmp_path / "index.md").read_text()
    assert "--volume_run=DIR" in index and "--pointnet_run=DIR" in index
    volume, parts = result["numbers"]["12"]["volume"], result["numbers"]["12"]["parts"]
    assert "dice" not in volume and "miou" not in parts

    config = {c.name: c for c in synthetic_volumes.BUILDER_CONFIGS}["clean"]
    label = synthetic_volumes.generate(config, "validation", volume["index"])["label"]
    assert {2, 3} <= set(np.unique(label).tolist())
    counts = np.bincount(label.ravel(), minlength=4)
    assert volume["voxels"] == dict(zip(synthetic_volumes.CLASS_NAMES, counts.tolist()))
    centre = ndimage.center_of_mass(label >= 2)
    assert list(volume["slices"].values()) == [int(round(c)) for c in centre]

    shape = synthetic_parts.generate({c.name: c for c in synthetic_parts.BUILDER_CONFIGS}["default"],
                                     "validation", parts["index"])
    ids, n = np.unique(shape["part"], return_counts=True)
    assert parts["part_points"] == {synthetic_parts.PART_NAMES[i]: int(c) for i, c in zip(ids, n)}
    assert parts["part_ids"] == ids.tolist()


def test_deep3d_prediction_paths_and_their_scores(tmp_path):
    """A hand-made 3-D "model" (intensity thresholds of the z-scored volume, one-hot logits)
    through the sliding-window path gives its thresholds voxel for voxel; a point "model" whose
    best logit is outside the shape's category is restricted to the category; Dice and part IoU
    equal a NumPy transcription of 2|P∩G| / (|P| + |G|) and scikit-learn's jaccard_score."""
    import jax
    import jax.numpy as jnp
    from sklearn.metrics import jaccard_score

    from segjax.data.builders import synthetic_parts, synthetic_volumes
    from segjax.lectures import draw3d
    from segjax.lectures.data import spatial3d

    config = {c.name: c for c in synthetic_volumes.BUILDER_CONFIGS}["tiny"]
    example = next(e for e in (synthetic_volumes.generate(config, "validation", i) for i in range(3))
                   if (e["label"] >= 2).any())
    image, label = example["image"], example["label"].astype(np.int32)
    order = jnp.array([0, 3, 1, 2])  # intensity bands -> class: background, lesion B, organ, lesion A

    def apply_fn(bins, x, train):
        assert not train
        return {"logits": 10.0 * jax.nn.one_hot(order[jnp.digitize(x[..., 0], bins)], 4)}

    bins = np.array([-0.2, 1.6, 3.5], np.float32)
    pred = spatial3d.predict_volume(apply_fn, jnp.asarray(bins), image, roi_size=(8, 16, 16),
                                 normalize="zscore", overlap=0.5)
    z = (image[..., 0] - image.mean()) / image.std()
    expected = np.array([0, 3, 1, 2])[np.digitize(z, bins)]
    assert np.mean(pred == expected) > 0.999  # voxels on a band edge may round either way
    panel = spatial3d.volume_panel(image, label, pred, synthetic_volumes.CLASS_NAMES)
    for k, name in enumerate(synthetic_volumes.CLASS_NAMES[1:], start=1):
        p, g = pred == k, label == k
        want = 1.0 if p.sum() + g.sum() == 0 else 2 * np.sum(p & g) / (p.sum() + g.sum())
        assert panel["dice"][name] == pytest.approx(want, abs=1e-12)
    assert panel["mean_foreground_dice"] == pytest.approx(np.mean(list(panel["dice"].values())))
    d, h, w = panel["slices"].values()
    np.testing.assert_array_equal(panel["planes"]["coronal"]["prediction"], pred[:, h])
    np.testing.assert_array_equal(panel["planes"]["sagittal"]["label"], label[:, :, w])

    shape = synthetic_parts.generate({c.name: c for c in synthetic_parts.BUILDER_CONFIGS}["tiny"],
                                     "validation", 1)  # a lamp: parts 3, 4, 5
    points, category = shape["points"], int(shape["category"])
    height = jnp.asarray(points[:, 1])

    def point_fn(variables, x, train, categories):
        assert x.shape == (1,) + points.shape and categories.tolist() == [category]
        own = jnp.stack([-height, -jnp.abs(height), height], -1) * variables  # base, pole, shade
        return {"logits": jnp.concatenate([jnp.zeros((1, len(points), 3)), own[None],
                                           jnp.full((1, len(points), 4), 99.0)], -1)}

    part_pred = spatial3d.predict_parts(point_fn, 1.0, points, category, use_categories=True)
    want = 3 + np.argmax(np.stack([-points[:, 1], -np.abs(points[:, 1]), points[:, 1]], -1), -1)
    np.testing.assert_array_equal(part_pred, want)
    parts = spatial3d.parts_panel(points, shape["part"], category, part_pred)
    ious = jaccard_score(shape["part"], part_pred, labels=[3, 4, 5], average=None, zero_division=1.0)
    np.testing.assert_allclose(list(parts["part_iou"].values()), ious, rtol=1e-12)
    assert parts["miou"] == pytest.approx(ious.mean())

    panel.update(dataset="synthetic_volumes/tiny", index=0)
    parts.update(dataset="synthetic_parts/tiny", index=1)
    draw3d.draw_deep3d({"volume": panel, "parts": parts}, str(tmp_path / "fig12.png"))
    assert (tmp_path / "fig12.png").stat().st_size > 20000
