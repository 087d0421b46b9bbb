"""segjax.cluster on constructed embeddings whose instances are known, and mean shift against
scikit-learn's MeanShift (when it is installed; it is not a segjax dependency)."""

import numpy as np
import pytest

from segjax import cluster

H, W, D = 20, 24, 3


def same_partition(a, b):
    """True if the id maps a and b are equal up to a relabelling of the non-zero ids."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def scene(rng, num=5, delta_v=0.5, delta_d=1.5, spread=None):
    """Random rectangles (later ones on top) with instance ids 1..num; every instance's pixels
    within `spread` (default delta_v) of its centre, the centres 2 delta_d or more apart: where
    the discriminative loss is 0. Background pixels get arbitrary embeddings."""
    truth = np.zeros((H, W), np.int32)
    for k in range(1, num + 1):
        y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
        truth[y : y + rng.integers(3, 8), x : x + rng.integers(3, 8)] = k
    present = [k for k in range(1, num + 1) if (truth == k).any()]
    centres = []
    while len(centres) < len(present):
        c = rng.uniform(-4, 4, size=D)
        if all(np.linalg.norm(c - o) >= 2 * delta_d for o in centres):
            centres.append(c)
    emb = rng.normal(size=(H, W, D)) * 3  # background: anything
    spread = delta_v if spread is None else spread
    for k, c in zip(present, centres):
        m = truth == k
        direction = rng.normal(size=(m.sum(), D))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        emb[m] = c + direction * rng.uniform(0, spread, size=(m.sum(), 1))
    return emb, truth


@pytest.mark.parametrize("method", cluster.METHODS)
def test_exact_recovery_of_separated_instances(np_rng, method):
    for _ in range(5):
        emb, truth = scene(np_rng)
        ids = cluster.threshold_cluster(emb, truth > 0) if method == "threshold" else \
            cluster.mean_shift_cluster(emb, truth > 0)
        assert ids.dtype == np.int32
        assert same_partition(ids, truth)
        # Numbered 1..K in raster order of each instance's first pixel.
        flat = ids.ravel()
        firsts = flat[np.sort(np.unique(flat, return_index=True)[1])]
        np.testing.assert_array_equal(firsts[firsts > 0], np.arange(1, ids.max() + 1))


def test_threshold_from_the_seed_alone_needs_the_documented_radius(np_rng):
    """Without centre shifts, radius in [2 delta_v, 2 delta_d - 2 delta_v) still separates."""
    emb, truth = scene(np_rng)
    for radius in (1.0, 1.5, 1.99):
        assert same_partition(cluster.threshold_cluster(emb, truth > 0, radius=radius, shift_steps=0), truth)
    # Far too small a radius splits instances.
    assert cluster.threshold_cluster(emb, truth > 0, radius=0.05).max() > truth.max()


def test_deterministic_and_min_pixels(np_rng):
    emb, truth = scene(np_rng)
    a = cluster.threshold_cluster(emb, truth > 0)
    np.testing.assert_array_equal(a, cluster.threshold_cluster(emb.copy(), (truth > 0).copy()))
    # A 2-pixel outlier group far from everything becomes its own instance, or 0 with min_pixels.
    fg = truth > 0
    spot = np.argwhere(~fg)[:2]
    emb[spot[:, 0], spot[:, 1]] = 50.0
    fg[spot[:, 0], spot[:, 1]] = True
    with_spot = cluster.threshold_cluster(emb, fg)
    assert with_spot.max() == a.max() + 1
    dropped = cluster.threshold_cluster(emb, fg, min_pixels=3)
    assert same_partition(dropped, truth) and np.all(dropped[spot[:, 0], spot[:, 1]] == 0)
    # Nothing in the foreground: all zeros.
    assert not cluster.threshold_cluster(emb, np.zeros((H, W), bool)).any()
    assert not cluster.mean_shift_cluster(emb, np.zeros((H, W), bool)).any()


def test_cluster_instances_per_semantic_class(np_rng):
    """Two classes whose instances share embeddings are still told apart by class."""
    emb, truth = scene(np_rng, num=4)
    semantic = np.where(truth > 0, 1 + (truth % 2), 0)  # odd ids class 2, even ids class 1
    # Make an even and an odd instance collide in embedding space.
    odd, even = [k for k in np.unique(truth) if k % 2][0], [k for k in np.unique(truth) if k and k % 2 == 0][0]
    emb[truth == odd] = emb[truth == even].mean(axis=0)
    for method in cluster.METHODS:
        ids, classes = cluster.cluster_instances(emb, semantic, method=method)
        assert same_partition(ids, truth)
        for k in range(1, ids.max() + 1):
            assert np.all(semantic[ids == k] == classes[k - 1])
        # Background and ignored classes get no instance.
        ids2, classes2 = cluster.cluster_instances(emb, semantic, ignore_label=2)
        assert not ids2[semantic == 2].any() and set(classes2.tolist()) == {1}


def test_mean_shift_matches_scikit_learn(np_rng):
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    emb, truth = scene(np_rng, num=6, spread=0.7)  # clusters less tight than the loss demands
    overlapping = np.concatenate([np_rng.normal(size=(120, 2)) * 0.8 + c for c in ([0, 0], [2.5, 0], [0, 2.5])])
    for points, bandwidth in ((emb[truth > 0], 1.0), (emb[truth > 0], 1.5), (overlapping, 0.8), (overlapping, 1.2)):
        ours = cluster.mean_shift_modes(points, bandwidth)
        ref = sklearn_cluster.MeanShift(bandwidth=bandwidth, bin_seeding=True).fit(points)
        assert len(ours) == len(ref.cluster_centers_)
        np.testing.assert_allclose(
            ours[np.lexsort(ours.T)], ref.cluster_centers_[np.lexsort(ref.cluster_centers_.T)], atol=1e-9
        )
        # The points as a [P, 1] "image", all foreground.
        ids = cluster.mean_shift_cluster(points[:, None, :], np.ones((len(points), 1), bool), bandwidth=bandwidth)[:, 0]
        assert same_partition(ids, ref.labels_ + 1)


def test_mean_shift_seeds_from_points_when_no_bin_centre_has_a_point_near():
    """In 8 dimensions the centre of the bin holding two nearby points is sqrt(8) x 0.4 = 1.13
    bandwidths from them: no bin seed finds a point (scikit-learn raises), the points seed."""
    points = np.array([[0.6] * 8, [0.55] * 8])
    modes = cluster.mean_shift_modes(points, 1.0)
    np.testing.assert_allclose(modes, [points.mean(axis=0)])
    emb = np.zeros((2, 2, 8))
    emb[0, 0], emb[0, 1] = points
    ids = cluster.mean_shift_cluster(emb, np.array([[True, True], [False, False]]), bandwidth=1.0)
    np.testing.assert_array_equal(ids, [[1, 1], [0, 0]])
