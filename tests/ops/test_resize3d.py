"""segjax.ops.resize on NDHWC volumes vs torch.nn.functional.interpolate (trilinear both ways of
align_corners, nearest): values and autograd gradients, a worked example, jit/vmap, bad input
hunted with Hypothesis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from segjax.ops import resize
from tests.ops.helpers import grad_ndhwc, ncdhw, torch_vjp3d

# Up, down and mixed per axis with non-integer ratios, identity, and down to a single sample.
CASES = [("nearest", False, (3, 5, 4), (7, 2, 9)), ("trilinear", False, (3, 5, 4), (7, 2, 9)),
         ("trilinear", True, (3, 5, 4), (7, 2, 9)), ("trilinear", False, (4, 6, 5), (1, 4, 5)),
         ("trilinear", True, (4, 6, 5), (1, 4, 5))]


@pytest.mark.parametrize("method,align_corners,in_dhw,out_dhw", CASES)
def test_matches_torch_forward_and_gradient(np_rng, method, align_corners, in_dhw, out_dhw):
    x = np_rng.normal(size=(2, *in_dhw, 3)).astype(np.float32)
    ct = np_rng.normal(size=(2, *out_dhw, 3)).astype(np.float32)
    y, vjp = jax.vjp(lambda v: resize(v, out_dhw, method, align_corners), jnp.asarray(x))
    ty, (tgx,) = torch_vjp3d(
        lambda t: F.interpolate(t, size=out_dhw, mode=method,
                                align_corners=None if method == "nearest" else align_corners),
        [ncdhw(x)], ct)
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vjp(jnp.asarray(ct))[0], grad_ndhwc(tgx), rtol=1e-5, atol=1e-5)


def test_trilinear_worked_example_and_integer_labels():
    # A 2x2x2 cube of corner values v = 4d + 2h + w is linear, so align_corners=True upsampling to
    # 3x3x3 puts the mean of its neighbours at every midpoint: v(d, h, w) with d, h, w in {0, .5, 1}.
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2, 1)
    t = np.array([0.0, 0.5, 1.0])
    expected = 4 * t[:, None, None] + 2 * t[None, :, None] + t[None, None, :]
    np.testing.assert_allclose(resize(x, 3, "trilinear", True)[0, ..., 0], expected, atol=1e-6)
    labels = np.array([7, 8, 9], np.int32).reshape(1, 3, 1, 1, 1)
    out = resize(labels, (5, 2, 1), "nearest")  # torch's floor(dst * 3 / 5) -> 0, 0, 1, 1, 2
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out[0, :, 0, 0, 0], [7, 7, 8, 8, 9])
    np.testing.assert_array_equal(out[0, :, 1, 0, 0], [7, 7, 8, 8, 9])


def test_jit_vmap_bfloat16(np_rng):
    x = np_rng.normal(size=(3, 2, 3, 4, 5, 2)).astype(np.float32)
    f = jax.jit(jax.vmap(lambda v: resize(v, (5, 3, 6), "trilinear", True)))
    ref = np.stack([resize(v, (5, 3, 6), "trilinear", True) for v in x])
    np.testing.assert_allclose(f(x), ref, rtol=1e-6, atol=1e-6)
    yb = f(jnp.asarray(x, jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), ref, rtol=0.05, atol=0.05)


@given(st.one_of(st.integers(-3, 0), st.just(True), st.just(2.5), st.just("4"),
                 st.lists(st.integers(1, 3), min_size=1, max_size=4).filter(lambda v: len(v) != 3)))
def test_bad_volume_sizes_raise_naming_size(bad):
    with pytest.raises(ValueError, match="size"):
        resize(np.zeros((1, 2, 3, 4, 1), np.float32), bad, "trilinear")


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=np.zeros((1, 2, 3, 4, 1)), size=2, method="bilinear"), "method"),
    (dict(x=np.zeros((1, 2, 3, 4, 1)), size=2, method="bicubic"), "method"),
    (dict(x=np.zeros((1, 3, 4, 1)), size=2, method="trilinear"), "method"),
    (dict(x=np.zeros((1, 3, 4, 1)), size=(2, 2, 2)), "size"),
    (dict(x=np.zeros((1, 1, 2, 3, 4, 1)), size=2), "rank 4 .* or 5"),
    (dict(x=np.zeros((1, 2, 3, 4, 1)), size=2, method="nearest", align_corners=True),
     "align_corners"),
    (dict(x=np.zeros((1, 2, 3, 4, 1), np.int32), size=2, method="trilinear"), "floating"),
    (dict(x=np.zeros((1, 2, 0, 4, 1)), size=2, method="trilinear"), "non-empty"),
])
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resize(**kwargs)
