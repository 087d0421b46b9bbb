"""segjax.losses.metric_learning in float64, values and gradients, against independent references.

References: pytorch-metric-learning (PML) where it computes the same thing, a NumPy loop
transcription of TF-Addons' `triplet_semihard_loss` / `triplet_hard_loss` (TF-Addons is
end-of-life; its semantics are ported here, with central finite differences for the gradient),
a torch transcription of De Brabandere et al.'s discriminative loss, and closed forms.

Where PML differs: its `TripletMarginMiner("semihard")` keeps every triplet with
0 < d(a, n) - d(a, p) <= margin, not FaceNet's single nearest-farther negative per positive pair,
so `test_semi_hard_through_pml_miners` rebuilds the FaceNet choice from PML's mined triplets.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh, PartitionSpec as P
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers

from segjax.losses import metric_learning as el
from segjax import losses

pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture
def x64():
    """float64 for this module's tests only (the other tests keep JAX's float32 default)."""
    with jax.enable_x64(True):
        yield


def batch(rng, b=14, d=3, num_labels=4, scale=1.0):
    """Embeddings [b, d] and labels [b] with label 9 a singleton (an anchor without positive)."""
    x = rng.normal(size=(b, d)) * scale
    labels = rng.integers(0, num_labels, size=b)
    labels[0] = 9
    return x, labels


def jax_loss(fn, x, *args, mean=False, **kw):
    """(sum, count, d sum / d x) - or the gradient of sum / count with mean=True - in float64."""

    def objective(x):
        s, c = fn(x, *args, **kw)
        return (s / c if mean else s), (s, c)

    (_, (s, c)), g = jax.jit(jax.value_and_grad(objective, has_aux=True))(jnp.asarray(x, jnp.float64))
    assert s.dtype == jnp.float64
    return float(s), float(c), np.asarray(g)


def torch_loss(fn, x):
    """Value and gradient of a scalar torch function of x, in float64."""
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    value = fn(t)
    value.backward()
    return float(value.detach()), t.grad.numpy()


def pml_distance(distance, normalize):
    return pml_distances.LpDistance(normalize_embeddings=normalize, p=2, power=2 if distance == "squared" else 1)


# ---------------------------------------------------------------------------------------------
# triplet loss against pytorch-metric-learning


@pytest.mark.parametrize(
    "distance,normalize,soft", [("euclidean", False, False), ("squared", True, False), ("euclidean", False, True)]
)
def test_batch_all_is_pml_triplet_margin_loss(np_rng, distance, normalize, soft):
    x, labels = batch(np_rng)
    margin = 0.7
    s, c, g = jax_loss(
        el.triplet_loss, x, labels, margin=margin, mining="all", distance=distance, normalize=normalize, soft=soft,
        mean=True,
    )
    pml = pml_losses.TripletMarginLoss(margin=margin, smooth_loss=soft, distance=pml_distance(distance, normalize))
    ref, ref_g = torch_loss(lambda t: pml(t, torch.tensor(labels)), x)
    np.testing.assert_allclose(s / c, ref, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-12)
    # count = triplets with a positive loss (PML's AvgNonZeroReducer divides by the same).
    same = labels[:, None] == labels[None, :]
    pos = same & ~np.eye(len(labels), dtype=bool)
    if soft:
        assert c == np.sum(pos[:, :, None] & ~same[:, None, :])
    else:
        assert 0 < c < np.sum(pos[:, :, None] & ~same[:, None, :])


@pytest.mark.parametrize("distance,normalize,soft", [("euclidean", False, False), ("squared", True, True)])
def test_batch_hard_is_pml_batch_hard_miner(np_rng, distance, normalize, soft):
    x, labels = batch(np_rng)
    margin = 0.5
    s, c, g = jax_loss(
        el.triplet_loss, x, labels, margin=margin, mining="hard", distance=distance, normalize=normalize, soft=soft
    )
    dist = pml_distance(distance, normalize)
    miner = pml_miners.BatchHardMiner(distance=dist)
    pml = pml_losses.TripletMarginLoss(
        margin=margin, smooth_loss=soft, distance=dist, reducer=pml_reducers.SumReducer()
    )
    tl = torch.tensor(labels)
    ref, ref_g = torch_loss(lambda t: pml(t, tl, miner(t, tl)), x)
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-12)
    # count = anchors with a positive and a negative: all but the singleton (and any other).
    assert c == len(miner(torch.tensor(x), tl)[0]) == np.sum(np.bincount(labels)[labels] > 1)


def test_batch_hard_mean_is_pml_mean_reducer_not_its_default(np_rng):
    """What docs/embedding.md says, exactly (issue 29: it used to say "TripletMarginLoss (with
    BatchHardMiner)", true only of the sum with SumReducer): sum / count equals TripletMarginLoss
    on BatchHardMiner's triplets with MeanReducer, in value and gradient; PML's default
    AvgNonZeroReducer divides by the triplets whose loss is non-zero and differs on a clustered
    batch, where some anchors' hardest triplet already meets the margin."""
    _, labels = batch(np_rng)
    centers = np_rng.normal(size=(10, 3)) * 3.0
    x = centers[labels] + np_rng.normal(size=(len(labels), 3)) * 0.6
    margin = 0.5
    s, c, g = jax_loss(el.triplet_loss, x, labels, margin=margin, mining="hard", mean=True)
    dist = pml_distance("euclidean", False)
    miner = pml_miners.BatchHardMiner(distance=dist)
    tl = torch.tensor(labels)

    def pml(reducer=None):
        kw = {} if reducer is None else {"reducer": reducer}
        loss = pml_losses.TripletMarginLoss(margin=margin, distance=dist, **kw)
        return torch_loss(lambda t: loss(t, tl, miner(t, tl)), x)

    ref, ref_g = pml(pml_reducers.MeanReducer())
    np.testing.assert_allclose(s / c, ref, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-12)
    default, _ = pml()
    nonzero = s / default  # AvgNonZeroReducer: sum / (#triplets with loss > 0)
    assert abs(nonzero - round(nonzero)) < 1e-9 and 0 < round(nonzero) < c, (s, c, default)


