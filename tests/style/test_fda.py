"""FDA against a NumPy transcription of the authors' `low_freq_mutate_np` / `FDA_source_to_target_np`
(YanchaoYang/FDA utils/__init__.py) written here, worked examples, gradients against torch.fft
autograd of the same formula, the robust entropy against a torch transcription of their
model/deeplab.py, and the multi-band ensemble against NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segjax.style import ensemble_probabilities, fda, fda_entropy_loss

fda_jit = jax.jit(fda, static_argnums=2)


def low_freq_mutate_np(amp_src, amp_trg, L):
    a_src = np.fft.fftshift(amp_src, axes=(-2, -1))
    a_trg = np.fft.fftshift(amp_trg, axes=(-2, -1))
    _, h, w = a_src.shape
    b = (np.floor(np.amin((h, w)) * L)).astype(int)
    c_h, c_w = np.floor(h / 2.0).astype(int), np.floor(w / 2.0).astype(int)
    a_src[:, c_h - b:c_h + b + 1, c_w - b:c_w + b + 1] = a_trg[:, c_h - b:c_h + b + 1, c_w - b:c_w + b + 1]
    return np.fft.ifftshift(a_src, axes=(-2, -1))


def fda_source_to_target_np(src_img, trg_img, L):
    """One CHW image, as the authors' function."""
    fft_src = np.fft.fft2(src_img, axes=(-2, -1))
    fft_trg = np.fft.fft2(trg_img, axes=(-2, -1))
    amp_src, pha_src = np.abs(fft_src), np.angle(fft_src)
    amp_src_ = low_freq_mutate_np(amp_src, np.abs(fft_trg), L=L)
    return np.real(np.fft.ifft2(amp_src_ * np.exp(1j * pha_src), axes=(-2, -1)))


def reference(source, target, beta):
    """NHWC batch through the per-image CHW reference."""
    out = [fda_source_to_target_np(s.transpose(2, 0, 1).astype(np.float64),
                                   t.transpose(2, 0, 1).astype(np.float64), beta)
           for s, t in zip(source, target)]
    return np.stack(out).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("hw", [(33, 40), (24, 27)])
def test_matches_the_authors_numpy_version(np_rng, hw):
    source = np_rng.uniform(0, 255, (2, *hw, 3)).astype(np.float32)
    target = np_rng.uniform(0, 255, (2, *hw, 3)).astype(np.float32) * 0.5 + 40
    # 0.01, 0.05, 0.09 are the paper's; 0.25 and 0.5 reach the (even-size) clipped edge.
    for beta in (0.0, 0.01, 0.05, 0.09, 0.25, 0.5):
        out = fda_jit(jnp.asarray(source), jnp.asarray(target), beta)
        ref = reference(source, target, beta)
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-3, err_msg=f"beta={beta}")
        if beta >= 0.05:  # the window is more than the zero frequency: the output really changed
            assert np.abs(ref - source).max() > 1.0


