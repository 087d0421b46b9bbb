"""Fourier Domain Adaptation (Yang & Soatto, CVPR 2020, "FDA: Fourier Domain Adaptation for
Semantic Segmentation"), following the authors' NumPy code (YanchaoYang/FDA `utils/__init__.py`,
`FDA_source_to_target_np` and `low_freq_mutate_np`).

* `fda(source, target, beta)`: the paper's Eq. 1, x_{s->t} = F^-1([M_beta . A_t + (1 - M_beta) . A_s, P_s]):
  the 2-D FFT of every channel, the amplitude A inside a centred low-frequency window replaced by
  the target's, the source's phase P kept, the inverse FFT's real part returned. After `fftshift`
  the window is rows c_h - b .. c_h + b and columns c_w - b .. c_w + b, inclusive, with
  b = floor(min(H, W) beta), c_h = floor(H / 2), c_w = floor(W / 2) (numpy puts the zero
  frequency there for odd and even sizes); at the bottom/right edge of an even size the window is
  cut, as NumPy's slice is. beta = 0 still swaps one amplitude, the zero frequency: each channel's
  mean becomes sign(mean_s) |mean_t|. The authors' PyTorch version (`FDA_source_to_target`)
  is not followed: it uses the removed `torch.rfft` and swaps the four corners of the unshifted
  spectrum, frequencies -b .. b - 1, a window not symmetric around 0, so the mixed spectrum is not
  Hermitian and the inverse FFT has an imaginary part (issue 40 of their repository).
* `fda_entropy_loss`: the Charbonnier-penalised entropy, as their `model/deeplab.py` computes it
  in training: ent = -sum_k p_k log p_k / log K (they divide by 2.9444 = log 19),
  rho(ent) = (ent^2 + eps^2)^eta with eps^2 = 1e-8 and eta = 2 (`--ita 2.0`). The paper writes
  rho(x) = (x^2 + 0.001^2)^eta; the default follows the code (eps = 1e-4), `eps=1e-3` gives the
  paper's.
* `ensemble_probabilities`: the multi-band transfer's prediction (their
  `getSudoLabel_multi.py`): the mean of the softmax probabilities of models trained with
  different beta (0.01, 0.05, 0.09 in the paper).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segjax.ops._args import check_rank


def fda_window(height: int, width: int, beta: float) -> np.ndarray:
    """The low-frequency mask M_beta [H, W] bool in the unshifted FFT layout (see `fda`)."""
    beta = float(beta)
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    b = int(np.floor(min(height, width) * beta))
    c_h, c_w = height // 2, width // 2
    if b > min(c_h, c_w):
        raise ValueError(f"beta={beta} gives a window half-size b={b} larger than the centre "
                         f"({c_h}, {c_w}) of a {height}x{width} spectrum (FDA's slice would wrap); "
                         f"use beta <= {min(c_h, c_w) / min(height, width):.4g}")
    rows = (np.arange(height) >= c_h - b) & (np.arange(height) <= c_h + b)
    cols = (np.arange(width) >= c_w - b) & (np.arange(width) <= c_w + b)
    return np.fft.ifftshift(rows[:, None] & cols[None, :])


def _amplitude(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """|z| and z / |z| (1 where z = 0, numpy's angle(0) = 0), with finite gradients at z = 0."""
    sq = jnp.square(z.real) + jnp.square(z.imag)
    nonzero = sq > 0
    amp = jnp.sqrt(jnp.where(nonzero, sq, 1.0))
    return jnp.where(nonzero, amp, 0.0), jnp.where(nonzero, z / amp, 1.0)


def fda(source: jax.Array, target: jax.Array, beta: float) -> jax.Array:
    """The source images with the target's low-frequency amplitude spectrum (FDA's Eq. 1).

    Args:
      source: [N, H, W, C] floating images (any range; the authors use 0..255 before the mean
        subtraction).
      target: [N, H, W, C] images of the target domain, the same shape.
      beta: the window's size as a fraction of min(H, W) (a Python float, static; 0.01, 0.05,
        0.09 in the paper); raises ValueError if the window would not fit.
    Returns:
      [N, H, W, C] real, source's dtype. Differentiable in both inputs; jit-able with `beta`
      static.
    """
    check_rank(source, 4, "source", "N, H, W, C")
    check_rank(target, 4, "target", "N, H, W, C")
    if source.shape != target.shape:
        raise ValueError(f"source and target must have the same shape (resize the target first), "
                         f"got {source.shape} and {target.shape}")
    mask = jnp.asarray(fda_window(source.shape[1], source.shape[2], beta))[None, :, :, None]
    f_src = jnp.fft.fft2(source, axes=(1, 2))
    f_trg = jnp.fft.fft2(target, axes=(1, 2))
    _, phase_src = _amplitude(f_src)
    amp_trg, _ = _amplitude(f_trg)
    mixed = jnp.where(mask, amp_trg * phase_src, f_src)
    return jnp.real(jnp.fft.ifft2(mixed, axes=(1, 2))).astype(source.dtype)


def fda_entropy_loss(logits: jax.Array, *, eta: float = 2.0, eps: float = 1e-4,
                     valid_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """FDA's robust entropy on target predictions as a global `(sum, count)` pair.

    Per pixel: ent = -sum_k p_k log p_k / log K with p = softmax(logits), then
    (ent^2 + eps^2)^eta; the authors' loss is the mean, sum / count.

    Args:
      logits: [N, H, W, K] (K >= 2).
      eta: the Charbonnier exponent (2.0, their `--ita`).
      eps: their code's 1e-8 is eps^2 (the paper's text: eps = 0.001).
      valid_mask: optional [N, H, W] bool; pixels outside it add nothing.
    Returns:
      (sum, count) float32 scalars.
    """
    check_rank(logits, 4, "logits", "N, H, W, K")
    k = logits.shape[-1]
    if k < 2:
        raise ValueError(f"logits need K >= 2 classes for a normalised entropy, got shape {logits.shape}")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1) / math.log(k)
    penalty = (jnp.square(ent) + eps**2) ** eta
    valid = jnp.ones(penalty.shape, bool) if valid_mask is None else valid_mask.astype(bool)
    return jnp.sum(jnp.where(valid, penalty, 0.0)), jnp.sum(valid).astype(jnp.float32)


def ensemble_probabilities(logits: Sequence[jax.Array], weights: Sequence[float] | None = None) -> jax.Array:
    """The multi-band ensemble: sum_m w_m softmax(logits_m) over the class axis (last).

    Args:
      logits: M >= 1 arrays [..., K] of the same shape, one per model (one per beta in FDA).
      weights: M non-negative weights summing to 1; the mean (1 / M each) if None (FDA's
        0.3333, 0.3333, 0.3334 for three models).
    Returns:
      [..., K] float32 probabilities (each pixel sums to 1); its argmax is the pseudo-label.
    """
    if len(logits) == 0:
        raise ValueError("logits must hold at least one model's predictions")
    shapes = {tuple(np.shape(x)) for x in logits}
    if len(shapes) != 1:
        raise ValueError(f"every model's logits must have the same shape, got {sorted(shapes)}")
    m = len(logits)
    if weights is None:
        weights = [1.0 / m] * m
    if len(weights) != m or min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"weights must be {m} non-negative numbers summing to 1, got {list(weights)}")
    return sum(w * jax.nn.softmax(jnp.asarray(x, jnp.float32), axis=-1) for w, x in zip(weights, logits))