def test_semi_hard_through_pml_miners(np_rng):
    """FaceNet's choice per positive pair (a, p) in terms of PML's TripletMarginMiner classes.

    With t = d(a, n) - d(a, p): "semihard" triplets have 0 < t <= margin, "easy" t > margin,
    "hard" t <= 0. The nearest negative farther than p is the semihard one with the largest loss
    if there is one (loss 0 if only easy ones are farther); with no farther negative at all, it
    is the farthest negative = the hard triplet with the smallest loss.
    """
    x, labels = batch(np_rng, b=16, d=2, num_labels=3)
    margin = 0.6
    s, c, g = jax_loss(el.triplet_loss, x, labels, margin=margin, mining="semi_hard")

    dist = pml_distances.LpDistance(normalize_embeddings=False)
    tl = torch.tensor(labels)
    per_triplet = pml_losses.TripletMarginLoss(margin=margin, distance=dist, reducer=pml_reducers.DoNothingReducer())
    mined = {
        kind: pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind, distance=dist)(torch.tensor(x), tl)
        for kind in ("semihard", "easy", "hard")
    }
    kinds_seen = {"in_band": 0, "fallback": 0}

    def reference(t):
        out = {k: per_triplet(t, tl, m)["loss"] for k, m in mined.items()}
        total = t.sum() * 0
        for a, p in zip(*np.nonzero((labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool))):
            def of(kind):
                (ia, ip, _), losses_ = out[kind]["indices"], out[kind]["losses"]
                return losses_[(ia == a) & (ip == p)]

            semihard, easy, hard = of("semihard"), of("easy"), of("hard")
            if len(semihard):
                total = total + semihard.max()
                kinds_seen["in_band"] += 1
            elif not len(easy):
                total = total + hard.min()
                kinds_seen["fallback"] += 1
        return total

    ref, ref_g = torch_loss(reference, x)
    assert kinds_seen["in_band"] > 0 and kinds_seen["fallback"] > 0  # both branches exercised
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-12)
    assert c == np.sum((labels[:, None] == labels[None, :])) - len(labels)  # all positive pairs


