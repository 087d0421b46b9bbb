"""Patch sampling with nnU-Net's foreground oversampling.

Reference: nnU-Net v2's `nnUNetDataLoaderBase.get_bbox` and `_oversample_last_XX_percent`
transcribed below (np.random.randint(a, b) -> rng.integers(a, b), np.random.choice(n) ->
rng.integers(n), the case drawn first as np.random.choice(keys)), with the crop done by np.pad;
the sampler must equal it exactly for the same generator. Then the statistics: forced slots hold
foreground, the chosen class is uniform among the classes present and the voxel uniform within
it, free slots are uniform over every start."""
import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from segjax.data import patches

IGNORE = 255


def nnunet_get_bbox(rng, data_shape, patch_size, force_fg, class_locations):
    """nnunetv2 get_bbox with need_to_pad = 0 (patch_size == final_patch_size), no ignore
    label, class_locations `{class: [n, 3]}`."""
    need_to_pad = np.zeros(3, int)
    for d in range(3):
        if need_to_pad[d] + data_shape[d] < patch_size[d]:
            need_to_pad[d] = patch_size[d] - data_shape[d]
    lbs = [- need_to_pad[i] // 2 for i in range(3)]
    ubs = [data_shape[i] + need_to_pad[i] // 2 + need_to_pad[i] % 2 - patch_size[i]
           for i in range(3)]
    if not force_fg:
        return [rng.integers(lbs[i], ubs[i] + 1) for i in range(3)]
    eligible = [c for c in class_locations.keys() if len(class_locations[c]) > 0]
    selected = eligible[rng.integers(len(eligible))] if eligible else None
    if selected is None:
        return [rng.integers(lbs[i], ubs[i] + 1) for i in range(3)]
    voxels = class_locations[selected]
    voxel = voxels[rng.integers(len(voxels))]
    return [max(lbs[i], voxel[i] - patch_size[i] // 2) for i in range(3)]


def reference_batch(images, labels, patch_size, batch_size, seed, step, fraction):
    """The batch nnU-Net's rules give for slot generators default_rng([seed, step, b])."""
    out = {"image": [], "label": [], "case": [], "start": [], "forced": []}
    for b in range(batch_size):
        rng = np.random.default_rng([seed, step, b])
        case = rng.integers(len(images))
        label = labels[case]
        force = not b < round(batch_size * (1 - fraction))  # _oversample_last_XX_percent
        locations = {c: np.argwhere(label == c) for c in range(1, int(label.max()) + 1)}
        start = nnunet_get_bbox(rng, label.shape, patch_size, force, locations)
        margin = max(patch_size)
        padded_label = np.pad(label, margin, constant_values=IGNORE)
        padded_image = np.pad(images[case], [(margin, margin)] * 3 + [(0, 0)])
        window = tuple(slice(s + margin, s + margin + p) for s, p in zip(start, patch_size))
        out["image"].append(padded_image[window])
        out["label"].append(padded_label[window])
        out["case"].append(case)
        out["start"].append(start)
        out["forced"].append(force)
    return {k: np.array(v) for k, v in out.items()}


def _cases(rng, shapes, num_classes=3, density=0.05):
    images = [rng.normal(size=s + (2,)).astype(np.float32) for s in shapes]
    labels = []
    for s in shapes:
        label = np.where(rng.uniform(size=s) < density, rng.integers(1, num_classes, size=s), 0)
        labels.append(label.astype(np.uint8))
    return images, labels


@given(seed=st.integers(0, 2**20), step=st.integers(0, 10**6), batch_size=st.integers(1, 7),
       fraction=st.sampled_from([0.0, 1 / 3, 0.5, 1.0]),
       shapes=st.lists(st.tuples(*[st.integers(1, 7)] * 3), min_size=1, max_size=3),
       patch=st.tuples(*[st.integers(1, 6)] * 3), density=st.sampled_from([0.0, 0.02, 0.3]))
def test_equals_the_nnunet_transcription(seed, step, batch_size, fraction, shapes, patch,
                                         density):
    """Any case sizes (smaller or larger than the patch), any fraction, cases with and without
    foreground: the same batch, voxel for voxel."""
    images, labels = _cases(np.random.default_rng(seed), shapes, density=density)
    got = patches.sample_patches(images, labels, patch_size=patch, batch_size=batch_size,
                                 seed=seed, step=step, oversample_foreground=fraction)
    want = reference_batch(images, labels, patch, batch_size, seed, step, fraction)
    for key in ("case", "start", "forced", "label", "image"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert got["image"].dtype == np.float32 and got["label"].dtype == np.int32
    for b in np.flatnonzero(got["forced"]):  # a forced slot holds foreground when its case has
        has = ((labels[got["case"][b]] > 0)).any()
        assert has == ((got["label"][b] > 0) & (got["label"][b] != IGNORE)).any()


def test_forced_fraction_is_nnunets_last_third():
    assert [int(patches.forced_foreground(b).sum()) for b in range(1, 9)] == [
        0, 1, 1, 1, 2, 2, 2, 3]  # B - round(2B/3), e.g. nnU-Net's batch 2: the second slot
    assert patches.forced_foreground(4).tolist() == [False, False, False, True]
    assert patches.forced_foreground(4, 1.0).all() and not patches.forced_foreground(4, 0).any()


@pytest.fixture(scope="module")
def sparse_case():
    """A 12^3 case: class 1 a 3x3x3 block, class 2 a single voxel, both well inside."""
    label = np.zeros((12, 12, 12), np.uint8)
    label[3:6, 4:7, 5:8] = 1
    label[8, 7, 6] = 2
    return np.zeros((12, 12, 12, 1), np.float32), label


def test_forced_slots_pick_a_class_then_a_voxel_uniformly(sparse_case):
    """Forced patches centre on the chosen voxel (start + patch // 2, no clamping here): class 2's
    single voxel half of the time (binomial test), class 1's 27 voxels uniformly (chi-square)."""
    image, label = sparse_case
    patch, steps = (4, 4, 4), 1200
    centres = []
    for step in range(steps):
        batch = patches.sample_patches([image], [label], patch_size=patch, batch_size=1,
                                       seed=7, step=step, oversample_foreground=1.0)
        centres.append(batch["start"][0] + 2)
        assert (batch["label"][0] > 0).any()
    chosen = label[tuple(np.array(centres).T)]
    assert (chosen > 0).all()
    assert scipy.stats.binomtest(int((chosen == 2).sum()), steps, 0.5).pvalue > 1e-3
    class1 = [np.ravel_multi_index(c, label.shape) for c, k in zip(centres, chosen) if k == 1]
    counts = np.unique(class1, return_counts=True)[1]
    assert len(counts) == 27 and scipy.stats.chisquare(counts).pvalue > 1e-3


def test_free_slots_are_uniform_over_every_start(sparse_case):
    """Unforced patches: every start in [0, shape - patch] per axis equally often (chi-square
    over the 5 x 6 x 7 starts) and see class 2 as often as that predicts; forced ones always see
    foreground."""
    image, label = sparse_case
    patch = (8, 7, 6)
    starts, sees_2 = [], []
    for step in range(300):
        batch = patches.sample_patches([image], [label], patch_size=patch, batch_size=6, seed=3,
                                       step=step)
        free = ~batch["forced"]
        assert free.sum() == 4 and (batch["label"][~free] > 0).any(axis=(1, 2, 3)).all()
        starts += [np.ravel_multi_index(s, (5, 6, 7)) for s in batch["start"][free]]
        sees_2 += (batch["label"][free] == 2).any(axis=(1, 2, 3)).tolist()
    counts = np.bincount(starts, minlength=210)
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    # Class 2's voxel (8, 7, 6) is inside a uniform patch iff every start is >= 1: 4 * 5 * 6 of
    # the 210 starts.
    assert scipy.stats.binomtest(int(np.sum(sees_2)), len(sees_2), 120 / 210).pvalue > 1e-3


def test_small_case_is_padded_around_it():
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4, 1) + 1
    label = np.ones((2, 3, 4), np.uint8)
    batch = patches.sample_patches([image], [label], patch_size=(5, 5, 5), batch_size=4, seed=0,
                                   step=0, image_pad_value=-9.0)
    for b in range(4):
        start = batch["start"][b]
        lower, upper = patches.start_bounds((2, 3, 4), (5, 5, 5))
        assert (lower <= start).all() and (start <= upper).all()
        inside = np.zeros((5, 5, 5), bool)
        inside[-start[0]:-start[0] + 2, -start[1]:-start[1] + 3, -start[2]:-start[2] + 4] = True
        np.testing.assert_array_equal(batch["label"][b], np.where(inside, 1, IGNORE))
        assert (batch["image"][b][~inside] == -9.0).all()
        np.testing.assert_array_equal(np.sort(batch["image"][b][inside].ravel()),
                                      np.arange(1, 25))
    # nnU-Net's ranges for patch 5 (by hand): shape 2 (need 3) -2..-1 (floor division), shape 3
    # (need 2) -1..-1, shape 4 (need 1) -1..0.
    np.testing.assert_array_equal(patches.start_bounds((2, 3, 4), (5, 5, 5))[0], [-2, -1, -1])
    np.testing.assert_array_equal(patches.start_bounds((2, 3, 4), (5, 5, 5))[1], [-1, -1, 0])


def test_deterministic_per_slot(sparse_case):
    image, label = sparse_case
    kwargs = dict(patch_size=(4, 5, 6), seed=11, step=5, oversample_foreground=0.0)
    a = patches.sample_patches([image, image], [label, label], batch_size=3, **kwargs)
    b = patches.sample_patches([image, image], [label, label], batch_size=3, **kwargs)
    c = patches.sample_patches([image, image], [label, label], batch_size=5, **kwargs)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(c[key][:3], a[key])  # a slot ignores the batch size
    d = patches.sample_patches([image, image], [label, label], batch_size=3,
                               **{**kwargs, "step": 6})
    assert not np.array_equal(d["start"], a["start"])


def test_bad_arguments_name_themselves(sparse_case):
    image, label = sparse_case
    call = dict(batch_size=2, seed=0, step=0)
    with pytest.raises(ValueError, match="patch_size"):
        patches.sample_patches([image], [label], patch_size=(4, 4), **call)
    with pytest.raises(ValueError, match="oversample_foreground"):
        patches.sample_patches([image], [label], patch_size=4, oversample_foreground=1.5, **call)
    with pytest.raises(ValueError, match="case 0"):
        patches.sample_patches([image], [label[:-1]], patch_size=4, **call)
    with pytest.raises(ValueError, match="images and labels"):
        patches.sample_patches([], [], patch_size=4, **call)
    with pytest.raises(ValueError, match="batch_size"):
        patches.sample_patches([image], [label], patch_size=4, batch_size=0, seed=0, step=0)
    with pytest.raises(ValueError, match="label must be an integer"):
        patches.class_locations(label.astype(np.float32))
