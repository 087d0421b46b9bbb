"""Few-shot episodes (`segjax.data.episodes`): class presence, the episode sampler's guarantees
(way classes, supports and queries showing their class, no image twice, determinism per seed,
clear failures) and the episode masks."""

import numpy as np
import pytest

from segjax.data import episodes

IGNORE = 255


def test_episode_sampler_guarantees_and_determinism(np_rng):
    labels = np_rng.integers(0, 6, (40, 8, 8))
    labels[labels == 5] = 0
    labels[:3, 0, 0] = 5  # class 5 in three images only
    presence = episodes.class_presence(labels, 6, ignore_label=IGNORE)
    np.testing.assert_array_equal(presence, [[np.any(lab == c) for c in range(6)] for lab in labels])
    sampler = episodes.EpisodeSampler(presence, (1, 2, 3), ways=2, shots=3, queries=4, seed=7)
    for i in range(50):
        classes, support, query = sampler.episode(i)
        assert len(set(classes)) == 2 and set(classes) <= {1, 2, 3}
        for n, c in enumerate(classes):
            assert all(presence[j, c] for j in support[n])
        for q, j in enumerate(query):
            assert presence[j, classes[q % 2]]
        used = list(support.ravel()) + list(query)
        assert len(set(used)) == len(used)
    a, b = sampler.episode(3), sampler.episode(3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other = episodes.EpisodeSampler(presence, (1, 2, 3), ways=2, shots=3, queries=4, seed=8)
    assert any(not np.array_equal(x, y) for x, y in zip(a, other.episode(3)))
    with pytest.raises(ValueError, match=r"classes \{5: 3\}"):
        episodes.EpisodeSampler(presence, (1, 5), ways=1, shots=3, queries=1)
    with pytest.raises(ValueError, match="at least 3 classes"):
        episodes.EpisodeSampler(presence, (1, 2), ways=3)
    target, valid = episodes.episode_masks(np.array([[1, 2, 3], [IGNORE, 2, 0]]), [2, 3], IGNORE)
    np.testing.assert_array_equal(target, [[0, 1, 2], [0, 1, 0]])
    np.testing.assert_array_equal(valid, [[1, 1, 1], [0, 1, 1]])