# ---------------------------------------------------------------------------------------------
# triplet loss against a NumPy transcription of TF-Addons


def _tfa_pdist(x, squared):
    """tfa.losses.metric_learning.pairwise_distance: Gram form, clamp, zero diagonal."""
    sq = np.sum(x**2, 1)[:, None] + np.sum(x**2, 1)[None, :] - 2 * x @ x.T
    sq = np.maximum(sq, 0.0)
    d = sq if squared else np.sqrt(sq) * (sq > 0)
    np.fill_diagonal(d, 0.0)
    return d


def _masked_minimum(row, mask):
    """TF-Addons' _masked_minimum on one row: the row's maximum when the mask is empty."""
    top = row.max()
    return np.min((row - top) * mask) + top


def _masked_maximum(row, mask):
    """TF-Addons' _masked_maximum on one row: the row's minimum when the mask is empty."""
    bottom = row.min()
    return np.max((row - bottom) * mask) + bottom


def tfa_triplet_semihard_loss(labels, x, margin=1.0, squared=False):
    """triplet_semihard_loss as a loop over (anchor, positive) pairs; returns the mean."""
    d = _tfa_pdist(x, squared)
    b = len(labels)
    adjacency = labels[:, None] == labels[None, :]
    total, num_positives = 0.0, 0
    for a in range(b):
        for p in range(b):
            if not adjacency[a, p] or a == p:
                continue
            num_positives += 1
            farther = ~adjacency[a] & (d[a] > d[a, p])
            if farther.any():
                neg = _masked_minimum(d[a], farther)
            else:
                neg = _masked_maximum(d[a], ~adjacency[a])
            total += max(margin + d[a, p] - neg, 0.0)
    return total / num_positives


def tfa_triplet_hard_loss_per_anchor(labels, x, margin=1.0, soft=False, squared=False):
    """triplet_hard_loss before its reduce_mean: one loss per anchor (including its quirks)."""
    d = _tfa_pdist(x, squared)
    b = len(labels)
    adjacency = labels[:, None] == labels[None, :]
    out = np.zeros(b)
    for a in range(b):
        hard_neg = _masked_minimum(d[a], ~adjacency[a])
        positives = adjacency[a].copy()
        positives[a] = False
        hard_pos = _masked_maximum(d[a], positives)
        out[a] = np.log1p(np.exp(hard_pos - hard_neg)) if soft else max(hard_pos - hard_neg + margin, 0.0)
    return out