def test_beta_zero_swaps_only_the_zero_frequency(np_rng):
    """b = 0: the slice c..c is one element, the DC term: each channel's mean becomes
    sign(mean_source) * |mean_target|, everything else is the source's."""
    source = np_rng.normal(0, 1, (2, 7, 6, 3)).astype(np.float32)
    source[0, ..., 0] -= 3.0  # one channel with a negative mean
    target = np_rng.normal(5, 2, (2, 7, 6, 3)).astype(np.float32)
    s_mean = source.mean(axis=(1, 2), keepdims=True)
    expected = source - s_mean + np.sign(s_mean) * np.abs(target.mean(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(fda_jit(source, target, 0.0), expected, atol=1e-4)
    np.testing.assert_allclose(reference(source, target, 0.0), expected, atol=1e-4)


def test_identity_when_source_equals_target(np_rng):
    x = np_rng.uniform(0, 255, (1, 16, 17, 3)).astype(np.float32)
    np.testing.assert_allclose(fda_jit(x, x, 0.09), x, atol=2e-3)


def torch_fda(source, target, beta):
    """The NumPy formula with torch.fft on NCHW float64, for autograd (nonzero spectra only)."""
    h, w = source.shape[-2:]
    b = int(np.floor(min(h, w) * beta))
    window = torch.zeros(h, w, dtype=torch.bool)
    window[h // 2 - b:h // 2 + b + 1, w // 2 - b:w // 2 + b + 1] = True
    window = torch.fft.ifftshift(window)
    f_src, f_trg = torch.fft.fft2(source), torch.fft.fft2(target)
    amp = torch.where(window, f_trg.abs(), f_src.abs())
    return torch.fft.ifft2(torch.polar(amp, f_src.angle())).real


def test_gradients_match_torch_autograd_and_stay_finite_at_zero_spectra(np_rng):
    source = np_rng.uniform(0, 1, (1, 12, 11, 2)).astype(np.float32)
    target = np_rng.uniform(0, 1, (1, 12, 11, 2)).astype(np.float32)
    cot = np_rng.normal(size=source.shape).astype(np.float32)
    beta = 0.09
    _, vjp = jax.vjp(lambda s, t: fda_jit(s, t, beta), jnp.asarray(source), jnp.asarray(target))
    g_src, g_trg = vjp(jnp.asarray(cot))
    ts, tt = (torch.tensor(a, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_(True)
              for a in (source, target))
    torch_fda(ts, tt, beta).backward(torch.tensor(cot, dtype=torch.float64).permute(0, 3, 1, 2))
    np.testing.assert_allclose(g_src, ts.grad.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(g_trg, tt.grad.permute(0, 2, 3, 1).numpy(), atol=1e-4)

    zeros = jnp.zeros((1, 8, 8, 1))  # every Fourier coefficient 0: amplitude and phase undefined
    g = jax.grad(lambda s: jnp.sum(fda_jit(s, zeros + 1.0, 0.1) ** 2))(zeros)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("args, match", [
    (((1, 8, 8, 3), (1, 8, 9, 3), 0.1), "same shape"),
    (((1, 8, 8, 3), (1, 8, 8, 3), -0.1), "finite number >= 0"),
    (((1, 8, 8, 3), (1, 8, 8, 3), float("nan")), "finite number >= 0"),
    (((1, 8, 9, 3), (1, 8, 9, 3), 0.7), "window would wrap|FDA's slice would wrap"),
    (((8, 8, 3), (8, 8, 3), 0.1), "source must have rank 4"),
])
def test_bad_arguments_raise_by_name(args, match):
    s, t, beta = args
    with pytest.raises(ValueError, match=match):
        fda(jnp.zeros(s), jnp.zeros(t), beta)


def torch_robust_entropy(logits, ita=2.0, norm=None):
    """model/deeplab.py's training branch on NCHW logits (norm = 2.9444 for their 19 classes)."""
    p = torch.softmax(logits, dim=1)
    ent = -1.0 * (p * torch.log_softmax(logits, dim=1)).sum(dim=1)
    ent = ent / (math.log(logits.shape[1]) if norm is None else norm)
    return ((ent ** 2.0 + 1e-8) ** ita).mean()


def test_entropy_loss_matches_the_authors_formula(np_rng):
    logits = np_rng.normal(0, 2, (2, 5, 4, 19)).astype(np.float32)
    valid = np_rng.uniform(size=(2, 5, 4)) > 0.3

    def mean_loss(x, mask):
        s, c = fda_entropy_loss(x, valid_mask=mask)
        return s / c

    value, grad = jax.jit(jax.value_and_grad(mean_loss))(jnp.asarray(logits), jnp.asarray(valid))
    t = torch.tensor(logits, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_(True)
    ref = torch_robust_entropy(t.permute(0, 2, 3, 1)[torch.tensor(valid)].reshape(-1, 19, 1, 1))
    ref.backward()
    np.testing.assert_allclose(value, ref.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, t.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-3, atol=1e-7)
    # Their constant 2.9444 is log 19 rounded: the same loss to 1e-4.
    full = torch_robust_entropy(torch.tensor(logits, dtype=torch.float64).permute(0, 3, 1, 2), norm=2.9444)
    s, c = fda_entropy_loss(jnp.asarray(logits))
    np.testing.assert_allclose(s / c, full.item(), rtol=1e-4)
    assert c == logits.size // 19


def test_ensemble_is_the_mean_of_softmax_probabilities(np_rng):
    logits = [np_rng.normal(0, 3, (2, 3, 4, 5)).astype(np.float32) for _ in range(3)]

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    np.testing.assert_allclose(ensemble_probabilities(logits), np.mean([softmax(x) for x in logits], 0),
                               rtol=1e-5, atol=1e-7)
    weighted = ensemble_probabilities(logits, [0.3333, 0.3333, 0.3334])  # getSudoLabel_multi.py's
    np.testing.assert_allclose(weighted, sum(w * softmax(x) for w, x in zip([0.3333, 0.3333, 0.3334], logits)),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="summing to 1"):
        ensemble_probabilities(logits, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="same shape"):
        ensemble_probabilities([logits[0], logits[1][:1]])
