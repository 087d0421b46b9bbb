r"""Winograd convolution F(m x m, 3 x 3) for stride-1 (dilated) 3x3 convolutions (NHWC / HWIO).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016): an m x m tile of
a 3x3 correlation's output is `A^T [(G g G^T) * (B^T d B)] A` with d the (m + 2)^2 input tile and
g the kernel, so the `(m + 2)^2` elementwise products, summed over input channels, become
`(m + 2)^2` independent matrix products `[tiles, C] x [C, O]` with `(m + 2)^2 / (9 m^2)` of the
direct convolution's multiplications (F(2x2, 3x3): 1 / 2.25; F(4x4, 3x3): 1 / 4).

Dilation d is handled without space-to-batch: output positions `o, o + d, ..., o + (m - 1) d`
form a tile (origins `o = q m d + p`, `0 <= p < d`), whose input taps `o + t d` are plain slices of
the padded input reshaped to `[Q + 1, m, d]` per spatial axis (tap t is block `q + t // m`, row
`t % m`). Rows/columns of the tiled output past the real output are computed and dropped.

The work goes frequency row by frequency row (`ROWS_PER_GROUP` rows of the (m + 2)^2 grid at a
time): each group's transformed input, kernel and products stay small enough for the cache, where
transforming everything at once streamed several times the input through memory.

Gradients (a custom VJP, all in the transformed domain): the input gradient is again a Winograd
3x3 convolution (the output gradient correlated with the flipped, channel-swapped kernel), the
kernel gradient is `(m + 2)^2` products `V^T dM` of the re-transformed input with the
output-transform adjoint of the output gradient, mapped back with `G^T . G`.

Numerics: the transforms' interpolation points (0, +-1 for m = 2; 0, +-1, +-2 for m = 4) amplify
rounding: float32 results differ from the direct convolution by ~1e-7 (m = 2) to ~1e-6 (m = 4) of
the output's scale (tests bound 1e-6 / 1e-5), and through ResNet-50 by < 1e-4 relative in eval
mode. The transforms run in float32; the products in the input's dtype (segjax routes only float32
convolutions here, since bfloat16 products would lose ~1e-2).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# (B^T, G, A^T) for F(m, 3): y[i] = sum_k g[k] d[i + k], i < m, d of length m + 2.
_TRANSFORMS = {
    2: (
        np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0],
                  [0.5, 0.5, 0.5],
                  [0.5, -0.5, 0.5],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], np.float64),
    ),
    4: (
        np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64),
    ),
}
TILES = tuple(_TRANSFORMS)


def transforms(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(B^T, G, A^T)` of F(m, 3) as float64 arrays (shapes [m+2, m+2], [m+2, 3], [m, m+2])."""
    if m not in _TRANSFORMS:
        raise ValueError(f"Winograd tile m must be one of {TILES}, got {m!r}")
    return _TRANSFORMS[m]


def _combine(parts, coeffs, axis=0):
    """Stack `sum_t coeffs[a, t] * parts[t]` over rows a of `coeffs` along a new axis `axis`.

    `parts` is a list or a function `t -> part`, called only for nonzero coefficients.
    """
    part = parts if callable(parts) else parts.__getitem__
    rows = []
    for row in np.atleast_2d(coeffs):
        acc = None
        for t, c in enumerate(row):
            if c == 0:
                continue
            p = part(t)
            term = p if c == 1 else (-p if c == -1 else p * np.float32(c))
            acc = term if acc is None else acc + term
        rows.append(acc)
    return jnp.stack(rows, axis=axis)


def _pad_to(x, lo, shape):
    """x placed at offset `lo` in zeros of `shape` (a dynamic-update-slice: XLA:CPU's pad is ~5x
    slower for these sizes)."""
    return jax.lax.dynamic_update_slice(jnp.zeros(shape, x.dtype), x, lo)