def central_difference(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def fallback_batch(rng):
    """Two tight clusters plus far-flung members: positive pairs whose positive is farther than
    every negative (the semi-hard fallback), and a singleton label (no positive)."""
    x = np.concatenate([
        rng.normal(size=(5, 3)) * 0.3,  # label 0
        rng.normal(size=(5, 3)) * 0.3 + 1.0,  # label 1
        rng.normal(size=(3, 3)) * 0.3 + [[8.0], [-0.5], [0.5]],  # labels 0 (far away), 1, 7
    ])
    labels = np.array([0] * 5 + [1] * 5 + [0, 1, 7])
    return x, labels


@pytest.mark.parametrize("squared", [False, True])
def test_semi_hard_is_tf_addons(np_rng, squared):
    x, labels = fallback_batch(np_rng)
    distance = "squared" if squared else "euclidean"
    s, c, g = jax_loss(el.triplet_loss, x, labels, margin=1.0, mining="semi_hard", distance=distance, mean=True)
    ref_f = functools.partial(tfa_triplet_semihard_loss, labels, squared=squared)
    np.testing.assert_allclose(s / c, ref_f(x), rtol=1e-12)
    np.testing.assert_allclose(g, central_difference(ref_f, x), rtol=1e-6, atol=1e-8)
    # The fallback branch is exercised: some positive pair has no negative farther than p.
    d = _tfa_pdist(x, squared)
    same = labels[:, None] == labels[None, :]
    assert any(
        not np.any(~same[a] & (d[a] > d[a, p])) for a, p in zip(*np.nonzero(same & ~np.eye(len(labels), dtype=bool)))
    )


@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_is_tf_addons_on_anchors_with_a_positive(np_rng, soft):
    x, labels = fallback_batch(np_rng)
    margin = 0.0 if soft else 1.0  # TF-Addons' soft margin has no margin term
    s, c, g = jax_loss(el.triplet_loss, x, labels, margin=margin, mining="hard", soft=soft)
    # TF-Addons also averages over anchors without a positive (hardest positive = the row's
    # minimum, the anchor's own 0); segjax leaves them out, so compare on the others.
    has_pos = np.bincount(labels)[labels] > 1
    assert not has_pos.all() and c == has_pos.sum()

    def ref_f(x):
        return np.sum(tfa_triplet_hard_loss_per_anchor(labels, x, margin=margin, soft=soft)[has_pos])

    np.testing.assert_allclose(s, ref_f(x), rtol=1e-12)
    np.testing.assert_allclose(g, central_difference(ref_f, x), rtol=1e-6, atol=1e-8)
    # Where every anchor has a positive, sum / count is TF-Addons' mean itself.
    keep = has_pos
    s2, c2, _ = jax_loss(el.triplet_loss, x[keep], labels[keep], margin=margin, mining="hard", soft=soft)
    np.testing.assert_allclose(
        s2 / c2, np.mean(tfa_triplet_hard_loss_per_anchor(labels[keep], x[keep], margin=margin, soft=soft)), rtol=1e-12
    )


@pytest.mark.parametrize("mining", el.MINING)
def test_no_negative_at_all_counts_nothing(np_rng, mining):
    """One label in the whole batch: no triplet exists. TF-Addons' semi-hard would instead add
    margin + d(a, p) per pair (its masked maximum over no negatives is the row's 0)."""
    x = np_rng.normal(size=(6, 3))
    labels = np.zeros(6, int)
    s, c, g = jax_loss(el.triplet_loss, x, labels, mining=mining)
    assert (s, c) == (0.0, 0.0) and not g.any()
    assert tfa_triplet_semihard_loss(labels, x) > 1.0  # the difference, stated


# ---------------------------------------------------------------------------------------------
# masks, data parallelism, degenerate inputs


def test_anchor_partition_sums_to_the_whole(np_rng):
    x, labels = batch(np_rng, b=16)
    parts = np.arange(16) % 4  # interleaved, so each part has anchors of every kind
    masks = jnp.asarray(np.stack([np.ones(16, bool)] + [parts == k for k in range(4)]))
    fns = [functools.partial(el.triplet_loss, mining=m, margin=0.8) for m in el.MINING]
    fns.append(functools.partial(el.contrastive_loss, neg_margin=2.0))
    for fn in fns:
        def one(mask, fn=fn):
            s, c = fn(jnp.asarray(x), labels, anchor_mask=mask)
            g = jax.grad(lambda v: fn(v, labels, anchor_mask=mask)[0])(jnp.asarray(x))
            return s, c, g

        s, c, g = jax.jit(jax.vmap(one))(masks)  # row 0: all anchors; rows 1-4: the parts
        assert np.all(c[1:] > 0)
        np.testing.assert_allclose(np.sum(s[1:]), s[0], rtol=1e-12)
        assert np.sum(c[1:]) == c[0]
        np.testing.assert_allclose(np.sum(g[1:], axis=0), g[0], rtol=1e-10, atol=1e-12)


def test_gathered_over_4_devices_equals_one_device(np_rng):
    """The data-parallel recipe: all_gather the batch, own anchors only, psum the pair."""
    devices = jax.devices()[:4]
    assert len(devices) == 4
    mesh = Mesh(np.array(devices), ("data",))
    x, labels = batch(np_rng, b=16)
    x, labels = jnp.asarray(x), jnp.asarray(labels)

    def sharded(x, labels, mining):
        def local(xs, ls):
            gx = jax.lax.all_gather(xs, "data", tiled=True)
            gl = jax.lax.all_gather(ls, "data", tiled=True)
            own = jnp.arange(gx.shape[0]) // xs.shape[0] == jax.lax.axis_index("data")
            s, c = el.triplet_loss(gx, gl, mining=mining, anchor_mask=own)
            return jax.lax.psum(s, "data"), jax.lax.psum(c, "data")

        s, c = jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=(P(), P()))(x, labels)
        return s / c

    for mining in ("semi_hard",):  # the other modes share the masks it checks
        v, g = jax.jit(jax.value_and_grad(sharded), static_argnums=2)(x, labels, mining)
        s, c, ref_g = jax_loss(el.triplet_loss, x, labels, mining=mining, mean=True)
        np.testing.assert_allclose(v, s / c, rtol=1e-12)
        np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mining", el.MINING)
