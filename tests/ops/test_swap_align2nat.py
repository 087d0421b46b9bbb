"""`swap_align2nat` (TensorMask) against a NumPy loop transcription of detectron2's kernel formula,
the exact integer shift it reduces to at lambda = 1, the adjoint identity of its gradient, and
JAX's numerical gradient check in float64 (first and second order).

No reference implementation runs on a CPU (detectron2's is CUDA-only), so the transcription below
is written from the formula: for output (y, x, v, u) with V' = lam V, the 16-tap multilinear
interpolation at image (y lam + v - V'/2 + 0.5, x lam + u - V'/2 + 0.5) and mask
((v + 0.5)/lam - 0.5, (u + 0.5)/lam - 0.5), floor and ceil neighbours, `pad_val` outside.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from segjax.ops import swap_align2nat, swap_align2nat_windows


def reference(x: np.ndarray, lam: int, pad_val: float) -> np.ndarray:
    """Loop transcription of the kernel, in float64."""
    n, h, w, c = x.shape
    v_in = int(math.isqrt(c))
    grid = np.asarray(x, np.float64).reshape(n, h, w, v_in, v_in)
    ho, wo, vo = math.ceil(h / lam), math.ceil(w / lam), lam * v_in
    out = np.zeros((n, ho, wo, vo, vo))

    def at(b, yy, xx, vv, uu):
        inside = 0 <= yy < h and 0 <= xx < w and 0 <= vv < v_in and 0 <= uu < v_in
        return grid[b, yy, xx, vv, uu] if inside else pad_val

    def split(p):
        lo, hi = math.floor(p), math.ceil(p)
        return ((lo, 1.0 - (p - lo)), (hi, p - lo))

    for b, y, xo, v, u in itertools.product(range(n), range(ho), range(wo), range(vo), range(vo)):
        oy = y * lam + v - vo / 2 + 0.5
        ox = xo * lam + u - vo / 2 + 0.5
        ov = (v + 0.5) / lam - 0.5
        ou = (u + 0.5) / lam - 0.5
        total = 0.0
        for (yy, wy), (xx, wx), (vv, wv), (uu, wu) in itertools.product(
                split(oy), split(ox), split(ov), split(ou)):
            total += wy * wx * wv * wu * at(b, yy, xx, vv, uu)
        out[b, y, xo, v, u] = total
    return out.reshape(n, ho, wo, vo * vo)


@pytest.mark.parametrize("lam,h,w,v", [(1, 5, 7, 3), (2, 5, 7, 3), (3, 4, 5, 2), (2, 3, 3, 4)])
def test_equals_the_loop_transcription(np_rng, lam, h, w, v):
    x = np_rng.normal(size=(2, h, w, v * v)).astype(np.float32)
    got = np.asarray(swap_align2nat(jnp.asarray(x), lam, pad_val=-6.0))
    want = reference(x, lam, -6.0)
    assert got.shape == (2, math.ceil(h / lam), math.ceil(w / lam), (lam * v) ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lambda_one_is_the_integer_shift_for_odd_windows(np_rng):
    """At lam = 1 with odd V every position is an integer: out[y, x, v, u] =
    x[y + v - (V-1)/2, x + u - (U-1)/2, v, u], pad_val outside the image."""
    n, h, w, v = 2, 6, 5, 5
    x = np_rng.normal(size=(n, h, w, v * v)).astype(np.float32)
    got = np.asarray(swap_align2nat(jnp.asarray(x), 1, pad_val=-3.0)).reshape(n, h, w, v, v)
    grid = x.reshape(n, h, w, v, v)
    r = (v - 1) // 2
    want = np.full_like(got, -3.0)
    for y, xo, vv, uu in itertools.product(range(h), range(w), range(v), range(v)):
        yy, xx = y + vv - r, xo + uu - r
        if 0 <= yy < h and 0 <= xx < w:
            want[:, y, xo, vv, uu] = grid[:, yy, xx, vv, uu]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("lam", [1, 2])
def test_gradient_is_the_adjoint(np_rng, lam):
    """With pad_val = 0 the op is linear: <vjp(g), x> = <g, f(x)> for random x and g."""
    x = jnp.asarray(np_rng.normal(size=(1, 5, 6, 9)), jnp.float32)
    y, vjp = jax.vjp(lambda t: swap_align2nat(t, lam, pad_val=0.0), x)
    g = jnp.asarray(np_rng.normal(size=y.shape), jnp.float32)
    (gx,) = vjp(g)
    np.testing.assert_allclose(float(jnp.vdot(gx, x)), float(jnp.vdot(g, y)), rtol=1e-5)


def test_numerical_gradients_in_float64_first_and_second_order(np_rng):
    with jax.enable_x64(True):
        x = jnp.asarray(np_rng.normal(size=(1, 3, 4, 4)), jnp.float64)
        check_grads(lambda t: swap_align2nat(t, 2, pad_val=-6.0), (x,), order=2,
                    modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_vmap_dtypes_and_errors(np_rng):
    x = np_rng.normal(size=(3, 2, 4, 5, 9)).astype(np.float32)
    batched = jax.vmap(lambda t: swap_align2nat(t, 2))(jnp.asarray(x))
    for i in range(3):
        np.testing.assert_allclose(np.asarray(batched[i]),
                                   np.asarray(swap_align2nat(jnp.asarray(x[i]), 2)), rtol=1e-6)
    half = swap_align2nat(jnp.asarray(x[0], jnp.bfloat16), 2)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), reference(x[0], 2, -6.0),
                               rtol=0.05, atol=0.1)
    with pytest.raises(ValueError, match="square number|V \\* U"):
        swap_align2nat(jnp.zeros((1, 2, 2, 8)), 2)
    with pytest.raises(ValueError, match="lam >= 1"):
        swap_align2nat(jnp.zeros((1, 2, 2, 9)), 0)


# ---------------------------------------------------------------------------------------------
# swap_align2nat_windows: the same interpolant at chosen windows, optionally on an S x S grid


def window_reference(x: np.ndarray, lam: int, ys, xs, size, pad_val: float) -> np.ndarray:
    """Loop transcription at windows (ys[n, k], xs[n, k]) and mask sub-positions v' (float64)."""
    n, h, w, c = x.shape
    v_in = int(math.isqrt(c))
    grid = np.asarray(x, np.float64).reshape(n, h, w, v_in, v_in)
    vo = lam * v_in
    steps = np.arange(vo, dtype=float) if size is None else (np.arange(size) + 0.5) * vo / size - 0.5
    out = np.zeros(ys.shape + (len(steps), len(steps)))

    def at(b, yy, xx, vv, uu):
        inside = 0 <= yy < h and 0 <= xx < w and 0 <= vv < v_in and 0 <= uu < v_in
        return grid[b, yy, xx, vv, uu] if inside else pad_val

    def split(p):
        lo, hi = math.floor(p), math.ceil(p)
        return ((lo, 1.0 - (p - lo)), (hi, p - lo))

    for b, k in itertools.product(range(ys.shape[0]), range(ys.shape[1])):
        for i, j in itertools.product(range(len(steps)), range(len(steps))):
            v, u = steps[i], steps[j]
            oy = ys[b, k] * lam + v - vo / 2 + 0.5
            ox = xs[b, k] * lam + u - vo / 2 + 0.5
            total = 0.0
            for (yy, wy), (xx, wx), (vv, wv), (uu, wu) in itertools.product(
                    split(oy), split(ox), split((v + 0.5) / lam - 0.5), split((u + 0.5) / lam - 0.5)):
                total += wy * wx * wv * wu * at(b, yy, xx, vv, uu)
            out[b, k, i, j] = total
    return out


