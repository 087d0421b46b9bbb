"""DACS's pseudo-label weight, mixed pixel weights and EMA teacher (vikolss/DACS trainUDA.py:
`max_probs.ge(0.968)` over the batch size, `update_ema_variables`) against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np

from segjax.style import confident_pseudo_labels, ema_update, mix_pixel_weights

K = 6


def test_confident_pseudo_labels_match_dacs(np_rng):
    logits = np_rng.normal(0, 4, (2, 5, 6, K)).astype(np.float32)
    labels, weight = jax.jit(confident_pseudo_labels)(jnp.asarray(logits))
    e = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    np.testing.assert_array_equal(labels, probs.argmax(-1))
    ref = np.sum(probs.max(-1) >= 0.968) / labels.size  # trainUDA.py: max_probs.ge(0.968) / size
    assert 0 < ref < 1
    np.testing.assert_allclose(weight, ref, rtol=1e-6)
    mask = np_rng.uniform(size=labels.shape) < 0.4
    np.testing.assert_allclose(mix_pixel_weights(mask, weight), np.where(mask, 1.0, ref), rtol=1e-6)


def test_pseudo_label_weight_is_global_under_pmap(np_rng):
    """Devices holding different numbers of confident pixels: the weight is the global fraction."""
    logits = np_rng.normal(0, 6, (4, 3, 3, K)).astype(np.float32)
    _, weight = jax.pmap(lambda x: confident_pseudo_labels(x, axis_name="d"), axis_name="d")(logits[:, None])
    _, whole = confident_pseudo_labels(jnp.asarray(logits))
    np.testing.assert_allclose(weight, np.full(4, whole), rtol=1e-6)


def test_ema_update_matches_dacs():
    teacher = {"w": np.array([1.0, 2.0]), "b": np.array(3.0)}
    student = {"w": np.array([0.0, 4.0]), "b": np.array(-1.0)}
    for step, a in ((0, 0.0), (1, 0.5), (9, 0.9), (1000, 0.99)):  # min(1 - 1 / (step + 1), 0.99)
        out = ema_update(teacher, student, step)
        for k in teacher:
            np.testing.assert_allclose(out[k], a * teacher[k] + (1 - a) * student[k], rtol=1e-6)