def test_invalid_rows_are_as_if_absent(np_rng, mining):
    x, labels = batch(np_rng, b=12)
    valid = np.ones(12, bool)
    valid[[2, 7, 8]] = False
    x_pad = x.copy()
    x_pad[~valid] = 1e3  # would dominate every distance if it took part
    s, c, g = jax_loss(el.triplet_loss, x_pad, labels, mining=mining, valid=valid)
    ref = jax_loss(el.triplet_loss, x[valid], labels[valid], mining=mining)
    np.testing.assert_allclose([s, c], ref[:2], rtol=1e-12)
    np.testing.assert_allclose(g[valid], ref[2], rtol=1e-10, atol=1e-12)
    assert not g[~valid].any()


def test_duplicate_embeddings_have_finite_gradients():
    x = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [2.0, 0.0], [2.0, 0.0]])
    labels = np.array([0, 0, 1, 1, 0])
    for fn in [functools.partial(el.triplet_loss, mining=m) for m in el.MINING] + [el.contrastive_loss]:
        s, c, g = jax_loss(fn, x, labels)
        assert np.isfinite(s) and c > 0 and np.all(np.isfinite(g))


def test_reexported_from_losses():
    assert losses.triplet_loss is el.triplet_loss
    assert losses.contrastive_loss is el.contrastive_loss
    assert losses.discriminative_loss is el.discriminative_loss


def test_bad_arguments_raise():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="mining"):
        el.triplet_loss(x, jnp.zeros(4, int), mining="easy")
    with pytest.raises(ValueError, match="distance"):
        el.triplet_loss(x, jnp.zeros(4, int), distance="cosine")
    with pytest.raises(ValueError, match="labels"):
        el.triplet_loss(x, jnp.zeros(3, int))
    with pytest.raises(ValueError, match="anchor_mask"):
        el.triplet_loss(x, jnp.zeros(4, int), anchor_mask=jnp.ones(3, bool))


# ---------------------------------------------------------------------------------------------
# contrastive loss


@pytest.mark.parametrize("distance,normalize", [("euclidean", False), ("squared", True)])
def test_contrastive_all_pairs_is_pml(np_rng, distance, normalize):
    x, labels = batch(np_rng, scale=0.5)
    s, c, g = jax_loss(
        el.contrastive_loss, x, labels, pos_margin=0.2, neg_margin=1.1, power=1, distance=distance, normalize=normalize
    )
    pml = pml_losses.ContrastiveLoss(
        pos_margin=0.2, neg_margin=1.1, distance=pml_distance(distance, normalize), reducer=pml_reducers.SumReducer()
    )
    ref, ref_g = torch_loss(lambda t: pml(t, torch.tensor(labels)), x)
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-12)
    assert c == len(labels) * (len(labels) - 1)  # ordered pairs i != j


