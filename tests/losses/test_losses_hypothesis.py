"""Property tests (Hypothesis, issue 29) of the pixel and metric-learning losses on the inputs
that break losses: all-ignored labels, a single class, saturated logits (|logit| up to 3e4),
identical embeddings, batches without any valid pair, and empty batches.

Every loss must give a finite (sum, count) and a finite gradient; where nothing counts it gives
what `segjax.losses.pixel` / `triplet_loss` promise: sum 0 with count 0 (so the global
sum / max(count, 1) convention yields 0). Values are checked against independent references:
torch's `cross_entropy` (ignore_index), NumPy transcriptions of the focal, Dice, batch-all and
batch-hard triplet and contrastive losses. Shapes are fixed (values generated): one compile per
function and setting.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from segjax.losses import metric_learning as ml
from segjax.losses import pixel

IGNORE = 255
N, H, W, K = 2, 3, 4, 3
LABEL_MODES = ("mixed", "all_ignored", "one_class", "no_ignored")


@st.composite
def pixel_batch(draw):
    """(logits float32 [N, H, W, K], labels int32 [N, H, W], valid_mask None or bool [N])."""
    scale = draw(st.sampled_from([1.0, 1.0, 1e3]))  # 1e3: saturated softmax, p rounds to 0 or 1
    logits = np.asarray(draw(st.lists(st.floats(-30, 30, width=32), min_size=N * H * W * K,
                                      max_size=N * H * W * K)), np.float32).reshape(N, H, W, K) * scale
    mode = draw(st.sampled_from(LABEL_MODES))
    choices = {"mixed": [0, 1, 2, IGNORE], "all_ignored": [IGNORE], "one_class": [1],
               "no_ignored": [0, 1, 2]}[mode]
    labels = np.asarray(draw(st.lists(st.sampled_from(choices), min_size=N * H * W, max_size=N * H * W)),
                        np.int32).reshape(N, H, W)
    valid = draw(st.sampled_from([None, (True, True), (True, False), (False, False)]))
    return logits, labels, None if valid is None else np.asarray(valid)


def _counted(labels, valid):
    c = labels != IGNORE
    return c if valid is None else c & valid[:, None, None]


@functools.cache
def _value_and_grad(name, **kw):
    fn = getattr(pixel, name)

    def f(x, y, v):
        return jax.value_and_grad(lambda x: (lambda o: (o[0], o))(fn(x, y, ignore_label=IGNORE, valid_mask=v, **kw)),
                                  has_aux=True)(x)

    return jax.jit(f)


def _run(name, logits, labels, valid, **kw):
    """(sum, count, d sum / d logits), asserting all finite."""
    valid = np.ones(N, bool) if valid is None else valid
    (_, (s, c)), g = _value_and_grad(name, **kw)(logits, labels, valid)
    s, c, g = float(s), float(c), np.asarray(g)
    assert np.isfinite(s) and np.isfinite(c) and np.isfinite(g).all(), (name, kw, s, c)
    return s, c, g


@given(pixel_batch())
def test_cross_entropy_and_focal_vs_references(batch):
    logits, labels, valid = batch
    counted = _counted(labels, valid)
    torch_labels = torch.tensor(np.where(counted, labels, IGNORE).astype(np.int64))
    t_logits = torch.tensor(logits, dtype=torch.float64).permute(0, 3, 1, 2)
    ref = float(F.cross_entropy(t_logits, torch_labels, ignore_index=IGNORE, reduction="sum"))
    log_p = torch.log_softmax(t_logits, 1).permute(0, 2, 3, 1).numpy()
    log_py = np.take_along_axis(log_p, np.where(counted, labels, 0)[..., None], -1)[..., 0]
    for gamma in (0.0, 0.5, 2.0):
        s, c, g = _run("focal_loss", logits, labels, valid, gamma=gamma)
        want = np.sum(np.where(counted, -(-np.expm1(log_py)) ** gamma * log_py, 0.0))
        assert c == counted.sum()
        np.testing.assert_allclose(s, want, rtol=1e-4, atol=1e-3 * max(1.0, np.abs(logits).max() / 30))
    s, c, g = _run("cross_entropy", logits, labels, valid)
    assert c == counted.sum()
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-3 * max(1.0, np.abs(logits).max() / 30))
    if not counted.any():
        assert s == 0.0 and c == 0.0 and not g.any()


@given(pixel_batch())
def test_dice_lovasz_ohem_finite_and_as_documented(batch):
    logits, labels, valid = batch
    counted = _counted(labels, valid)
    images = counted.reshape(N, -1).any(1)
    s, c, g = _run("dice_loss", logits, labels, valid)
    p = np.exp(torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1).numpy()) * counted[..., None]
    onehot = np.eye(K)[np.where(counted, labels, 0)] * counted[..., None]
    dice = (2 * (p * onehot).sum((1, 2)) + 1.0) / (p.sum((1, 2)) + onehot.sum((1, 2)) + 1.0)
    np.testing.assert_allclose(s, np.sum(np.where(images, 1 - dice.mean(-1), 0.0)), rtol=1e-5, atol=1e-5)
    assert c == images.sum()
    s, c, g = _run("lovasz_softmax", logits, labels, valid)
    assert c == images.sum() and 0.0 <= s <= c + 1e-5  # a mean of Jaccard losses per image: in [0, 1]
    for kw in ({"thresh": 0.7, "min_kept": 2}, {"top_k": 0.5, "thresh": None}):
        s, c, g = _run("ohem_cross_entropy", logits, labels, valid, **kw)
        assert 0 <= c <= counted.sum() and s >= 0
        if counted.any() and "top_k" in kw:
            assert c >= np.ceil(0.5 * counted.sum())
    if not counted.any():
        for name in ("dice_loss", "lovasz_softmax", "ohem_cross_entropy"):
            s, c, g = _run(name, logits, labels, valid)
            assert s == 0.0 and c == 0.0 and not g.any(), name


@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "dice_loss", "lovasz_softmax",
                                  "ohem_cross_entropy"])
def test_pixel_losses_on_an_empty_batch(name):
    """N = 0 (e.g. an empty shard): (0, 0) and an (empty) gradient. dice, lovasz and ohem used
    to fail here (reshape(0, -1), indexing an empty sorted array)."""
    fn = getattr(pixel, name)
    x, y = jnp.zeros((0, H, W, K)), jnp.zeros((0, H, W), jnp.int32)
    s, c = fn(x, y, ignore_label=IGNORE)
    g = jax.grad(lambda x: fn(x, y, ignore_label=IGNORE)[0])(x)
    assert float(s) == 0.0 and float(c) == 0.0 and g.shape == (0, H, W, K)


# -- metric learning --------------------------------------------------------------------------

B, D = 6, 3


@st.composite
def embedding_batch(draw):
    """(embeddings float32 [B, D], labels [B], valid bool [B])."""
    mode = draw(st.sampled_from(["random", "identical", "zeros", "huge"]))
    x = np.asarray(draw(st.lists(st.floats(-3, 3, width=32), min_size=B * D, max_size=B * D)),
                   np.float32).reshape(B, D)
    if mode == "identical":
        x[:] = x[0]
    elif mode == "zeros":
        x[:] = 0.0
    elif mode == "huge":
        x *= 1e3
    labels = draw(st.sampled_from(["same", "distinct", "mixed"]))
    labels = {"same": np.zeros(B, np.int32), "distinct": np.arange(B, dtype=np.int32),
              "mixed": np.asarray(draw(st.lists(st.integers(0, 2), min_size=B, max_size=B)), np.int32)}[labels]
    valid = np.asarray(draw(st.lists(st.booleans(), min_size=B, max_size=B)))
    return x, labels, valid, mode


def _np_distances(x, squared):
    x = x.astype(np.float64)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    return d if squared else np.sqrt(d)


def _np_triplet(x, labels, valid, mining, margin, squared):
    """(sum, count): batch-all (count = positive-loss triplets) or batch-hard, NumPy loops."""
    d = _np_distances(x, squared)
    total, count = 0.0, 0
    for a in np.flatnonzero(valid):
        pos = [p for p in np.flatnonzero(valid) if p != a and labels[p] == labels[a]]
        neg = [n for n in np.flatnonzero(valid) if labels[n] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "all":
            for p in pos:
                for n in neg:
                    v = max(d[a, p] - d[a, n] + margin, 0.0)
                    total, count = total + v, count + (v > 0)
        else:
            total += max(max(d[a, pos]) - min(d[a, neg]) + margin, 0.0)
            count += 1
    return total, count


@functools.cache
def _ml_value_and_grad(name, **kw):
    fn = getattr(ml, name)
    return jax.jit(lambda x, y, v: jax.value_and_grad(lambda x: (lambda o: (o[0], o))(fn(x, y, valid=v, **kw)),
                                                      has_aux=True)(x))


def _ml_run(name, x, labels, valid, **kw):
    (_, (s, c)), g = _ml_value_and_grad(name, **kw)(x, labels, valid)
    s, c, g = float(s), float(c), np.asarray(g)
    assert np.isfinite(s) and np.isfinite(c) and np.isfinite(g).all(), (name, kw, s, c)
    if c == 0:
        assert s == 0.0 and not g.any(), (name, kw)
    return s, c, g


TRIPLET_SETTINGS = [dict(mining="all", distance="euclidean"), dict(mining="hard", distance="euclidean"),
                    dict(mining="hard", distance="squared", normalize=True, soft=True),
                    dict(mining="semi_hard", distance="euclidean"),
                    dict(mining="semi_hard", distance="squared", soft=True)]


@given(embedding_batch())
def test_triplet_and_contrastive_finite_with_the_promised_counts(batch):
    x, labels, valid, mode = batch
    # Values are compared on well-spread embeddings only: the distances come from the Gram matrix
    # (documented), whose float32 cancellation leaves sqrt(eps) * |x| of error in a distance
    # between (near-)identical rows, up to ~1 at 1e3-scale; there only finiteness and counts are
    # checked.
    check = mode == "random"
    scale = B * B * (1.0 + np.abs(x).max())
    for kw in TRIPLET_SETTINGS:
        s, c, g = _ml_run("triplet_loss", x, labels, valid, margin=0.5, **kw)
        if kw["mining"] == "semi_hard" or kw.get("normalize"):
            continue
        want_s, want_c = _np_triplet(x, labels, valid, kw["mining"], 0.5, kw["distance"] == "squared")
        if kw["mining"] == "hard":
            assert c == want_c  # anchors with a positive and a negative: no distance involved
        if check and not kw.get("soft"):
            np.testing.assert_allclose(s, want_s, rtol=1e-4, atol=1e-4 * scale)
    s, c, g = _ml_run("contrastive_loss", x, labels, valid, neg_margin=1.0)
    d = _np_distances(x, False)
    pair = valid[:, None] & valid[None, :] & ~np.eye(B, dtype=bool)
    same = labels[:, None] == labels[None, :]
    want = np.where(pair, np.where(same, d, np.maximum(1.0 - d, 0.0)) ** 2, 0.0).sum()
    assert c == pair.sum()
    if check:
        np.testing.assert_allclose(s, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("mining", ["all", "hard", "semi_hard"])
def test_triplet_on_an_empty_batch(mining):
    """B = 0: (0, 0), the promise for "nothing qualifies" (hard and semi-hard used to fail on the
    max of an empty distance matrix)."""
    x, y = jnp.zeros((0, D)), jnp.zeros((0,), jnp.int32)
    s, c = ml.triplet_loss(x, y, mining=mining)
    g = jax.grad(lambda x: ml.triplet_loss(x, y, mining=mining)[0])(x)
    assert float(s) == 0.0 and float(c) == 0.0 and g.shape == (0, D)


@given(st.lists(st.sampled_from([0, 1, 2, IGNORE]), min_size=2 * 4 * 4, max_size=2 * 4 * 4),
       st.lists(st.floats(-3, 3, width=32), min_size=2 * 4 * 4 * 2, max_size=2 * 4 * 4 * 2),
       st.booleans())
def test_discriminative_loss_finite(ids, emb, identical):
    ids = np.asarray(ids, np.int32).reshape(2, 4, 4)
    emb = np.asarray(emb, np.float32).reshape(2, 4, 4, 2)
    if identical:
        emb[:] = emb[0, 0, 0]  # every pixel the same embedding: zero distances everywhere
    (s, c), g = _disc(emb, ids)
    assert np.isfinite(float(s)) and np.isfinite(np.asarray(g)).all()
    has = [(np.isin(ids[i], [1, 2])).any() for i in range(2)]
    assert float(c) == sum(has)
    if not any(has):
        assert float(s) == 0.0 and not np.asarray(g).any()


_disc = jax.jit(lambda e, i: (ml.discriminative_loss(e, i, max_instances=2),
                              jax.grad(lambda e: ml.discriminative_loss(e, i, max_instances=2)[0])(e)))