@pytest.mark.parametrize("lam,h,w,v", [(1, 5, 7, 3), (2, 7, 5, 3), (4, 9, 8, 2)])
def test_windows_are_the_full_op_at_those_windows(np_rng, lam, h, w, v):
    x = jnp.asarray(np_rng.normal(size=(2, h, w, v * v)), jnp.float32)
    ho, wo = math.ceil(h / lam), math.ceil(w / lam)
    ys = np_rng.integers(0, ho, size=(2, 6))
    xs = np_rng.integers(0, wo, size=(2, 6))
    full = np.asarray(swap_align2nat(x, lam)).reshape(2, ho, wo, lam * v, lam * v)
    got = np.asarray(swap_align2nat_windows(x, lam, jnp.asarray(ys), jnp.asarray(xs)))
    np.testing.assert_allclose(got, full[np.arange(2)[:, None], ys, xs], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lam,size", [(2, 5), (3, 4), (1, 7)])
def test_windows_on_a_grid_equal_the_loop_transcription(np_rng, lam, size):
    x = np_rng.normal(size=(1, 6, 5, 9)).astype(np.float32)
    ys = np.array([[0, 1, 2]])
    xs = np.array([[2, 0, 1]])
    got = np.asarray(swap_align2nat_windows(jnp.asarray(x), lam, jnp.asarray(ys), jnp.asarray(xs), size=size,
                                            pad_val=-3.0))
    np.testing.assert_allclose(got, window_reference(x, lam, ys, xs, size, -3.0), rtol=1e-5, atol=1e-5)


def test_window_gradients_equal_the_full_op_gradients(np_rng):
    """The gradient in x through chosen windows is the full op's gradient with the cotangent
    non-zero only at those windows."""
    x = jnp.asarray(np_rng.normal(size=(1, 6, 6, 4)), jnp.float32)
    ys, xs = jnp.asarray([[0, 2, 1]]), jnp.asarray([[1, 2, 0]])
    g = jnp.asarray(np_rng.normal(size=(1, 3, 4, 4)), jnp.float32)
    grad_w = jax.grad(lambda x: jnp.sum(swap_align2nat_windows(x, 2, ys, xs) * g))(x)
    cot = jnp.zeros((1, 3, 3, 4, 4)).at[0, ys[0], xs[0]].add(g[0])
    grad_f = jax.grad(lambda x: jnp.sum(swap_align2nat(x, 2).reshape(1, 3, 3, 4, 4) * cot))(x)
    np.testing.assert_allclose(grad_w, grad_f, rtol=1e-5, atol=1e-6)
