"""segjax.tasks.oracle_refine.oracle_ascent: with an analytic oracle (soft Dice against a known
ground truth) the ascent from zeros reaches Dice > 0.99 within 50 steps; one step equals the paper's
update computed by hand; examples are independent; the plain variant; masks kept on request."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.tasks import oracle_refine


def analytic_oracle(variables, image, mask):
    del image
    return oracle_refine.soft_dice(mask, variables["truth"])


def _truth(rng, n=3, h=20, w=24):
    from scipy import ndimage

    t = np.stack([ndimage.gaussian_filter(rng.standard_normal((h, w)), 3) > 0.1 for _ in range(n)])
    return t.astype(np.float32)


@pytest.mark.parametrize("start", ["zeros", "noisy"])
def test_analytic_oracle_reaches_dice_above_099(np_rng, start):
    truth = _truth(np_rng)
    image = np.zeros(truth.shape + (3,), np.float32)
    mask0 = (np.zeros_like(truth) if start == "zeros" else
             np.clip(truth * 0.3 + np_rng.uniform(0, 0.6, truth.shape), 0, 1).astype(np.float32))
    out = oracle_refine.oracle_ascent(analytic_oracle, {"truth": truth}, image, mask0, steps=50,
                                      truth=truth)
    assert out["quality"].shape == (51, 3) and out["dice"].shape == (51, 3)
    dice = np.asarray(out["dice"])
    assert np.all(dice[-1] > 0.99)
    assert np.all(np.asarray(oracle_refine.hard_dice(out["mask"], truth)) > 0.99)
    first = int(np.argmax(np.all(dice > 0.99, axis=1)))
    # The paper's update moves a pixel by at most step_size * tanh(2.5) < 0.1 per step, so from
    # zeros no pixel passes 0.5 before step 6: the Dice is exactly 0 until then. It gets above
    # 0.99 before the last step (not only at it).
    if start == "zeros":
        assert np.all(dice[:6] == 0.0)
        assert 6 <= first < 50, first
    else:
        assert np.any(dice[0] <= 0.99) and 1 <= first < 50, (dice[0], first)
    q = np.asarray(out["quality"])
    assert np.all(q[-1] > q[0])


def test_one_step_is_the_paper_update(np_rng):
    truth = _truth(np_rng, n=2)
    image = np.zeros(truth.shape + (3,), np.float32)
    m0 = np_rng.uniform(0, 1, truth.shape).astype(np.float32)
    g = np.asarray(jax.grad(lambda m: jnp.sum(oracle_refine.soft_dice(m, truth)))(m0))
    want = np.clip(m0 + 0.1 * np.tanh(2.5 * g / np.abs(g).max(axis=(1, 2), keepdims=True)), 0, 1)
    out = oracle_refine.oracle_ascent(analytic_oracle, {"truth": truth}, image, m0, steps=1)
    np.testing.assert_allclose(out["mask"], want, rtol=1e-5, atol=1e-6)
    plain = oracle_refine.oracle_ascent(analytic_oracle, {"truth": truth}, image, m0, steps=1,
                                        step_size=3.0, update="plain")
    np.testing.assert_allclose(plain["mask"], np.clip(m0 + 3.0 * g, 0, 1), rtol=1e-5, atol=1e-6)
    # Per-example normalisation: example 1 alone moves exactly as in the batch.
    alone = oracle_refine.oracle_ascent(analytic_oracle, {"truth": truth[1:]}, image[1:],
                                        m0[1:], steps=1)
    np.testing.assert_allclose(alone["mask"], out["mask"][1:], rtol=1e-6)
    with pytest.raises(ValueError, match="update"):
        oracle_refine.oracle_ascent(analytic_oracle, {"truth": truth}, image, m0, steps=1,
                                    update="x")


def test_learned_oracle_and_kept_masks(np_rng):
    from segjax.models import create_model

    model = create_model("oracle_single", num_classes=1, base_features=4, depth=2, hidden=8)
    image = np_rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    mask0 = np.zeros((2, 16, 16), np.float32)
    variables = model.init(jax.random.key(0), image, mask0)
    apply = functools.partial(_quality, model)
    out = oracle_refine.oracle_ascent(apply, variables, image, mask0, steps=4, keep_steps=(0, 2, 4))
    assert out["masks"].shape == (3, 2, 16, 16)
    np.testing.assert_array_equal(out["masks"][0], mask0)
    np.testing.assert_allclose(out["masks"][2], out["mask"])
    np.testing.assert_allclose(out["quality"][0], model.apply(variables, image, mask0)["quality"],
                               rtol=1e-5)
    assert float(jnp.max(jnp.abs(out["mask"]))) > 0  # it moved


def _quality(model, variables, image, mask):
    return model.apply(variables, image, mask, train=False)["quality"]


def test_oracle_seeds_table_by_hand(tmp_path):
    """experiments.oracle_seeds: per-seed rows, the mean over seeds with its t-interval and the
    paired gain, and a refusal to pool reports over different images."""
    import json

    from scipy import stats as st

    from experiments import oracle_seeds

    def report(d, before, after, step, spearman, seed=0):
        e = {"dice_before": before, "dice_after": after, "steps": step, "spearman": spearman,
             "dice_last_step": after - 0.1}
        r = {"num_images": 8, "num_select": 4, "num_test": 4, "max_steps": 20, "update": "paper",
             "seed": seed, "segmenter": e}
        (tmp_path / d).mkdir()
        (tmp_path / d / "report.json").write_text(json.dumps(r))
        return str(tmp_path / d)

    dirs = [report("a", 0.6, 0.7, 3, 0.8), report("b", 0.5, 0.55, 5, 0.9), report("c", 0.7, 0.65, 2, 0.85)]
    text = oracle_seeds.markdown(oracle_seeds.load(dirs), ["a", "b", "c"])
    assert "**from zeros**" not in text
    assert "| b | 0.900 | 0.500 | 0.550 | 5 | +0.050 | 0.450 |" in text
    gains = np.array([0.1, 0.05, -0.05])
    half = st.t.ppf(0.975, 2) * gains.std(ddof=1) / np.sqrt(3)
    p = st.ttest_rel([0.7, 0.55, 0.65], [0.6, 0.5, 0.7]).pvalue
    assert f"| 3, 5, 2 | {gains.mean():.3f} ± {half:.3f} (p = {p:.2g}) |" in text
    with pytest.raises(ValueError, match="different images"):
        oracle_seeds.load(dirs + [report("d", 0.1, 0.2, 1, 0.5, seed=1)])
