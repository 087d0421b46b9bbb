"""The decks' worked example and the JSON form of the figure data, shared by every figure."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


# The decks' worked example (figure 1).
DECK_INPUT = ((4, 5, 8, 7), (1, 8, 8, 8), (3, 6, 6, 4), (6, 5, 7, 8))
DECK_KERNEL = ((1, 4, 1), (1, 4, 3), (3, 3, 1))
DECK_OUTPUT_GRADIENT = (2, 1, 4, 4)  # the 2x2 "output" the transposed convolution maps back


def _plane(a) -> jax.Array:
    """A 2-D array as one NHWC image [1, H, W, 1] (float32)."""
    return jnp.asarray(a, jnp.float32)[None, :, :, None]


def _kernel(a) -> jax.Array:
    """A 2-D array as a one-channel HWIO kernel [kh, kw, 1, 1] (float32)."""
    return jnp.asarray(a, jnp.float32)[:, :, None, None]


def _unplane(x) -> np.ndarray:
    return np.asarray(x)[0, :, :, 0]


def to_json(value: Any, digits: int = 4) -> Any:
    """`value` with arrays as nested lists; integral floats become ints, others are rounded."""
    if isinstance(value, dict):
        return {str(k): to_json(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, digits) for v in value]
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype == bool:
            return arr.tolist()
        if np.issubdtype(arr.dtype, np.integer):
            return arr.astype(np.int64).tolist()
        if np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr)):
            return np.round(arr).astype(np.int64).tolist()
        return np.round(arr.astype(np.float64), digits).tolist()
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, digits)
    return value


def shapes_config(name: str):
    """The `synthetic_shapes` builder config called `name` ("clean", "restyled", ...)."""
    from segjax.data.builders.synthetic_shapes import BUILDER_CONFIGS

    return next(c for c in BUILDER_CONFIGS if c.name == name)