def test_pair_contrastive_is_hadsell_and_pml(np_rng):
    p = 10
    x1, x2 = np_rng.normal(size=(p, 3)) * 0.6, np_rng.normal(size=(p, 3)) * 0.6
    same = np_rng.random(p) < 0.5
    margin = 1.3

    def hadsell(x1, x2):  # L = (1 - Y) D^2 + Y max(0, m - D)^2, Y = 1 for a dissimilar pair
        dd = np.sqrt(np.sum((x1 - x2) ** 2, 1))
        return np.sum(np.where(same, dd**2, np.maximum(margin - dd, 0) ** 2))

    s, c, g = jax_loss(lambda a: el.pair_contrastive_loss(a, x2, same, neg_margin=margin), x1)
    np.testing.assert_allclose(s, hadsell(x1, x2), rtol=1e-12)
    np.testing.assert_allclose(g, central_difference(lambda a: hadsell(a, x2), x1), rtol=1e-6, atol=1e-8)
    assert c == p

    # power=1 against PML on the explicit pairs (rows i and p + i of the stacked batch).
    idx = np.arange(p)
    tuple_ = tuple(torch.tensor(v) for v in (idx[same], p + idx[same], idx[~same], p + idx[~same]))
    pml = pml_losses.ContrastiveLoss(pos_margin=0.1, neg_margin=margin, distance=pml_distance("euclidean", False),
                                     reducer=pml_reducers.SumReducer())
    ref, ref_g = torch_loss(lambda t: pml(torch.cat([t, torch.tensor(x2)]), indices_tuple=tuple_), x1)
    s, _, g = jax_loss(lambda a: el.pair_contrastive_loss(a, x2, same, pos_margin=0.1, neg_margin=margin, power=1), x1)
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# discriminative loss


def torch_discriminative(emb, ids, delta_v=0.5, delta_d=1.5, alpha=1.0, beta=1.0, gamma=0.001):
    """De Brabandere et al. 2017 per image, by loops over the instances present; (sum, count)."""
    total, images = emb.sum() * 0, 0
    for n in range(emb.shape[0]):
        e, i = emb[n].reshape(-1, emb.shape[-1]), torch.as_tensor(ids[n].reshape(-1))
        present = [k for k in torch.unique(i).tolist() if k >= 1 and k != 255]
        if not present:
            continue
        images += 1
        means = [e[i == k].mean(0) for k in present]
        var = sum(torch.clamp(torch.norm(mu - e[i == k], dim=1) - delta_v, min=0).pow(2).mean()
                  for k, mu in zip(present, means)) / len(present)
        dist = emb.sum() * 0
        for a in range(len(present)):
            for b in range(len(present)):
                if a != b:
                    dist = dist + torch.clamp(2 * delta_d - torch.norm(means[a] - means[b]), min=0).pow(2)
        if len(present) > 1:
            dist = dist / (len(present) * (len(present) - 1))
        reg = sum(torch.norm(mu) for mu in means) / len(present)
        total = total + alpha * var + beta * dist + gamma * reg
    return total, images


def test_discriminative_matches_torch_transcription(np_rng):
    n, h, w, d, m = 3, 6, 7, 4, 5
    emb = np_rng.normal(size=(n, h, w, d)) * 1.2
    ids = np_rng.integers(0, 4, size=(n, h, w))
    ids[0, :2] = 255  # ignored pixels
    ids[1] = np.where(ids[1] == 3, 5, ids[1])  # a sparse numbering (1, 2, 5): slot m is used
    ids[2] = 0  # an image with background only: not counted
    kw = dict(delta_v=0.3, delta_d=1.0, alpha=1.0, beta=0.7, gamma=0.01)
    s, c, g = jax_loss(lambda e: el.discriminative_loss(e, ids, max_instances=m, **kw), emb)
    ref, ref_g = torch_loss(lambda t: torch_discriminative(t, ids, **kw)[0], emb)
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-12)
    assert c == 2
    # valid_mask on pixels = marking them ignored.
    vm = np_rng.random((n, h, w)) < 0.8
    s2, _, g2 = jax_loss(lambda e: el.discriminative_loss(e, ids, max_instances=m, valid_mask=vm, **kw), emb)
    ref2, ref2_g = torch_loss(lambda t: torch_discriminative(t, np.where(vm, ids, 255), **kw)[0], emb)
    np.testing.assert_allclose(s2, ref2, rtol=1e-12)
    np.testing.assert_allclose(g2, ref2_g, rtol=1e-10, atol=1e-12)
    # valid_mask on whole images = leaving them out.
    first_out = np.array([False, True, True])
    s3, c3, _ = jax_loss(lambda e: el.discriminative_loss(e, ids, max_instances=m, valid_mask=first_out, **kw), emb)
    ref3 = float(torch_discriminative(torch.tensor(emb[1:]), ids[1:], **kw)[0])
    np.testing.assert_allclose([s3, c3], [ref3, 1], rtol=1e-12)


