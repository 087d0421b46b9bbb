"""Benchmark plumbing (timings themselves are never asserted): the step builders and the
profiler's attribution of trace time to layers."""

import os
import jax

from experiments.benchmarks import common, profile_step, step_bench
from segjax.models import create_model
from tests import compile_flags


def test_layer_key_strips_wrappers_and_marks_the_backward():
    name = "jit(train_step)/transpose(jvp(DeepLab))/backbone/layer4/0/conv3/dot_general"
    assert profile_step.layer_key("ynn_fusion.12", name) == (
        "bwd ynn_fusion               backbone/layer4/conv3/dot_general")
    assert profile_step.layer_key("copy.3", None).startswith("?   copy ")


def test_profile_attributes_every_traced_op_of_a_real_train_step(tmp_path):
    data = common.synthetic_batch(2, 32, 3)
    model = create_model("unet", num_classes=3, base_features=4, depth=2)
    run, _, flops, hlo = step_bench._segjax_train(model, data, with_hlo=True)
    assert flops > 0
    names = profile_step.op_names(hlo)
    assert any("transpose(jvp" in v for v in names.values())  # the backward is in there
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        run()
    times = profile_step.thunk_times(str(tmp_path))
    ops = [n for n in times if n in names]
    assert ops and all(times[n] >= 0 for n in ops)


def test_conv_layer_list_is_the_models_convolutions():
    """conv_layers times DeepLabV3-R50's convs from a hand-written list: it must name every conv
    kernel of the registered model (kernel size, in, out channels) exactly as often as the model
    has it."""
    import collections

    import jax.numpy as jnp

    from experiments.benchmarks import conv_layers

    model = create_model("deeplabv3_resnet50", num_classes=21)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros([1, 64, 64, 3])))
    have = collections.Counter(
        (leaf.shape[0], leaf.shape[2], leaf.shape[3])
        for path, leaf in jax.tree_util.tree_flatten_with_path(params["params"])[0]
        if path[-1].key == "kernel" and leaf.ndim == 4)
    listed = collections.Counter()
    for c in conv_layers.deeplabv3_resnet50_convs(64):
        listed[(c.kernel, c.cin, c.cout)] += c.count
    assert listed == have
    sizes = {c.layer: c.h for c in conv_layers.deeplabv3_resnet50_convs(513)}
    assert (sizes["layer1 conv2"], sizes["layer2 conv2"], sizes["aspp d12"]) == (129, 65, 65)


def test_conv_layers_times_the_same_convolution_on_both_sides():
    from experiments.benchmarks import conv_layers

    layers = [conv_layers.ConvShape("strided", 2, 9, 4, 6, 3, 2),
              conv_layers.ConvShape("atrous", 1, 8, 5, 3, 3, 1, 6)]  # per tap: rate 6 on 8²
    for mode in ("eval", "train"):
        rows, peaks = conv_layers.run(batch=2, size=0, mode=mode, steps=1, rounds=1,
                                      layers=layers)
        assert [r.layer for r in rows] == ["strided", "atrous"]
        assert all(r.rel_err < 1e-5 and r.segjax_ms > 0 and r.torch_ms > 0 for r in rows)
        assert rows[0].gflop == 2 * 2 * 5 * 5 * 9 * 4 * 6 * (3 if mode == "train" else 1) / 1e9
        text = conv_layers.table(rows, peaks, batch=2, size=9, mode=mode)
        assert "| strided | 2 | 9² 4→6 k3 s2 d1 |" in text and "**all convs, × count**" in text


def test_torchvision_twin_process_reports_a_failure_to_build():
    """A twin that cannot build its model says so instead of hanging (the twin's steady steps
    and the ratio are checked through the GPU suite's run below, one compile for both)."""
    import pytest

    from experiments.benchmarks import torch_twin

    with pytest.raises(RuntimeError, match="twin process exited"):
        torch_twin.TwinProcess("no_such_model", 3, 1, 32, "float32", train=False)


