"""segjax.ops.morphology vs skimage.morphology (bit-identical values, borders included)."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import morphology as skm

from segjax.ops import closing, dilation, disk, erosion, opening, square

OPS = {"erosion": (erosion, skm.erosion), "dilation": (dilation, skm.dilation),
       "opening": (opening, skm.opening), "closing": (closing, skm.closing)}
# Odd sizes, and one image smaller than the largest footprint (reflection wraps more than once).
SHAPES = [(3, 13, 10), (2, 4, 3)]


def _images(rng, shape, dtype):
    if dtype == bool:
        return rng.uniform(size=shape) > 0.5
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape).astype(np.uint8)
    return rng.normal(size=shape).astype(np.float32)


def _skimage_each(fn, images, footprint, **kwargs):
    return np.stack([fn(im, footprint, **kwargs) for im in images])


def _footprints(rng):
    return {f"disk{r}": disk(r) for r in range(1, 6)} | {f"square{k}": square(k) for k in range(1, 5)} | {
        "asymmetric3x3": np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1]], bool),
        "rect2x3": np.ones((2, 3), bool),
        "random4x5": rng.uniform(size=(4, 5)) > 0.4,
    }


@pytest.mark.parametrize("name", ["disk1", "disk2", "disk3", "disk4", "disk5", "square1", "square2",
                                  "square3", "square4", "asymmetric3x3", "rect2x3", "random4x5"])
def test_matches_skimage_default_mode(np_rng, name):
    fp = _footprints(np.random.default_rng(0))[name]
    for shape in SHAPES:
        for dtype in (bool, np.uint8, np.float32):
            x = _images(np_rng, shape, dtype)
            for op, (ours, ref) in OPS.items():
                got = np.asarray(ours(x, fp))
                want = _skimage_each(ref, x, fp)
                assert got.dtype == want.dtype, (op, dtype)
                np.testing.assert_array_equal(got, want, err_msg=f"{op} {name} {dtype} {shape}")


@pytest.mark.parametrize("mode", ["reflect", "constant", "nearest", "mirror", "wrap", "max", "min", "ignore"])
def test_matches_skimage_every_border_mode(np_rng, mode):
    fp = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0]], bool)  # even, asymmetric
    for dtype in (bool, np.uint8, np.float32):
        x = _images(np_rng, (2, 7, 6), dtype)
        cval = 1 if dtype == bool else 3
        for op, (ours, ref) in OPS.items():
            got = np.asarray(ours(x, fp, mode=mode, cval=cval))
            want = _skimage_each(ref, x, fp, mode=mode, cval=cval)
            np.testing.assert_array_equal(got, want, err_msg=f"{op} {mode} {dtype}")


def test_footprints_match_skimage():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # skm.square is deprecated in 0.25+
        for k in range(1, 7):
            np.testing.assert_array_equal(square(k), skm.square(k).astype(bool))
            np.testing.assert_array_equal(square(k), skm.footprint_rectangle((k, k)).astype(bool))
    for r in range(0, 9):
        np.testing.assert_array_equal(disk(r), skm.disk(r).astype(bool))
        assert disk(r).dtype == bool
    with pytest.raises(ValueError):
        disk(1.5)
    with pytest.raises(ValueError):
        square(0)


def test_even_square_is_centred_like_skimage():
    x = np.zeros((1, 5, 5), np.uint8)
    x[0, 2, 2] = 1
    # square(2) covers offsets {0, +1}: output (y, x) reads (y..y+1, x..x+1), so a dilated point
    # grows up and to the left (centring {-1, 0} would grow it down and to the right).
    np.testing.assert_array_equal(np.argwhere(np.asarray(dilation(x, square(2)))[0]),
                                  [[1, 1], [1, 2], [2, 1], [2, 2]])
    np.testing.assert_array_equal(dilation(x, square(2)), skm.dilation(x[0], square(2))[None])


def test_jit_and_vmap_agree_with_skimage(np_rng):
    fp = disk(2)
    x = _images(np_rng, (4, 9, 11), np.float32)
    want = _skimage_each(skm.opening, x, fp)
    jitted = jax.jit(functools.partial(opening, footprint=fp))
    np.testing.assert_array_equal(jitted(x), want)
    np.testing.assert_array_equal(jax.vmap(jitted)(x), want)  # [H, W] per call under vmap
    np.testing.assert_array_equal(jitted(x[None])[0], want)  # extra leading dims
    with pytest.raises(ValueError, match="host"):
        jax.jit(lambda im, f: erosion(im, f))(x, jnp.asarray(fp))


def _argmin_gradient(x, fp, ct):
    """Reference VJP of the reflect-mode erosion of one image: each output's cotangent goes to
    the input pixel that attains the minimum (indices found by reflecting a pixel-index map)."""
    kh, kw = fp.shape
    h, w = x.shape
    index = np.pad(np.arange(h * w).reshape(h, w), [(kh // 2,) * 2, (kw // 2,) * 2], mode="symmetric")
    grad = np.zeros(h * w)
    for y in range(h):
        for xx in range(w):
            cand = index[y:y + kh, xx:xx + kw][fp]
            grad[cand[np.argmin(x.reshape(-1)[cand])]] += ct[y, xx]
    return grad.reshape(h, w)


def test_erosion_gradient_goes_to_the_minimum(np_rng):
    fp = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 1]], bool)
    x = np_rng.normal(size=(2, 6, 7)).astype(np.float32)
    ct = np_rng.normal(size=x.shape).astype(np.float32)
    _, vjp = jax.vjp(lambda v: erosion(v, fp), jnp.asarray(x))
    want = np.stack([_argmin_gradient(x[i], fp, ct[i]) for i in range(2)])
    np.testing.assert_allclose(vjp(jnp.asarray(ct))[0], want, rtol=1e-6, atol=1e-6)
    # dilation(x) = -erosion(-x) for a symmetric footprint: same rule with the maximum.
    sym = disk(1)
    _, vjp = jax.vjp(lambda v: dilation(v, sym), jnp.asarray(x))
    want = -np.stack([_argmin_gradient(-x[i], sym, -ct[i]) for i in range(2)])
    np.testing.assert_allclose(vjp(jnp.asarray(ct))[0], want, rtol=1e-6, atol=1e-6)


def test_rejects_empty_footprint_and_unknown_mode():
    x = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="no True"):
        erosion(x, np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="mode"):
        erosion(x, disk(1), mode="edge")


def _separable_zero_padded_boundary(masks, d):
    """metrics.mask_boundary as it was before it used segjax.ops.erosion (reduce_window twice)."""
    m = jnp.asarray(masks).astype(jnp.int32)
    lead = (1,) * (m.ndim - 2)
    padded = jnp.pad(m, [(0, 0)] * (m.ndim - 2) + [(d, d)] * 2)
    k, strides = 2 * d + 1, (1,) * m.ndim
    eroded = jax.lax.reduce_window(padded, 1, jax.lax.min, lead + (k, 1), strides, "VALID")
    eroded = jax.lax.reduce_window(eroded, 1, jax.lax.min, lead + (1, k), strides, "VALID")
    return m > eroded


@pytest.mark.parametrize("d", [1, 2, 4])
def test_boundary_iou_erosion_unchanged(np_rng, d):
    from segjax import metrics

    masks = np_rng.uniform(size=(2, 3, 17, 14)) > 0.3  # [N, classes, H, W], touching the borders
    got = np.asarray(metrics.mask_boundary(masks, d))
    np.testing.assert_array_equal(got, np.asarray(_separable_zero_padded_boundary(masks, d)))
    want = masks & ~np.stack([[skm.erosion(m, square(2 * d + 1), mode="constant", cval=0) for m in ms]
                              for ms in masks])
    np.testing.assert_array_equal(got, want)


def test_64_bit_images_follow_jax_canonical_dtype(np_rng):
    """Issue 29: float64 in gave float32 out under a "same dtype out" promise. The rule is now the
    documented one: the dtype JAX holds the input in. x64 off (the default): float64 -> float32
    equal to skimage's float64 result rounded to float32; int64 -> int32 with the same values, and
    an int64 value that int32 would wrap raises instead (it used to wrap silently: 2**40 -> 0).
    x64 on: float64 -> float64, bit-equal to skimage."""
    fp = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1]], bool)
    x = np_rng.normal(size=(2, 7, 6)) * 1e3 + 1e-9  # float64 values that float32 rounds
    ints = np_rng.integers(-2**31, 2**31, size=(2, 7, 6))  # int64, each fits in int32
    for op, (ours, ref) in OPS.items():
        want = _skimage_each(ref, x, fp)
        assert want.dtype == np.float64
        got = np.asarray(ours(x, fp))
        assert got.dtype == np.float32, op
        np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=op)
        got = np.asarray(ours(ints, fp))
        assert got.dtype == np.int32, op
        np.testing.assert_array_equal(got, _skimage_each(ref, ints, fp), err_msg=op)
        with jax.enable_x64(True):
            got = np.asarray(ours(x, fp))
        assert got.dtype == np.float64, op
        np.testing.assert_array_equal(got, want, err_msg=op)
    big = ints.copy()
    big[1, 3, 2] = 2**40
    with pytest.raises(ValueError, match=r"int64 hold values in \[-?\d+, 1099511627776\], outside int32"):
        erosion(big, fp)
    with jax.enable_x64(True):
        assert np.asarray(dilation(big, fp)).max() == 2**40
