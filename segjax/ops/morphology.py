"""Flat grey-scale morphology on [..., H, W] arrays, equal to `skimage.morphology` bit for bit.

`erosion(x, fp)[.., y, x] = min over fp[i, j] of x[.., y + i - ci, x + j - cj]` and `dilation`
the same with max, where (ci, cj) is the centre of the footprint; `opening` is an erosion then a
dilation with the mirrored footprint, `closing` the reverse. These are skimage's definitions
(scikit-image 0.26, which calls `scipy.ndimage.grey_erosion` / `grey_dilation`):

* An even-sized footprint is first padded with a zero row/column at the *front* (skimage's
  `pad_footprint(..., pad_end=False)`), so `square(2)` covers the offsets {0, +1}, not {-1, 0}.
* `dilation` does not mirror the footprint (skimage undoes ndimage's mirroring); for a
  non-symmetric footprint it therefore differs from `binary_dilation`, exactly as skimage's does.
* Borders follow `mode` (skimage's default, `"reflect"`, repeats the edge pixel:
  `d c b a | a b c d | d c b a`); `"constant"` uses `cval`; `"max"` / `"min"` fill with the
  dtype's largest / smallest value (+-inf for floats, True/False for bool); `"ignore"` is `"max"`
  in an erosion and `"min"` in a dilation, so outside pixels never win. `"nearest"`, `"mirror"`
  (`d c b | a b c d | c b a`) and `"wrap"` as in `scipy.ndimage`.
* The output has the input's dtype as JAX holds it, `jax.dtypes.canonicalize_dtype(x.dtype)`:
  bool images give bool (min = AND, max = OR), uint8 gives uint8, float32 gives float32. A 64-bit
  input keeps 64 bits only with `jax_enable_x64` (e.g. `with jax.enable_x64(True):`), where float64
  gives float64 equal to skimage's bit for bit. With x64 off (JAX's default) float64 becomes
  float32 on the way in, so the output is float32 and equals skimage's float64 result rounded to
  float32 (rounding is monotone, so it commutes with min and max); int64 / uint64 become int32 /
  uint32, and a host (NumPy) integer array with a value outside that range raises ValueError
  instead of wrapping.

The footprint is a host (NumPy) array and static: it decides which shifted slices are taken, so
close over it (or use `functools.partial`) when you `jax.jit` these functions. Any number of
leading (batch) dimensions is allowed, so the functions are batched and `vmap` just works.
A full rectangle is applied separably (rows, then columns), which is exact for min/max.
Gradients (float images) are those of `jnp.minimum`/`jnp.maximum`: each output's gradient goes
to the pixel that attains the min/max (split evenly between exact ties).

Example:
  fp = segjax.ops.disk(2)
  opened = jax.jit(lambda m: segjax.ops.opening(m, fp))(masks)  # masks [N, H, W] bool
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

_NUMPY_PAD_MODE = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap"}
_MODES = ("reflect", "constant", "nearest", "mirror", "wrap", "max", "min", "ignore")


def disk(radius: int) -> np.ndarray:
    """Bool footprint [2r+1, 2r+1]: pixels at Euclidean distance <= r from the centre.

    Equal to `skimage.morphology.disk(radius).astype(bool)` (its default `strict_radius=True`).
    """
    if int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    r = int(radius)
    offsets = np.arange(-r, r + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= r * r


def square(width: int) -> np.ndarray:
    """Bool footprint [width, width] of ones, as `skimage.morphology.square(width)` (in 0.26
    `footprint_rectangle((width, width))`). Even widths are centred as skimage does (see the
    module docstring)."""
    if int(width) != width or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    return np.ones((int(width), int(width)), bool)


def _odd_footprint(footprint) -> np.ndarray:
    """The footprint as a 2-D bool array of odd size, padded at the front like skimage."""
    if isinstance(footprint, jax.core.Tracer):
        raise ValueError("footprint must be a 2-D host (NumPy) array, not a traced value: close "
                         "over it (functools.partial) instead of passing it through jax.jit")
    fp = np.asarray(footprint)
    if fp.ndim != 2:
        raise ValueError(f"footprint must be a 2-D host (NumPy) array, got shape {fp.shape}")
    fp = fp.astype(bool)
    if not fp.any():
        raise ValueError("footprint has no True entry: the min/max over it is undefined")
    pad = [((1, 0) if n % 2 == 0 else (0, 0)) for n in fp.shape]
    return np.pad(fp, pad)


def _extreme(dtype, largest: bool):
    """The largest (or smallest) value of `dtype`: the neutral fill of a min (or max)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return largest
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return info.max if largest else info.min
    return np.inf if largest else -np.inf


