"""`python -m segjax.tools.convert_torchvision` end to end: .pth in, orbax + JSON out, same logits."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import torchvision

from segjax.models import AUX_LOGITS, LOGITS, create_model
from segjax.models.torchvision_import import load_converted, read_converted_config
from tests.models.tv_reference import nchw, nhwc, randomize_batchnorm, rel_err

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
    return subprocess.run([sys.executable, "-m", "segjax.tools.convert_torchvision", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_convert_command_round_trip(tmp_path, np_rng):
    torch.manual_seed(0)
    ref = torchvision.models.segmentation.deeplabv3_resnet50(
        num_classes=3, aux_loss=True, weights=None, weights_backbone=None)
    ref = randomize_batchnorm(ref, np_rng).eval()
    weights = tmp_path / "dlv3.pth"
    torch.save(ref.state_dict(), weights)
    out_dir = tmp_path / "converted"
    proc = _run("--model=deeplabv3_resnet50", f"--weights={weights}", f"--workdir={out_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    config = read_converted_config(str(out_dir))
    assert (config["model"], config["num_classes"], config["aux_loss"]) == ("deeplabv3_resnet50", 3, True)
    variables = load_converted(str(out_dir))
    model = create_model(config["model"], num_classes=config["num_classes"], aux_loss=config["aux_loss"])
    x = np_rng.standard_normal((1, 41, 53, 3)).astype(np.float32)
    out = jax.jit(model.apply)(variables, x)
    with torch.no_grad():
        expected = ref(nchw(x))
    assert rel_err(out[LOGITS], nhwc(expected["out"])) <= 1e-4
    assert rel_err(out[AUX_LOGITS], nhwc(expected["aux"])) <= 1e-4

    again = _run("--model=deeplabv3_resnet50", f"--weights={weights}", f"--workdir={out_dir}")
    assert again.returncode != 0 and "already exists" in again.stderr


def test_convert_command_rejects_bad_arguments(tmp_path):
    proc = _run("--model=deeplabv3_resnet50", f"--weights={tmp_path / 'absent.pth'}", f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "absent.pth does not exist" in proc.stderr
    proc = _run("--model=unet", "--weights=x", f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "deeplabv3_resnet50" in proc.stderr  # lists the supported names
