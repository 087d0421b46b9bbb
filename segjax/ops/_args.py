"""Argument normalisation and validation shared by the `segjax.ops` modules (private)."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np


_TUPLE_NAMES = {2: "pair", 3: "triple"}


def ints(value, n: int, name: str) -> tuple[int, ...]:
    """Returns `value` as `n` Python ints (an int is repeated); raises ValueError otherwise."""
    if isinstance(value, (int, jnp.integer)) and not isinstance(value, bool):
        return (int(value),) * n
    if isinstance(value, Sequence) and len(value) == n and all(
        isinstance(v, (int, jnp.integer)) and not isinstance(v, bool) for v in value
    ):
        return tuple(int(v) for v in value)
    what = _TUPLE_NAMES.get(n, f"{n}-tuple")
    raise ValueError(f"{name} must be an int or a {what} of ints, got {value!r}")


def positive_ints(value, n: int, name: str) -> tuple[int, ...]:
    """Like `ints`, and every entry must be >= 1."""
    p = ints(value, n, name)
    if min(p) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return p


def non_negative_ints(value, n: int, name: str) -> tuple[int, ...]:
    """Like `ints`, and every entry must be >= 0."""
    p = ints(value, n, name)
    if min(p) < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return p


def pair(value, name: str) -> tuple[int, int]:
    """`ints(value, 2, name)`: a pair of Python ints (an int is repeated)."""
    return ints(value, 2, name)


def positive_pair(value, name: str) -> tuple[int, int]:
    """Like `pair`, and every entry must be >= 1."""
    return positive_ints(value, 2, name)


def non_negative_pair(value, name: str) -> tuple[int, int]:
    """Like `pair`, and every entry must be >= 0."""
    return non_negative_ints(value, 2, name)


def check_rank(x, rank: int, name: str, layout: str) -> None:
    """Raises ValueError unless `x` has `rank` dimensions (`layout` names them in the message)."""
    if np.ndim(x) != rank:
        raise ValueError(f"{name} must have rank {rank} ({layout}), got shape {np.shape(x)}")


def check_floating(x, name: str) -> None:
    """Raises ValueError unless `x` has a floating dtype."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {jnp.result_type(x)}")
