"""segjax.ops.resize vs torch.nn.functional.interpolate: values, gradients, worked example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch.nn.functional as F

from segjax.ops import resize
from segjax.ops.resize import interpolation_matrix
from tests.ops.helpers import grad_nhwc, nchw, torch_vjp

MODES = [("nearest", False), ("bilinear", False), ("bilinear", True), ("bicubic", False),
         ("bicubic", True)]
# Up, down, mixed, identity, exact 2x, non-integer ratios, to 1x1, odd sizes everywhere.
SIZES = [((5, 7), (11, 4)), ((9, 6), (4, 13)), ((7, 7), (7, 7)), ((4, 5), (8, 10)),
         ((13, 11), (5, 3)), ((3, 4), (1, 1))]


def _torch_resize(t, size, method, align_corners):
    return F.interpolate(t, size=size, mode=method,
                         align_corners=None if method == "nearest" else align_corners,
                         antialias=False)


@pytest.mark.parametrize("method,align_corners", MODES)
@pytest.mark.parametrize("in_hw,out_hw", SIZES)
def test_matches_torch_forward_and_gradient(np_rng, method, align_corners, in_hw, out_hw):
    x = np_rng.normal(size=(2, *in_hw, 3)).astype(np.float32)
    ct = np_rng.normal(size=(2, *out_hw, 3)).astype(np.float32)
    y, vjp = jax.vjp(lambda v: resize(v, out_hw, method, align_corners), jnp.asarray(x))
    (gx,) = vjp(jnp.asarray(ct))
    ty, (tgx,) = torch_vjp(lambda t: _torch_resize(t, out_hw, method, align_corners), [nchw(x)], ct)
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, grad_nhwc(tgx), rtol=1e-5, atol=1e-5)


def test_bilinear_worked_example():
    # 2 -> 4 along an axis, half-pixel centres: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25
    # (clamped to the last pixel), so [a, b] -> [a, .75a+.25b, .25a+.75b, b].
    x = np.array([[0.0, 4.0], [8.0, 12.0]], np.float32)[None, :, :, None]
    expected = np.array([[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]], np.float32)
    np.testing.assert_allclose(resize(x, 4)[0, :, :, 0], expected, atol=1e-6)
    # align_corners=True: sources 0, 1/3, 2/3, 1.
    expected_ac = np.array([0, 4 / 3, 8 / 3, 4], np.float32)
    np.testing.assert_allclose(resize(x, (1, 4), align_corners=True)[0, 0, :, 0], expected_ac,
                               atol=1e-6)


def test_nearest_worked_example_and_integer_labels():
    # torch's nearest: src = floor(dst * 3 / 5) -> [0, 0, 1, 1, 2].
    labels = np.array([[7, 8, 9]], np.int32)[None, :, :, None]
    out = resize(labels, (1, 5), "nearest")
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out[0, 0, :, 0], [7, 7, 8, 8, 9])


def test_interpolation_rows_sum_to_one():
    for method in ("bilinear", "bicubic"):
        for ac in (False, True):
            m = interpolation_matrix(7, 12, method, ac)
            np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)


def test_jit_vmap_bfloat16(np_rng):
    x = np_rng.normal(size=(3, 2, 5, 6, 4)).astype(np.float32)
    f = jax.jit(jax.vmap(lambda v: resize(v, (9, 4), "bicubic", True)))
    ref = np.stack([resize(v, (9, 4), "bicubic", True) for v in x])
    np.testing.assert_allclose(f(x), ref, rtol=1e-6, atol=1e-6)
    yb = f(jnp.asarray(x, jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), ref, rtol=0.05, atol=0.05)
    g = jax.grad(lambda v: resize(v, (9, 4)).astype(jnp.float32).sum())(jnp.asarray(x[0], jnp.bfloat16))
    assert g.dtype == jnp.bfloat16 and np.isfinite(np.asarray(g, np.float32)).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=np.zeros((4, 4, 3)), size=2), "rank 4"),
    (dict(x=np.zeros((1, 4, 4, 3)), size=0), "size"),
    (dict(x=np.zeros((1, 4, 4, 3)), size=(2, -1)), "size"),
    (dict(x=np.zeros((1, 4, 4, 3)), size=(2, 2, 2)), "size"),
    (dict(x=np.zeros((1, 4, 4, 3)), size=2, method="area"), "method"),
    (dict(x=np.zeros((1, 4, 4, 3)), size=2, method="nearest", align_corners=True), "align_corners"),
    (dict(x=np.zeros((1, 4, 4, 3), np.int32), size=2, method="bilinear"), "floating"),
])
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resize(**kwargs)
