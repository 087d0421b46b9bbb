"""ClassMix as DACS uses it, against a NumPy transcription of DACS's `generate_class_mask` and
`strongTransform`'s mix (vikolss/DACS utils/transformmasks.py, utils/transformsgpu.py) given the
same chosen classes, plus properties hunted by Hypothesis (the mask is exactly the union of the
chosen classes; ceil(n / 2) of the n present values, DACS's `int((n + n % 2) / 2)`; the ignore
label in or out of the draw; malformed values never chosen), uniformity, jit and vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segjax.style import class_mask, classmix, classmix_batch, select_classes

K, IGNORE, H, W = 6, 255, 7, 9


def dacs_class_mask(pred, classes):
    """transformmasks.generate_class_mask: pred.eq(classes).sum(0) over the chosen class values."""
    return (pred[None] == np.asarray(classes).reshape(-1, 1, 1)).sum(0)


def dacs_mix(mask, source, target):
    """transformsgpu.mix: mask * data[0] + (1 - mask) * data[1], data[0] the source."""
    mask = mask.reshape(mask.shape + (1,) * (source.ndim - mask.ndim))
    return mask * source + (1 - mask) * target


def chosen_values(chosen):
    chosen = np.asarray(chosen)
    return [c for c in range(K) if chosen[c]] + ([IGNORE] if chosen[K] else [])


@functools.partial(jax.jit, static_argnames="ignore_is_class")
def select(key, label, ignore_is_class=True):
    return select_classes(key, label, K, ignore_label=IGNORE, ignore_is_class=ignore_is_class)


def random_label(rng, n_values):
    values = rng.choice(list(range(K)) + [IGNORE], size=n_values, replace=False)
    return rng.choice(values, size=(H, W)).astype(np.int32)


def test_classmix_matches_dacs_given_the_same_classes(np_rng):
    s_img = np_rng.normal(size=(H, W, 3)).astype(np.float32)
    t_img = np_rng.normal(size=(H, W, 3)).astype(np.float32)
    s_lbl = random_label(np_rng, 5)
    t_lbl = np_rng.integers(0, K, (H, W)).astype(np.int32)
    key = jax.random.key(3)
    img, lbl, mask = jax.jit(functools.partial(classmix, num_classes=K))(key, s_img, s_lbl, t_img, t_lbl)
    dacs = dacs_class_mask(s_lbl, chosen_values(select(key, s_lbl)))
    np.testing.assert_array_equal(mask, dacs.astype(bool))
    np.testing.assert_array_equal(img, dacs_mix(dacs.astype(np.float32), s_img, t_img))
    np.testing.assert_array_equal(lbl, dacs_mix(dacs, s_lbl, t_lbl))
    assert 0 < mask.sum() < mask.size


@given(seed=st.integers(0, 2**32 - 1), n_values=st.integers(1, K + 1), ignore_is_class=st.booleans(),
       outsider=st.sampled_from([None, -1, K, 254, 2**20]))
def test_half_of_the_present_values_and_the_mask_is_their_union(seed, n_values, ignore_is_class, outsider):
    """`outsider`: a malformed value (not a class, not the ignore label) is never chosen."""
    rng = np.random.default_rng(seed)
    label = random_label(rng, n_values)
    if outsider is not None:
        label[rng.integers(H), :] = outsider
    chosen = np.asarray(select(jax.random.key(seed), label, ignore_is_class))
    present = set(np.unique(label).tolist()) - {outsider} - (set() if ignore_is_class else {IGNORE})
    picked = set(chosen_values(chosen))
    assert picked <= present
    assert len(picked) == int((len(present) + len(present) % 2) / 2)  # DACS's count
    mask = np.asarray(class_mask(jnp.asarray(label), jnp.asarray(chosen), ignore_label=IGNORE))
    np.testing.assert_array_equal(mask, np.isin(label, list(picked)))


def test_choice_is_uniform_over_the_present_classes():
    label = np.array([[0, 1, 2, 4]] * 3, np.int32)  # 4 classes present, 2 chosen each time
    keys = jax.random.split(jax.random.key(0), 400)
    chosen = np.asarray(jax.vmap(lambda k: select(k, label))(keys))
    assert (chosen.sum(1) == 2).all()
    freq = chosen.mean(0)
    assert np.all(np.abs(freq[[0, 1, 2, 4]] - 0.5) < 0.1) and not chosen[:, [3, 5, 6]].any()


def test_ignore_label_as_dacs_or_left_out():
    label = np.full((H, W), IGNORE, np.int32)
    label[:2] = 1  # values present: {1, 255}; DACS draws one of the two
    out = [np.asarray(select(jax.random.key(s), label)) for s in range(20)]
    assert {tuple(chosen_values(c)) for c in out} == {(1,), (IGNORE,)}
    out = [np.asarray(select(jax.random.key(s), label, ignore_is_class=False)) for s in range(5)]
    assert all(chosen_values(c) == [1] for c in out)


def test_batch_folds_the_example_index_into_the_key(np_rng):
    n = 3
    s_img, t_img = (np_rng.normal(size=(n, H, W, 2)).astype(np.float32) for _ in range(2))
    s_lbl = np.stack([random_label(np_rng, 4) for _ in range(n)])
    t_lbl = np_rng.integers(0, K, (n, H, W)).astype(np.int32)
    key = jax.random.key(7)
    batch = jax.jit(functools.partial(classmix_batch, num_classes=K))(key, s_img, s_lbl, t_img, t_lbl)
    one_example = jax.jit(functools.partial(classmix, num_classes=K))
    for i in range(n):
        one = one_example(jax.random.fold_in(key, i), s_img[i], s_lbl[i], t_img[i], t_lbl[i])
        for b, o in zip(batch, one):
            np.testing.assert_array_equal(b[i], o)


def test_bad_shapes_raise_by_name():
    with pytest.raises(ValueError, match="label must have rank 2"):
        select_classes(jax.random.key(0), jnp.zeros((1, H, W), jnp.int32), K)
    with pytest.raises(ValueError, match="labels must match them"):
        classmix(jax.random.key(0), jnp.zeros((H, W, 3)), jnp.zeros((H, W + 1), jnp.int32),
                 jnp.zeros((H, W, 3)), jnp.zeros((H, W + 1), jnp.int32), num_classes=K)
