"""Augmentation keeps images and masks aligned through scale, pad, crop and flip."""
import numpy as np
import pytest

from segjax.data import augment
from segjax.data._tf import tf

PALETTE = np.array([[10, 200, 30], [200, 20, 40], [60, 60, 220], [240, 240, 10],
                    [120, 10, 180]], np.float32)
FILL = [123.0, 117.0, 104.0]


def _pattern(h=23, w=29):
    """An asymmetric label pattern with 4x5 blocks and an image whose colour encodes it."""
    r, c = np.mgrid[0:h, 0:w]
    label = ((r // 4) * 3 + (c // 5) * 2 + (r // 4) * (c // 5)) % len(PALETTE)
    label[0, 0] = 255  # an ignore pixel in the source too
    image = np.where((label == 255)[..., None], np.float32(FILL), PALETTE[label % len(PALETTE)])
    return image.astype(np.uint8), label.astype(np.int32)


def _run(image, label, seed, **kw):
    args = dict(crop_size=(31, 27), min_scale=0.5, max_scale=2.0, hflip=True, fill=FILL,
                ignore_label=255)
    args.update(kw)
    out = augment.train_augment(tf.constant(image), tf.constant(label),
                                augment.example_seed(seed, 0, 0), **args)
    return out[0].numpy(), out[1].numpy()


def _check_encoded(image, label):
    valid = label != 255
    np.testing.assert_array_equal(image[valid], PALETTE[label[valid]])
    pad = label == 255
    assert np.all((image[pad] == FILL) | (image[pad] == PALETTE[0]))  # fill (or the ignore px)


def test_nearest_alignment_is_exact_for_many_seeds():
    image, label = _pattern()
    padded = 0
    for seed in range(40):
        out_image, out_label = _run(image, label, seed, image_resize="nearest")
        assert out_image.shape == (31, 27, 3) and out_label.shape == (31, 27)
        _check_encoded(out_image, out_label)
        padded += (out_label[-1] == 255).all() or (out_label[:, -1] == 255).all()
    assert padded > 5  # small scales pad, large scales crop: both paths ran


def test_bilinear_image_matches_nearest_label_away_from_edges():
    image, label = _pattern()
    checked = 0
    for seed in range(20):
        out_image, out_label = _run(image, label, seed)
        # pixels whose 3x3 neighbourhood carries one label: bilinear mixes only that colour
        pad = np.pad(out_label, 1, constant_values=-1)  # crop borders: neighbours unknown
        windows = np.lib.stride_tricks.sliding_window_view(pad, (3, 3))
        uniform = (windows == out_label[..., None, None]).all(axis=(2, 3)) & (out_label != 255)
        np.testing.assert_allclose(out_image[uniform], PALETTE[out_label[uniform]], atol=1e-3)
        checked += uniform.sum()
    assert checked > 4000


def _find_window(big, small):
    """All (top, left, flipped) placements where `small` equals a window of `big`."""
    hits = []
    for flip in (False, True):
        target = small[:, ::-1] if flip else small
        for top in range(big.shape[0] - small.shape[0] + 1):
            for left in range(big.shape[1] - small.shape[1] + 1):
                if np.array_equal(big[top:top + small.shape[0], left:left + small.shape[1]],
                                  target):
                    hits.append((top, left, flip))
    return hits


@pytest.mark.parametrize("crop", [(11, 13), (30, 20)])
def test_unit_scale_is_a_window_of_the_padded_input(np_rng, crop):
    """Reference: at scale 1 the output is a (mirrored) window of the bottom/right-padded
    input; offsets over seeds cover more than one position and both flips."""
    label = np_rng.integers(0, 5, size=(17, 19)).astype(np.int32)
    image = PALETTE[label].astype(np.uint8)
    big = np.full((max(17, crop[0]), max(19, crop[1])), 255, np.int32)
    big[:17, :19] = label
    placements = set()
    for seed in range(12):
        out_image, out_label = _run(image, label, seed, crop_size=crop, min_scale=1.0,
                                    max_scale=1.0)
        hits = _find_window(big, out_label)
        assert len(hits) >= 1
        placements.update(hits)
        _check_encoded(out_image, out_label)
    assert {f for _, _, f in placements} == {False, True}
    if crop == (11, 13):  # smaller than the input: the offset varies too
        assert len({(t, l) for t, l, _ in placements}) > 2


def test_photometric_changes_colours_not_geometry():
    image, label = _pattern()
    plain_image, plain_label = _run(image, label, 3, image_resize="nearest")
    photo_image, photo_label = _run(image, label, 3, image_resize="nearest", photometric=True)
    np.testing.assert_array_equal(plain_label, photo_label)
    assert np.abs(plain_image - photo_image).max() > 1.0
    assert photo_image.min() >= 0.0 and photo_image.max() <= 255.0


def test_seeds_are_stateless_and_distinct():
    image, label = _pattern()
    a = _run(image, label, 5)
    b = _run(image, label, 5)
    np.testing.assert_array_equal(a[0], b[0])
    seeds = {tuple(augment.example_seed(1, e, i).numpy()) for e in range(3) for i in range(5)}
    assert len(seeds) == 15
