"""The mask priors of the ascent (`segjax.tasks.oracle_refine.mask_prior`): total variation and
the binarisation penalty equal their NumPy formulas, their gradients equal the NumPy
derivatives written out by hand, one ascent step with priors is the paper's update of
`grad(q) - grad(prior)` computed in NumPy, the weights at 0 change nothing, and a negative
weight is refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.tasks import oracle_refine


def _np_tv(m):
    """Anisotropic TV per example, divided by H W."""
    h, w = m.shape[1:]
    return (np.abs(np.diff(m, axis=1)).sum((1, 2)) + np.abs(np.diff(m, axis=2)).sum((1, 2))) / (h * w)


def _np_tv_grad(m):
    """d TV / d m by hand: each difference d = m[b] - m[a] adds sign(d) to m[b], -sign(d) to m[a]."""
    g = np.zeros_like(m)
    dh = np.sign(m[:, 1:, :] - m[:, :-1, :])
    dw = np.sign(m[:, :, 1:] - m[:, :, :-1])
    g[:, 1:, :] += dh
    g[:, :-1, :] -= dh
    g[:, :, 1:] += dw
    g[:, :, :-1] -= dw
    return g / (m.shape[1] * m.shape[2])


def test_priors_and_their_gradients_equal_numpy(np_rng):
    m = np_rng.uniform(0, 1, (3, 7, 9)).astype(np.float32)
    tv, bw = 0.7, 1.9
    np.testing.assert_allclose(oracle_refine.total_variation(m), _np_tv(m), rtol=1e-6)
    np.testing.assert_allclose(oracle_refine.binarisation_penalty(m),
                               (m * (1 - m)).mean((1, 2)), rtol=1e-6)
    np.testing.assert_allclose(
        oracle_refine.mask_prior(m, tv_weight=tv, binary_weight=bw),
        tv * _np_tv(m) + bw * (m * (1 - m)).mean((1, 2)), rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(oracle_refine.mask_prior(x, tv_weight=tv,
                                                            binary_weight=bw)))(m)
    want = tv * _np_tv_grad(m) + bw * (1 - 2 * m) / (7 * 9)
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
    # A 0/1 mask has no binarisation penalty; all-grey has 1/4; a constant mask no TV.
    assert float(oracle_refine.binarisation_penalty(np.round(m))[0]) == 0.0
    assert float(oracle_refine.binarisation_penalty(np.full((1, 4, 4), 0.5))[0]) == 0.25
    assert float(oracle_refine.total_variation(np.full((1, 4, 4), 0.3))[0]) == 0.0


def _linear_oracle(variables, image, mask):
    del image
    return jnp.sum(mask * variables["w"], axis=(1, 2))


def test_one_ascent_step_with_priors_is_the_paper_update_in_numpy(np_rng):
    m0 = np_rng.uniform(0.05, 0.95, (2, 8, 10)).astype(np.float32)
    w = (np_rng.standard_normal((2, 8, 10)) / 80).astype(np.float32)
    image = np.zeros((2, 8, 10, 3), np.float32)
    tv, bw = 0.5, 0.3
    g = w - tv * _np_tv_grad(m0) - bw * (1 - 2 * m0) / 80
    want = np.clip(m0 + 0.1 * np.tanh(2.5 * g / np.abs(g).max(axis=(1, 2), keepdims=True)), 0, 1)
    out = oracle_refine.oracle_ascent(_linear_oracle, {"w": w}, image, m0, steps=1,
                                      tv_weight=tv, binary_weight=bw)
    np.testing.assert_allclose(out["mask"], want, rtol=1e-5, atol=1e-6)
    # "quality" is the oracle's alone, without the priors.
    np.testing.assert_allclose(out["quality"][0], (m0 * w).sum((1, 2)), rtol=1e-5, atol=1e-7)
    # Weights 0: the ascent of the oracle alone.
    g0 = w
    want0 = np.clip(m0 + 0.1 * np.tanh(2.5 * g0 / np.abs(g0).max(axis=(1, 2), keepdims=True)),
                    0, 1)
    off = oracle_refine.oracle_ascent(_linear_oracle, {"w": w}, image, m0, steps=1,
                                      tv_weight=0.0, binary_weight=0.0)
    np.testing.assert_allclose(off["mask"], want0, rtol=1e-5, atol=1e-6)


def test_a_negative_weight_is_refused_by_name():
    z = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="tv_weight"):
        oracle_refine.oracle_ascent(_linear_oracle, {"w": z}, z[..., None], z, steps=1,
                                    tv_weight=-0.1)
    with pytest.raises(ValueError, match="binary_weight"):
        oracle_refine.oracle_ascent(_linear_oracle, {"w": z}, z[..., None], z, steps=1,
                                    binary_weight=float("nan"))