class _Tiling:
    """Tile bookkeeping of F(m, 3) with dilation (dh, dw) for an output of `out_hw`.

    Per axis: Q = ceil(out / (m d)) tile blocks; output position `q m d + s d + p` is row s of the
    tile with origin `q m d + p`; its taps read padded-input positions `q m d + p + t d`, i.e.
    block `q + t // m`, row `t % m`, phase p of the padded input cut into blocks of m * d.
    """

    def __init__(self, n, out_hw, dilation, m):
        self.n, self.out_hw, self.d, self.m, self.a = n, tuple(out_hw), tuple(dilation), m, m + 2
        self.q = tuple(-(-o // (m * d)) for o, d in zip(out_hw, dilation))

    @property
    def tiles(self):
        (qh, qw), (dh, dw) = self.q, self.d
        return self.n * qh * dh * qw * dw

    def padded_input(self, x, pad_lo):
        """`[N, H, W, C]` -> `[N, Qh+1, m, dh, Qw+1, m, dw, C]` float32 (zero padded)."""
        (qh, qw), (dh, dw), m = self.q, self.d, self.m
        n, _, _, c = x.shape
        xp = _pad_to(x.astype(jnp.float32), (0, pad_lo[0], pad_lo[1], 0),
                     (n, (qh + 1) * m * dh, (qw + 1) * m * dw, c))
        return xp.reshape(n, qh + 1, m, dh, qw + 1, m, dw, c)

    def input_rows(self, xp, bt_rows):
        """V[a, b] for the rows a of B^T in `bt_rows` [R, a], all b: `[R * a, T, C]`."""
        (qh, qw), m = self.q, self.m
        r = _combine(lambda t: xp[:, t // m:t // m + qh, t % m], bt_rows)
        v = _combine(lambda u: r[:, :, :, :, u // m:u // m + qw, u % m], transforms(m)[0], axis=1)
        return v.reshape(-1, self.tiles, xp.shape[-1])

    def output_grid(self, g):
        """Output gradient `[N, Ho, Wo, O]` -> `[m, m, N, Qh, dh, Qw, dw, O]` (tile rows first)."""
        (qh, qw), (dh, dw), m = self.q, self.d, self.m
        n, _, _, o = g.shape
        gp = _pad_to(g.astype(jnp.float32), (0, 0, 0, 0), (n, qh * m * dh, qw * m * dw, o))
        gp = gp.reshape(n, qh, m, dh, qw, m, dw, o)
        return jnp.transpose(gp, (2, 5, 0, 1, 3, 4, 6, 7))

    def output(self, y):
        """`[m, m, N, Qh, dh, Qw, dw, O]` -> `[N, Ho, Wo, O]`."""
        (qh, qw), (dh, dw), m = self.q, self.d, self.m
        o = y.shape[-1]
        y = jnp.transpose(y, (2, 3, 0, 4, 5, 1, 6, 7)).reshape(self.n, qh * m * dh, qw * m * dw, o)
        return y[:, :self.out_hw[0], :self.out_hw[1]]


def _kernel_rows(w, m, rows):
    """U[a, :] = (G[a] kron G) w for a in `rows` (a slice), `w [3, 3, C, O]` -> `[R * a, C, O]`
    float32: one skinny product with `w.reshape(9, C * O)` that lands in U's layout."""
    g = transforms(m)[1]
    k = jnp.asarray(np.kron(g[rows], g), jnp.float32)
    u = jnp.dot(k, w.astype(jnp.float32).reshape(9, -1), precision=jax.lax.Precision.HIGHEST)
    return u.reshape(-1, *w.shape[2:])


# Frequency rows transformed and multiplied together (see `_forward`). F(4x4) fwd + bwd ms / train
# compile s on the 2-core CPU, 1 / 2 / 3 / 6 rows: 512 ch rate 4 at 4x32^2 89 / 82 / 87 / 93 ms,
# 2.1 / 1.1 / 1.2 / 0.9 s; 64 ch at 4x64^2 7.2 / 7.0 / 7.7 / 23.0 ms.
ROWS_PER_GROUP = 2


def _row_groups(a):
    return [slice(r, min(r + ROWS_PER_GROUP, a)) for r in range(0, a, ROWS_PER_GROUP)]


def _out_hw(in_hw, dilation, pads):
    return tuple(n + lo + hi - 2 * d for n, d, (lo, hi) in zip(in_hw, dilation, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def winograd_conv3x3(x: jax.Array, w: jax.Array, dilation=(1, 1), padding=((1, 1), (1, 1)),
                     m: int = 4) -> jax.Array:
    """Stride-1 3x3 correlation of `x [N, H, W, C]` with `w [3, 3, C, O]` by Winograd F(m, 3).

    `dilation`: (dh, dw); `padding`: ((lo, hi), (lo, hi)) with `0 <= lo, hi <= 2 d` (torch's
    symmetric `d` and lax's SAME both qualify). Output `[N, H + lo + hi - 2 dh, ...]` in x's dtype.
    """
    return _forward(x, w, tuple(dilation), _pairs(padding), m)


def _pairs(padding):
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _check(x, w, dilation, pads, m):
    if x.ndim != 4 or w.shape[:2] != (3, 3) or w.shape[2] != x.shape[3]:
        raise ValueError(f"winograd_conv3x3 needs x [N, H, W, C] and w [3, 3, C, O], got "
                         f"{x.shape} and {w.shape}")
    for d, (lo, hi) in zip(dilation, pads):
        if not (0 <= lo <= 2 * d and 0 <= hi <= 2 * d):
            raise ValueError(f"winograd_conv3x3 needs 0 <= padding <= 2 * dilation, got padding "
                             f"{pads} with dilation {dilation}")
    transforms(m)


def _forward(x, w, dilation, pads, m):
    """Row by row of the (m+2) x (m+2) frequencies: transform, (m+2) products, partial output.

    Grouping by frequency row keeps each group's transformed input, kernel and products small
    enough to stay in cache; transforming everything at once streams ~5x the input through
    memory, which dominated on the 2-core CPU (BENCHMARKS.md)."""
    _check(x, w, dilation, pads, m)
    n, _, _, c = x.shape
    o = w.shape[3]
    bt, _, at = transforms(m)
    tl = _Tiling(n, _out_hw(x.shape[1:3], dilation, pads), dilation, m)
    xp = tl.padded_input(x, (pads[0][0], pads[1][0]))
    z = []
    for rows in _row_groups(tl.a):
        v = tl.input_rows(xp, bt[rows]).astype(x.dtype)
        u = _kernel_rows(w, m, rows).astype(x.dtype)
        mm = jnp.einsum("ftc,fco->fto", v, u, preferred_element_type=jnp.float32)
        mm = mm.reshape(-1, tl.a, n, tl.q[0], tl.d[0], tl.q[1], tl.d[1], o)
        z.extend(_combine(lambda b: mm[:, b], at, axis=1))  # R x [m (columns), N, ..., O]
    return tl.output(_combine(z, at)).astype(x.dtype)  # [m (rows), m (columns), ...]


def _fwd(x, w, dilation, padding, m):
    pads = _pairs(padding)
    return _forward(x, w, tuple(dilation), pads, m), (x, w)


def _bwd(dilation, padding, m, res, g):
    x, w = res
    dilation, pads = tuple(dilation), _pairs(padding)
    # Input gradient: dx[i] = sum_k w[k] g[i + lo - d k], a correlation of g with the flipped,
    # channel-swapped kernel and padding (2d - lo, 2d - hi).
    w_adj = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    pads_adj = tuple((2 * d - lo, 2 * d - hi) for d, (lo, hi) in zip(dilation, pads))
    dx = _forward(g, w_adj, dilation, pads_adj, m).astype(x.dtype)
    # Kernel gradient, the adjoint of the forward's kernel path, frequency row by row:
    # dM = (A kron A) dY, dU = V^T dM, dw = (G kron G)^T dU.
    n, _, _, c = x.shape
    o = w.shape[3]
    bt, gm, at = transforms(m)
    tl = _Tiling(n, g.shape[1:3], dilation, m)
    xp = tl.padded_input(x, (pads[0][0], pads[1][0]))
    dy = tl.output_grid(g)  # [m, m, N, Qh, dh, Qw, dw, O]
    dw = None
    for rows in _row_groups(tl.a):
        za = _combine(dy, at.T[rows])  # sum_s At[s, a] dY[s]: [R, m (columns), ...]
        dm = _combine(lambda u: za[:, u], at.T, axis=1).reshape(-1, tl.tiles, o)  # [R * a, T, O]
        v = tl.input_rows(xp, bt[rows]).astype(x.dtype)
        du = jnp.einsum("ftc,fto->fco", v, dm.astype(x.dtype), preferred_element_type=jnp.float32)
        k = jnp.asarray(np.kron(gm[rows], gm).T, jnp.float32)  # [9, R * a]
        part = jnp.dot(k, du.reshape(-1, c * o), precision=jax.lax.Precision.HIGHEST)
        dw = part if dw is None else dw + part
    return dx, dw.reshape(w.shape).astype(w.dtype)


winograd_conv3x3.defvjp(_fwd, _bwd)