def test_maskrcnn_benchmark_twins_train_the_same_parameters():
    """The instance benchmark's two sides: the same architecture (parameter count, torch's
    FrozenBatchNorm2d buffers excluded) and the same trained subset (torch's requires_grad vs
    segjax's model minus its frozen_parameters); the synthetic boxes are their masks' extents."""
    import jax
    import numpy as np
    from flax.traverse_util import flatten_dict

    from experiments.benchmarks import torch_twin
    from segjax.models import create_model
    from segjax.train import build

    tv = torch_twin.detection_model("maskrcnn_resnet50_fpn", 91, 64)
    model = create_model("maskrcnn_resnet50_fpn", num_classes=91,
                         trainable_backbone_layers=common.TRAINABLE_BACKBONE_LAYERS,
                         box_score_thresh=common.BENCH_BOX_SCORE_THRESH)
    params = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))["params"]
    frozen = flatten_dict(build.frozen_parameters(model, params))
    sizes = {k: int(np.prod(v.shape)) for k, v in flatten_dict(params).items()}
    bn_affine = sum(m.weight.numel() * 2 for m in tv.backbone.body.modules()
                    if type(m).__name__ == "FrozenBatchNorm2d")
    assert sum(sizes.values()) == sum(p.numel() for p in tv.parameters()) + bn_affine
    assert sum(n for k, n in sizes.items() if not frozen[k]) == sum(
        p.numel() for p in tv.parameters() if p.requires_grad)
    assert tv.roi_heads.score_thresh == model.box_score_thresh == 0.0
    # Both zero the RPN's box deltas (proposals = anchors) and nothing else.
    assert common.ZERO_RPN_DELTAS and not any(p.abs().sum() for p in tv.rpn.head.bbox_pred.parameters())
    assert float(tv.rpn.head.cls_logits.weight.abs().sum()) > 0
    ones = {"params": jax.tree.map(lambda s: np.ones(s.shape, s.dtype), params)}
    zeroed = flatten_dict(common.zero_rpn_deltas(ones)["params"])
    for k, v in zeroed.items():
        assert (v == 0).all() if k[:2] == ("rpn_head", "bbox_pred") else (v == 1).all(), k
    assert ("rpn_head", "bbox_pred", "kernel") in zeroed
    data = common.synthetic_instances(3, 40, 5, max_instances=4)
    for i in range(3):
        for j in range(4):
            ys, xs = np.nonzero(data["masks"][i, j])
            if j < data["num_instances"][i]:
                np.testing.assert_array_equal(data["boxes"][i, j], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                assert 1 <= data["classes"][i, j] < 5
            else:
                assert len(ys) == 0 and data["classes"][i, j] == 0


def test_gpu_suite_script_records_one_json_line_per_configuration(tmp_path):
    """The prepared GPU run (issue 6) on a CPU with a tiny model: one JSON line per config, with
    its command, the torchvision twin's steady step time and the ratio, and the summary table."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).parents[1] / "experiments" / "benchmarks" / "gpu_suite.sh"
    env = dict(os.environ, OUT=str(tmp_path), MODEL="fcn_resnet50", SIZE="32", BATCHES="1",
               DTYPES="float32", STEPS="1", ROUNDS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    # One device, as on the accelerator host; the suite's compile flags (conftest.py) kept.
    env["XLA_FLAGS"] = compile_flags()
    done = subprocess.run(["bash", str(script), "eval"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = (tmp_path / "gpu_suite.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["cmd"].endswith("--dtype=float32 --compare=torchvision --steps=1 --rounds=1 --json")
    assert record["mode"] == "eval" and record["torchvision_img_per_s"] > 0
    assert record["torchvision_s_per_step"] > 0 and record["torchvision_compile_s"] > 0
    assert record["ratio"] == record["segjax_img_per_s"] / record["torchvision_img_per_s"]
    assert "| eval | float32 | 1 |" in done.stdout


def test_model_flops_count_direct_convolutions_while_segjax_runs_winograd(monkeypatch):
    """A 3x3 conv routed to Winograd (threshold lowered) executes fewer FLOPs than the direct
    convolution; `model_flops` reports the direct count (2 * 9 * N * H * W * C * O plus the
    border correction) and leaves the routing as it was."""
    import jax.numpy as jnp
    from jax import lax

    from segjax.ops import conv as conv_lib

    monkeypatch.setattr(conv_lib, "WINOGRAD_MIN_FLOPS", 0)
    x, w = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))

    def conv(x, w):
        return conv_lib.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def direct(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    runs = common.compiled_flops(jax.jit(conv).lower(x, w))
    model = common.model_flops(conv, x, w)
    assert model == common.compiled_flops(jax.jit(direct).lower(x, w))
    assert runs < 0.5 * model
    assert common.compiled_flops(jax.jit(lambda a, b: conv(a, b)).lower(x, w)) == runs


def test_model_table_reads_the_zoo_study_and_plots_it(tmp_path):
    """model_table --study_dir: each part's results_miou.csv (as the study runner writes it) gives
    mean +- sample SD (n) per dataset, beside the zoo model's own params and FLOPs."""
    from experiments.benchmarks import model_table

    for model, rows in (("unet", [("clean", 0, 0.5), ("clean", 1, 0.7), ("all", 0, 0.4)]),
                        ("enet", [("clean", 0, 0.25)])):
        os.makedirs(tmp_path / model)
        with open(tmp_path / model / "results_miou.csv", "w") as f:
            f.write("dataset.name,seed,miou\n")
            f.writelines(f"synthetic_shapes/{d},{s},{v!r}\n" for d, s, v in rows)
    zoo = model_table.zoo_results(str(tmp_path))
    assert zoo == {"unet": {"synthetic_shapes/clean": [0.5, 0.7], "synthetic_shapes/all": [0.4]},
                   "enet": {"synthetic_shapes/clean": [0.25]}}
    row = dict(name="unet", params=31_040_000, flops=5.5e9, output_stride=None, aux=False,
               zoo_params=487_000, zoo_flops=0.125e9, zoo_miou=zoo["unet"])
    text = model_table.markdown([row], 64)
    assert "| unet | 31.04 | 5.5 |  |  | 0.487 | 0.12 | 0.600 ± 0.141 (2) | 0.400 (1) |" in text
    model_table.plot([row], str(tmp_path / "zoo.png"))
    assert os.path.getsize(tmp_path / "zoo.png") > 1000


def test_unet3d_step_twin_has_segjax_weights_and_prints_a_ratio(capsys):
    """The 3D U-Net benchmark's twin loads segjax's variables (random weights and BatchNorm
    statistics give the same eval logits as the flax model, through the flattened .npz layout the
    child reads), and a tiny train-step run
    reports both sides and their ratio (timings are not asserted)."""
    import numpy as np
    import torch

    from experiments.benchmarks import torch_unet3d, unet3d_step

    from segjax.models import create_model

    model = create_model("unet3d", num_classes=3, base_features=2, depth=1, in_channels=1)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 8, 8, 8, 1)).astype(np.float32)
    label = rng.integers(0, 3, size=(1, 8, 8, 8)).astype(np.int32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), image)  # random weights and statistics
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), shapes)
    twin = torch_unet3d.TorchUNet3D(1, 2, 1, 3).eval()
    flat = unet3d_step.flatten(variables, image, label)
    torch_unet3d.load_variables(twin, {k: v for k, v in flat.items() if "/" in k})
    with torch.no_grad():
        want = twin(torch.from_numpy(image.transpose(0, 4, 1, 2, 3).copy())).numpy()
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])(variables, image)
    got = np.asarray(logits).transpose(0, 4, 1, 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    result = unet3d_step.run(batch=1, size=8, base_features=2, depth=1, steps_per_round=1,
                             rounds=1, modes=("train",))["train"]
    print(result.table())
    assert result.torchvision_s_per_step > 0 and result.segjax_s_per_step > 0
    assert result.ratio == result.segjax_img_per_s / result.torchvision_img_per_s
    assert "segjax/torchvision = " in capsys.readouterr().out