def _pad(x: jax.Array, pads, mode: str, cval, *, is_erosion: bool) -> jax.Array:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    widths = [(0, 0)] * (x.ndim - 2) + list(pads)
    if mode == "ignore":
        mode = "max" if is_erosion else "min"
    if mode in ("max", "min"):
        mode, cval = "constant", _extreme(x.dtype, largest=(mode == "max"))
    if mode == "constant":
        return jnp.pad(x, widths, mode="constant", constant_values=jnp.asarray(cval).astype(x.dtype))
    return jnp.pad(x, widths, mode=_NUMPY_PAD_MODE[mode])


def _as_jax(images) -> jax.Array:
    """`jnp.asarray(images)`, refusing a host integer array that the canonical (x64 off: 32-bit)
    dtype would wrap."""
    if isinstance(images, (np.ndarray, np.generic)) and np.issubdtype(images.dtype, np.integer):
        target = jax.dtypes.canonicalize_dtype(images.dtype)
        if target != images.dtype and images.size:
            info = np.iinfo(target)
            lo, hi = images.min(), images.max()
            if lo < info.min or hi > info.max:
                raise ValueError(
                    f"images of dtype {images.dtype} hold values in [{lo}, {hi}], outside {target}'s "
                    f"[{info.min}, {info.max}] that JAX uses with x64 disabled: enable x64 "
                    "(jax.enable_x64) or rescale the images")
    return jnp.asarray(images)


def _rank_filter(images, footprint, *, is_erosion: bool, mode: str, cval) -> jax.Array:
    x = _as_jax(images)
    if x.ndim < 2:
        raise ValueError(f"images must be [..., H, W], got shape {x.shape}")
    fp = _odd_footprint(footprint)
    reduce: Callable = jnp.minimum if is_erosion else jnp.maximum
    (kh, kw), (h, w) = fp.shape, x.shape[-2:]
    padded = _pad(x, [(kh // 2, kh // 2), (kw // 2, kw // 2)], mode, cval, is_erosion=is_erosion)

    def over_taps(arr, taps, out_hw):
        out = None
        for i, j in taps:
            tap = arr[..., i:i + out_hw[0], j:j + out_hw[1]]
            out = tap if out is None else reduce(out, tap)
        return out

    if fp.all():  # a rectangle: rows, then columns (exact: the padded array is fixed)
        rows = over_taps(padded, [(i, 0) for i in range(kh)], (h, padded.shape[-1]))
        return over_taps(rows, [(0, j) for j in range(kw)], (h, w))
    return over_taps(padded, list(zip(*np.nonzero(fp))), (h, w))


def erosion(images: jax.Array, footprint, *, mode: str = "reflect", cval=0.0) -> jax.Array:
    """Grey-scale erosion of each image [..., H, W] by a flat footprint [kh, kw] (host array).

    Equal to `skimage.morphology.erosion(image, footprint, mode=mode, cval=cval)` per image, for
    bool, integer and float images; the input's dtype out, as JAX holds it (float64 only with x64
    enabled: see the module docstring, also for the semantics).
    """
    return _rank_filter(images, footprint, is_erosion=True, mode=mode, cval=cval)


def dilation(images: jax.Array, footprint, *, mode: str = "reflect", cval=0.0) -> jax.Array:
    """Grey-scale dilation of each image [..., H, W] by a flat footprint [kh, kw] (host array).

    Equal to `skimage.morphology.dilation(image, footprint, mode=mode, cval=cval)` per image (the
    footprint is not mirrored, as in skimage). The input's dtype out, as JAX holds it (see
    `erosion`).
    """
    return _rank_filter(images, footprint, is_erosion=False, mode=mode, cval=cval)


def opening(images: jax.Array, footprint, *, mode: str = "reflect", cval=0.0) -> jax.Array:
    """Erosion, then dilation by the mirrored footprint: `skimage.morphology.opening` per image.

    Removes bright structures that the footprint does not fit into. Shapes [..., H, W].
    """
    fp = _odd_footprint(footprint)
    eroded = erosion(images, fp, mode=mode, cval=cval)
    return dilation(eroded, fp[::-1, ::-1], mode=mode, cval=cval)


def closing(images: jax.Array, footprint, *, mode: str = "reflect", cval=0.0) -> jax.Array:
    """Dilation, then erosion by the mirrored footprint: `skimage.morphology.closing` per image.

    Fills dark gaps that the footprint does not fit into. Shapes [..., H, W].
    """
    fp = _odd_footprint(footprint)
    dilated = dilation(images, fp, mode=mode, cval=cval)
    return erosion(dilated, fp[::-1, ::-1], mode=mode, cval=cval)
