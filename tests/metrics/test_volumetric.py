"""segjax.metrics.volumetric against MONAI (test-only), a brute-force transcription and worked
examples."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage
from scipy.spatial.distance import cdist

from segjax.metrics import volumetric as vm

K = 3


def _blobs(rng, shape, k=K):
    """Label volume of smooth random blobs (argmax of k smoothed noise fields)."""
    fields = ndimage.gaussian_filter(rng.normal(size=(k, *shape)), (0, *(1.5,) * len(shape)))
    return np.argmax(fields, 0).astype(np.int32)


def _one_hot(labels, k=K):
    t = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), k)
    return t.permute(t.ndim - 1, *range(t.ndim - 1))[None].float()


def monai_hd(pred, truth, spacing, percentile, k=K):
    with warnings.catch_warnings():  # MONAI warns about empty classes
        warnings.simplefilter("ignore")
        return compute_hausdorff_distance(_one_hot(pred, k), _one_hot(truth, k),
                                          include_background=True, percentile=percentile,
                                          spacing=spacing).numpy()[0]


def monai_dice(pred, truth, ignore_empty, k=K):
    return compute_dice(torch.from_numpy(pred)[None, None], torch.from_numpy(truth)[None, None],
                        include_background=True, num_classes=k,
                        ignore_empty=ignore_empty).numpy()[0]


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(2028)
    return [(_blobs(rng, (13, 16, 9)), _blobs(rng, (13, 16, 9)), (2.5, 0.8, 1.2)),
            (_blobs(rng, (15, 11)), _blobs(rng, (15, 11)), (0.6, 1.7))]


@pytest.mark.parametrize("percentile", [95, None])
def test_hausdorff_matches_monai_on_random_blobs_with_anisotropic_spacing(cases, percentile):
    for pred, truth, spacing in cases:
        ours = vm.hausdorff_distance_per_class(pred, truth, K, spacing=spacing,
                                               percentile=percentile or 100)
        np.testing.assert_allclose(ours, monai_hd(pred, truth, spacing, percentile), rtol=1e-5)
        assert np.all(ours > 0)  # blobs that differ: a test of something


def test_dice_matches_monai(cases):
    for pred, truth, _ in cases:
        truth = np.where(truth == 2, 0, truth).astype(np.int32)  # class 2 absent from the truth
        for ignore_empty in (True, False):
            np.testing.assert_allclose(vm.dice_per_class(pred, truth, K, ignore_empty=ignore_empty),
                                       monai_dice(pred, truth, ignore_empty), rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_offset_cubes_worked_example(axis):
    spacing, k = (0.7, 1.5, 2.0), 2
    pred, truth = np.zeros((2, 14, 14, 14), bool)
    pred[2:8, 2:8, 2:8] = True
    truth[tuple(slice(2 + k, 8 + k) if a == axis else slice(2, 8) for a in range(3))] = True
    # The far face of each cube (36 of its 152 surface voxels, more than 5%) is k voxels from
    # the other cube's surface and nothing is farther: HD = HD95 = k * spacing[axis].
    for q in (95, 100):
        assert vm.hausdorff_distance(pred, truth, spacing=spacing, percentile=q) == \
            pytest.approx(k * spacing[axis])
    assert vm.dice_per_class(pred.astype(np.int32), truth.astype(np.int32), 2)[1] == \
        pytest.approx(2 * 4 * 36 / (2 * 216))


def test_empty_masks():
    empty, cube = np.zeros((6, 7, 5), np.int32), np.zeros((6, 7, 5), np.int32)
    cube[1:4, 2:5, 1:3] = 1
    assert math.isnan(vm.hausdorff_distance_per_class(empty, empty, 2)[1])  # nothing to measure
    assert vm.hausdorff_distance_per_class(empty, cube, 2)[1] == math.inf  # missed structure
    assert vm.hausdorff_distance_per_class(cube, empty, 2)[1] == math.inf  # hallucinated one
    # Dice's conventions are MONAI's, both ways.
    for pred, truth in ((empty, empty), (empty, cube), (cube, empty)):
        for ignore_empty in (True, False):
            np.testing.assert_allclose(vm.dice_per_class(pred, truth, 2,
                                                         ignore_empty=ignore_empty),
                                       monai_dice(pred, truth, ignore_empty, 2), rtol=1e-6)


def brute_force_hd(pred, truth, spacing, q):
    """Surface voxels by looking at the 2·d face neighbours (outside counts as background), and
    every pairwise distance."""
    def surface(mask):
        padded = np.pad(mask, 1)
        inner = padded[(slice(1, -1),) * mask.ndim]
        interior = np.ones_like(mask)
        for axis in range(mask.ndim):
            for shift in (-1, 1):
                interior &= np.roll(padded, shift, axis)[(slice(1, -1),) * mask.ndim]
        return np.argwhere(inner & ~interior) * np.asarray(spacing)

    a, b = surface(pred), surface(truth)
    if len(a) == 0 and len(b) == 0:
        return math.nan
    if len(a) == 0 or len(b) == 0:
        return math.inf
    d = cdist(a, b)
    return max(np.percentile(d.min(1), q), np.percentile(d.min(0), q))


masks = hnp.arrays(bool, st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 5)))


@given(masks, st.data(), st.lists(st.floats(0.1, 5.0), min_size=3, max_size=3),
       st.sampled_from([0, 50, 95, 100]))
def test_hausdorff_matches_brute_force(pred, data, spacing, q):
    truth = data.draw(hnp.arrays(bool, pred.shape))
    ours = vm.hausdorff_distance(pred, truth, spacing=spacing, percentile=q)
    ref = brute_force_hd(pred, truth, spacing, q)
    assert ours == pytest.approx(ref, rel=1e-9, nan_ok=True)
    assert ours == pytest.approx(vm.hausdorff_distance(truth, pred, spacing=spacing,
                                                       percentile=q), nan_ok=True)


numbers = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf]))


@given(st.one_of(numbers, st.lists(numbers, min_size=1, max_size=4)))
def test_bad_spacing_is_refused_by_name(spacing):
    pred = np.zeros((4, 4, 4), np.int32)
    pred[1:3, 1:3, 1:3] = 1
    values = [spacing] if isinstance(spacing, float) else spacing
    ok = ((isinstance(spacing, float) or len(spacing) == 3)
          and all(math.isfinite(v) and v > 0 for v in values))
    if ok:
        assert np.isfinite(vm.hausdorff_distance_per_class(pred, pred[::-1], 2,
                                                           spacing=spacing)).all()
    else:
        with pytest.raises(ValueError, match="spacing"):
            vm.hausdorff_distance_per_class(pred, pred[::-1], 2, spacing=spacing)


@pytest.mark.parametrize("pred, truth, k, match", [
    (np.zeros((3, 3), np.float32), np.zeros((3, 3), np.int32), 2, "integer"),
    (np.full((3, 3), 2), np.zeros((3, 3), np.int64), 2, "outside"),
    (np.zeros((3, 3), np.int32), np.full((3, 3), -1), 2, "outside"),
    (np.zeros((3, 4), np.int32), np.zeros((3, 3), np.int32), 2, "shape"),
    (np.zeros((3, 3), np.int32), np.zeros((3, 3), np.int32), 0, "num_classes"),
])
def test_bad_labels_are_refused_by_name(pred, truth, k, match):
    for fn in (vm.dice_per_class, vm.hausdorff_distance_per_class):
        with pytest.raises(ValueError, match=match):
            fn(pred, truth, k)
    with pytest.raises(ValueError, match="percentile"):
        vm.hausdorff_distance(pred, pred, percentile=101)


def test_accumulator_means_per_class_over_defined_cases():
    cube = np.zeros((8, 8, 8), np.int32)
    cube[2:6, 2:6, 2:6] = 1
    shifted = np.roll(cube, 1, axis=0)
    two = cube.copy()
    two[0, 0, :2] = 2  # class 2 only in this case
    acc = vm.VolumetricAccumulator(3)
    first = acc.update(cube, shifted, spacing=(2.0, 1.0, 1.0))  # HD 2 mm, Dice 2*48/128
    acc.update(two, two)  # perfect: Dice 1, HD 0 for classes 1 and 2
    acc.update(np.zeros_like(cube), cube)  # missed: Dice 0, HD inf
    assert first["dice"][1] == pytest.approx(0.75) and first["hd95"][1] == pytest.approx(2.0)
    assert math.isnan(first["dice"][2]) and math.isnan(first["hd95"][2])
    result = acc.result()
    assert result["num_cases"] == 3
    assert result["dice_per_class"][1:] == pytest.approx([(0.75 + 1 + 0) / 3, 1.0])
    assert result["mean_dice"] == pytest.approx(((0.75 + 1) / 3 + 1) / 2)
    assert result["hd95_per_class"][1] == math.inf and result["mean_hd95"] == math.inf

    capped = vm.VolumetricAccumulator(3, empty_distance=20.0, include_background=True)
    capped.update(cube, shifted, spacing=(2.0, 1.0, 1.0))
    capped.update(np.zeros_like(cube), cube)
    hd = capped.result()["hd95_per_class"]
    assert hd[1] == pytest.approx((2.0 + 20.0) / 2) and math.isnan(hd[2])
    assert capped.result()["mean_hd95"] == pytest.approx((hd[0] + hd[1]) / 2)
    assert math.isnan(vm.VolumetricAccumulator(2).result()["mean_dice"])  # no case yet
    with pytest.raises(ValueError, match="empty_distance"):
        vm.VolumetricAccumulator(2, empty_distance=math.inf)
