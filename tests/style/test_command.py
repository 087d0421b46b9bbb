"""`python -m experiments.style` end to end (tiny converted VGG-19, 20 px, 2 steps, shallow layers
as in test_gatys.py: the default relu5_1 objective costs ~30 s of compiling on 2 cores and runs
in the demo instead) and its clean failures: one `error:` line, no work dir left behind."""

import json
import os

import flax
import numpy as np
import pytest
from PIL import Image

from segjax.style import vgg_features_variables_from_torch
from tests.command_runner import run_command
from tests.style.torch_vgg import state_dict, torch_vgg


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A width-8 VGG-19 as an .npz, the format `--weights` takes besides convert_torchvision's dir."""
    path = tmp_path_factory.mktemp("weights") / "vgg19_w8.npz"
    variables = vgg_features_variables_from_torch(state_dict(torch_vgg(19, 8, seed=0)), depth=19)
    np.savez(path, **flax.traverse_util.flatten_dict(variables, sep="/"))
    return str(path)


def _strict(text):
    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_gatys_command_writes_pictures_and_metrics(tmp_path, tiny_weights):
    content = tmp_path / "content.png"
    # 32x40 at --size=20 is 16x20, the content shape of test_gatys.py: one compiled L-BFGS step
    # serves both (same width, layers and pooling) when they run in one process.
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(content)
    workdir = tmp_path / "out"
    code, out, err = run_command("experiments.style", [
        "--method=gatys", f"--content={content}", "--style=brick", f"--workdir={workdir}",
        "--size=20", "--steps=2", f"--weights={tiny_weights}", "--content_layer=relu2_1",
        "--style_layers=relu1_1,relu2_1"])
    assert code == 0, err
    assert "random" not in out and "wrote" in out
    files = sorted(os.listdir(workdir))
    assert files == ["content.png", "metrics.jsonl", "panel.png", "result.png", "run.json", "style.png"]
    sizes = {f: Image.open(workdir / f).size for f in files if f.endswith(".png")}
    assert sizes == {"content.png": (20, 16), "result.png": (20, 16), "style.png": (20, 20),
                     "panel.png": (20 + 20 + 20 + 8, 20)}
    lines = [_strict(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert lines[0]["content"] == 0.0 and lines[0]["style"] > 0  # the start is the content image
    assert lines[2]["loss"] <= lines[1]["loss"] <= lines[0]["loss"]
    summary = _strict((workdir / "run.json").read_text())
    assert summary["final"] == lines[-1] and summary["weights"].endswith("vgg19_w8.npz")


@pytest.mark.parametrize("args, words", [
    (["--content=no_such.png"], ["no_such.png is neither a file nor one of scikit-image's"]),
    (["--size=8"], ["--size=8 must be at least 16"]),
    (["--style_layers=relu1_1,relu6_1"], ["--style_layers=relu1_1,relu6_1", "['relu6_1']"]),
    (["--steps=0"], ["--steps=0 must be at least 1"]),
    (["--weights={tmp}/absent.npz"], ["absent.npz does not exist"]),
    (["--content={tmp}/text.png"], ["cannot read image", "text.png"]),
    (["--style="], ["image  is neither"]),
])
def test_bad_input_fails_with_one_error_line(tmp_path, args, words):
    (tmp_path / "text.png").write_text("not an image")
    workdir = tmp_path / "out"
    base = {"--method": "gatys", "--content": "astronaut", "--style": "gravel", "--workdir": str(workdir)}
    for a in args:
        key, _, value = a.partition("=")
        base[key] = value.format(tmp=tmp_path)
    code, _, err = run_command("experiments.style", [f"{k}={v}" for k, v in base.items()])
    lines = err.strip().splitlines()
    assert code == 1 and lines and lines[-1].startswith("error: "), err
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    assert not workdir.exists()


def test_missing_flag_is_named(tmp_path):
    code, _, err = run_command("experiments.style", ["--content=astronaut", f"--workdir={tmp_path / 'o'}"])
    assert code == 1 and "--style" in err.strip().splitlines()[-1]
