"""segjax.data.degrade: each primitive against an independent reference (scipy.ndimage,
skimage.morphology, segjax.ops, NumPy by hand), determinism, and the calibrated generator's
Dice histogram passing a chi-squared test of uniformity on synthetic-shapes masks."""

import numpy as np
import pytest
from scipy import ndimage, stats
from skimage import morphology

from segjax import ops
from segjax.data import degrade
from segjax.data.builders import synthetic_shapes

CLEAN = [c for c in synthetic_shapes.BUILDER_CONFIGS if c.name == "clean"][0]


def shape_masks(split, indices):
    """One bool mask per example: its first present foreground class."""
    out = []
    for i in indices:
        label = synthetic_shapes.generate(CLEAN, split, i)["label"][..., 0]
        out.append(label == [c for c in np.unique(label) if c > 0][0])
    return out


@pytest.fixture(scope="module")
def masks():
    return shape_masks("train", range(80))


def blob(rng, h=40, w=36):
    """A random bool mask with a few blobs touching the border."""
    return ndimage.gaussian_filter(rng.standard_normal((h, w)), 2.5) > 0.15


@pytest.mark.parametrize("radius", [1, 3, 7, 20])
def test_morph_equals_skimage_and_segjax_ops(np_rng, radius):
    m = blob(np_rng)
    fp = morphology.disk(radius).astype(bool)
    np.testing.assert_array_equal(degrade.morph(m, radius), morphology.dilation(m, fp))
    np.testing.assert_array_equal(degrade.morph(m, -radius), morphology.erosion(m, fp))
    np.testing.assert_array_equal(degrade.morph(m, radius),
                                  np.asarray(ops.dilation(m[None], ops.disk(radius)))[0])
    np.testing.assert_array_equal(degrade.morph(m, -radius),
                                  np.asarray(ops.erosion(m[None], ops.disk(radius)))[0])


def test_morph_edge_cases():
    empty, full = np.zeros((9, 9), bool), np.ones((9, 9), bool)
    np.testing.assert_array_equal(degrade.morph(empty, 3), empty)
    np.testing.assert_array_equal(degrade.morph(full, -3), full)
    dot = empty.copy()
    dot[4, 4] = True
    np.testing.assert_array_equal(degrade.morph(dot, 2)[2:7, 2:7], morphology.disk(2) > 0)


@pytest.mark.parametrize("dy,dx", [(3, -5), (-7, 2), (0, 0), (50, 1)])
def test_offset_equals_scipy_shift(np_rng, dy, dx):
    m = blob(np_rng)
    want = ndimage.shift(m.astype(np.uint8), (dy, dx), order=0, cval=0) > 0
    np.testing.assert_array_equal(degrade.offset(m, dy, dx), want)


def test_rotate_equals_scipy_and_rot90(masks):
    m = masks[0]
    centre = ((m.shape[0] - 1) / 2, (m.shape[1] - 1) / 2)
    np.testing.assert_array_equal(degrade.rotate(m, 90, centre), np.rot90(m))
    for angle in (17.0, -63.0, 150.0):
        want = ndimage.rotate(m.astype(np.uint8), angle, reshape=False, order=0) > 0
        got = degrade.rotate(m, angle, centre)
        assert np.mean(got != want) < 1e-3  # rounding ties only
    # About its centroid the object stays in place: the centroid moves by < 1 pixel.
    cy, cx = degrade.centroid(m)
    ry, rx = degrade.centroid(degrade.rotate(m, 45))
    assert abs(cy - ry) < 1 and abs(cx - rx) < 1


def test_flip_offset_by_hand():
    m = np.zeros((6, 7), bool)
    m[1, 1:4] = True  # an L: a bar and a foot
    m[2, 1] = True
    got = degrade.flip_offset(m, 1, 0, 0)  # mirrored left-right in its box (cols 1..3)
    want = np.zeros_like(m)
    want[1, 1:4] = True
    want[2, 3] = True
    np.testing.assert_array_equal(got, want)
    up = np.zeros_like(m)  # upside down in its box (rows 1..2), then 2 down and 1 right
    up[3 + 0, 2] = True
    up[3 + 1, 2:5] = True
    np.testing.assert_array_equal(degrade.flip_offset(m, 0, 2, 1), up)


def test_flip_pixels_and_elastic(np_rng, masks):
    m = masks[1]
    rng = np.random.default_rng(0)
    flipped = degrade.flip_pixels(m, rng, p=0.2)
    assert abs(np.mean(flipped != m) - 0.2) < 0.01
    np.testing.assert_array_equal(degrade.flip_pixels(m, rng, p=1.0), ~m)
    np.testing.assert_array_equal(degrade.elastic(m, rng, alpha=0), m)
    # A small field moves the boundary only: Dice stays high; a large one lowers it.
    small = degrade.elastic(m, np.random.default_rng(1), alpha=1.0)
    large = degrade.elastic(m, np.random.default_rng(1), alpha=24.0)
    assert degrade.dice(small, m) > 0.95 > degrade.dice(large, m)
    # Pixels move by at most alpha (+1 for bilinear interpolation): the change lies within the
    # dilation/erosion band of that radius.
    band = degrade.morph(m, 25) & ~degrade.morph(m, -25)
    assert not np.any((large != m) & ~band)


def test_dice_by_hand():
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[0, 1, 1, 1]], bool)
    assert degrade.dice(a, b) == pytest.approx(2 * 1 / 5)
    assert degrade.dice(a & False, b & False) == 1.0
    assert degrade.dice(a, b, valid=np.array([[1, 1, 0, 0]], bool)) == pytest.approx(2 / 3)


def test_degrade_is_deterministic(masks):
    probs = np.ones(len(degrade.BINS))
    for i in range(8):
        a, ja = degrade.degrade(masks[i], degrade.example_rng(3, 0, 5, i), probs)
        b, jb = degrade.degrade(masks[i], degrade.example_rng(3, 0, 5, i), probs)
        assert ja == jb
        np.testing.assert_array_equal(a, b)
    draws = {degrade.degrade(masks[0], degrade.example_rng(3, 0, 5, k), probs)[1] for k in range(20)}
    assert len(draws) > 5  # different positions draw different bins


def test_calibrated_dice_histogram_is_uniform(masks):
    """Calibrate on 80 train masks, then 500 degradations of 100 validation masks: chi-squared
    against the uniform histogram of 10 Dice bins. The uncalibrated (uniform over bins)
    generator is far from uniform, so the test has power."""
    probs = degrade.calibrate(masks, seed=0)
    assert probs.min() >= 0 and probs.sum() == pytest.approx(1.0)
    held_out = shape_masks("validation", range(100))
    counts = np.zeros(10)
    raw = np.zeros(10)
    for k in range(500):
        m = held_out[k % 100]
        q = degrade.dice(degrade.degrade(m, degrade.example_rng(1, 0, 0, k), probs)[0], m)
        counts[min(int(q * 10), 9)] += 1
        r = degrade.dice(degrade.degrade(m, degrade.example_rng(1, 0, 1, k))[0], m)
        raw[min(int(r * 10), 9)] += 1
    assert stats.chisquare(counts).pvalue > 0.01, counts
    assert stats.chisquare(raw).pvalue < 1e-6, raw
