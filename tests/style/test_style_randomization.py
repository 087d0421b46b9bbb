"""Style randomisation's two stylisers: AdaIN on pixels against a torch transcription of
`alpha AdaIN(source, target) + (1 - alpha) source` clipped to 0..255 (naoto0804/pytorch-AdaIN's
`calc_mean_std`: unbiased variance + eps), values and input gradients; and a trained run's
AdaIN network, loaded from a work directory in `python -m experiments.style --method=adain`'s
format (tiny torch-initialised encoder and decoder written through the converters), against the
torch transcriptions of naoto0804's `vgg` and `decoder` with the same weights: encoder -> AdaIN
-> alpha blend -> decoder, cropped and clipped."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segjax.style.adain import from_torch_decoder
from segjax.style.adain_encoder import from_torch_vgg_normalised
from segjax.style.feedforward import save_variables
from segjax.style.style_randomization import load_adain_styliser, pixel_adain
from tests.style.test_adain import torch_adain, torch_calc_mean_std, torch_decoder
from tests.style.test_adain_encoder import torch_vgg_to_relu4_1

W, DEC_W = 2, 2


def nchw(x):
    return torch.tensor(np.asarray(x, np.float64)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)


def torch_pixel_adain(source, target, alpha):
    """The formula on [N, C, H, W] 0..255 images, alpha [N]."""
    a = alpha.reshape(-1, 1, 1, 1)
    s_mean, s_std = torch_calc_mean_std(target)
    c_mean, c_std = torch_calc_mean_std(source)
    return (a * ((source - c_mean) / c_std * s_std + s_mean) + (1 - a) * source).clamp(0, 255)


def test_pixel_adain_matches_the_formula_values_and_gradients(np_rng):
    source = np_rng.uniform(0, 255, (3, 9, 7, 3)).astype(np.float32)
    target = np.clip(np_rng.normal(60, 50, (3, 5, 6, 3)), 0, 255).astype(np.float32)
    alpha = np.array([1.0, 0.35, 0.0], np.float32)
    cot = np_rng.normal(size=source.shape).astype(np.float32)
    out, vjp = jax.vjp(lambda s, t: jax.jit(pixel_adain)(s, t, alpha), jnp.asarray(source), jnp.asarray(target))
    g_source, g_target = vjp(jnp.asarray(cot))
    ts, tt = nchw(source), nchw(target)
    want = torch_pixel_adain(ts, tt, torch.tensor(alpha, dtype=torch.float64))
    (want * nchw(cot)).sum().backward()
    np.testing.assert_allclose(out, want.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(g_source, ts.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(g_target, tt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-3, atol=1e-4)
    clipped = want.detach().numpy()
    assert 0.01 < np.mean((clipped == 0) | (clipped == 255)) < 0.5  # the clip is exercised
    np.testing.assert_array_equal(out[2], source[2])  # alpha 0: the source


@pytest.fixture(scope="module")
def adain_run(tmp_path_factory):
    """A work directory as `experiments.style --method=adain --weights=ENCODER.msgpack` leaves
    it (run.json and decoder.msgpack), with the torch modules whose weights it holds."""
    torch.manual_seed(0)
    enc, dec = torch_vgg_to_relu4_1(W), torch_decoder(DEC_W, 8 * W)
    with torch.no_grad():
        dec[-1].bias.fill_(0.5)  # outputs mostly inside 0..1, so the clip does not hide them
    root = tmp_path_factory.mktemp("adain_run")
    encoder_file = root / "vgg_normalised.msgpack"
    save_variables(from_torch_vgg_normalised({k: v.numpy() for k, v in enc.state_dict().items()}),
                   str(encoder_file))
    workdir = root / "run"
    workdir.mkdir()
    save_variables(from_torch_decoder({k: v.numpy() for k, v in dec.state_dict().items()}),
                   str(workdir / "decoder.msgpack"))
    (workdir / "run.json").write_text(json.dumps({"method": "adain", "seed": 0, "encoder_weights": str(encoder_file),
                                                  "encoder": f"vgg_normalised encoder from {encoder_file}"}))
    return workdir, enc, dec


def test_trained_run_styliser_is_encoder_adain_decoder(adain_run, np_rng):
    workdir, enc, dec = adain_run
    styliser = load_adain_styliser(str(workdir), out=lambda line: None)
    source = np_rng.uniform(0, 255, (2, 13, 11, 3)).astype(np.float32)  # decoded at 16 x 16, cropped
    target = np_rng.uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    alpha = np.array([0.8, 0.3], np.float32)
    got = np.asarray(jax.jit(styliser)(source, target, alpha))
    with torch.no_grad():
        fc, fs = enc(nchw(source) / 255), enc(nchw(target) / 255)
        a = torch.tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1, 1)
        want = dec(a * torch_adain(fc, fs) + (1 - a) * fc)[:, :, :13, :11].clamp(0, 1) * 255
    want = want.permute(0, 2, 3, 1).numpy()
    assert got.shape == source.shape and 0.2 < np.mean((want > 0) & (want < 255))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("summary, words", [
    ({"method": "fast", "seed": 0}, "not 'adain'"),
    ({"method": "adain", "seed": 0, "encoder": "VGG-19 weights from /x"}, "does not record"),
    (None, "no "),
])
def test_a_run_that_is_not_an_adain_run_is_refused_by_name(tmp_path, summary, words):
    if summary is not None:
        (tmp_path / "run.json").write_text(json.dumps(summary))
    with pytest.raises((ValueError, FileNotFoundError), match=words) as e:
        load_adain_styliser(str(tmp_path))
    assert "config.uda.adain_model" in str(e.value)


@pytest.mark.parametrize("alpha, words", [
    (np.array([0.5, 1.5], np.float32), "alpha must be in"),
    (np.array([0.5, np.nan], np.float32), "alpha must be in"),
    (np.array([0.5, 0.5, 0.5], np.float32), "one value per example"),
    (-0.1, "alpha must be in"),
])
def test_bad_alphas_are_refused_by_name(alpha, words):
    with pytest.raises(ValueError, match=words):
        pixel_adain(jnp.zeros((2, 4, 4, 3)), jnp.ones((2, 4, 4, 3)), alpha)