def _piecewise(means, h=4, w=6):
    """One image: instance k (1-based) fills column block k with its mean; background elsewhere."""
    d = len(means[0])
    emb = np.zeros((1, h, w, d))
    ids = np.zeros((1, h, w), int)
    for k, mu in enumerate(means):
        emb[0, :, 2 * k : 2 * k + 2] = mu
        ids[0, :, 2 * k : 2 * k + 2] = k + 1
    return emb, ids


@functools.partial(jax.jit, static_argnames="max_instances")
def _terms(emb, ids, delta_d=1.5, max_instances=4):
    """discriminative_loss_terms and the loss pair, in one compiled call (float64)."""
    kw = dict(max_instances=max_instances, delta_d=delta_d)
    return el.discriminative_loss_terms(emb, ids, **kw), el.discriminative_loss(emb, ids, **kw)


def test_discriminative_closed_forms():
    # Pixels at their instance means, means 2 * delta_d or more apart: only the regulariser.
    means = [np.array([3.0, 0.0]), np.array([0.0, 4.0]), np.array([-3.0, -1.0])]
    emb, ids = _piecewise(means)
    terms, (s, c) = _terms(emb, ids)
    np.testing.assert_allclose(terms["variance"], [0.0], atol=1e-15)
    np.testing.assert_allclose(terms["distance"], [0.0], atol=1e-15)
    np.testing.assert_allclose(terms["regularization"], [np.mean([np.linalg.norm(m) for m in means])], rtol=1e-14)
    np.testing.assert_allclose(s, 0.001 * np.mean([np.linalg.norm(m) for m in means]), rtol=1e-14)
    assert c == 1
    # Two instances with equal means: the distance term is (2 delta_d)^2 (each ordered pair
    # contributes (2 delta_d)^2, and the paper divides by C (C - 1) = 2); gradients stay finite.
    emb, ids = _piecewise([np.array([0.5, 0.5])] * 2)
    for delta_d in (1.5, 0.8):
        terms, _ = _terms(emb, ids, delta_d)
        np.testing.assert_allclose(terms["distance"], [(2 * delta_d) ** 2], rtol=1e-14)
        np.testing.assert_allclose(terms["variance"], [0.0], atol=1e-15)
    _, _, g = jax_loss(lambda e: el.discriminative_loss(e, ids, max_instances=3), emb)
    assert np.all(np.isfinite(g))
    # Pixels spread by r around their mean: variance term (r - delta_v)^2 when r > delta_v.
    emb, ids = _piecewise([np.array([0.0, 0.0]), np.array([10.0, 0.0])])
    emb[0, :, 0:2, 1] = np.where(np.arange(4)[:, None] % 2 == 0, 0.8, -0.8)  # +-0.8 about mean 0
    terms, _ = _terms(emb, ids)
    np.testing.assert_allclose(terms["variance"], [(0.8 - 0.5) ** 2 / 2], rtol=1e-14)


def test_discriminative_rejects_out_of_range_ids():
    emb = jnp.zeros((1, 2, 2, 3))
    with pytest.raises(ValueError, match="max_instances"):
        el.discriminative_loss(emb, np.array([[[0, 1], [2, 7]]]), max_instances=4)
    with pytest.raises(ValueError, match="max_instances"):
        el.discriminative_loss(emb, np.array([[[0, 1], [2, -1]]]), max_instances=4)
    el.check_instance_ids(np.array([[[0, 1], [255, 4]]]), max_instances=4)  # ignore is fine
