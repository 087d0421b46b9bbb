"""The table of per-pixel losses that the semantic task and the config check dispatch on.

A loss is added in one place, from inside segjax or from the user's own module:

    @segjax.losses.register("my_loss")
    def my_loss(logits, labels, *, ignore_label, valid_mask=None, weight=1.0):
        ...
        return total, count

after which `config.loss.kind="my_loss"` trains with it (its other keyword arguments are
`config.loss.<keyword>` fields). A loss that ranks pixels over the whole batch (OHEM's
thresholds) registers with `gathers=True`: the semantic task then passes it
`gather=StepContext.all_gather`, which maps this device's per-image arrays to the global batch's,
so that 1 or N devices select the same pixels (DESIGN: whole-batch losses see the whole batch).
"""

from __future__ import annotations

import inspect
from typing import Callable

import jax

Pair = tuple[jax.Array, jax.Array]
LossFn = Callable[..., Pair]

# name -> f(logits, labels, *, ignore_label, valid_mask=None, ...) -> (sum, count). Filled only
# by `register`; read it, never write it.
LOSSES: dict[str, LossFn] = {}
_GATHERING: set[str] = set()


def _takes(fn: Callable, name: str) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def register(name: str, *, gathers: bool = False) -> Callable[[LossFn], LossFn]:
    """Decorator adding a per-pixel loss to `LOSSES` under `name` (unique).

    Args:
      name: the `config.loss.kind` that selects the loss.
      gathers: the loss ranks or selects pixels over the whole batch and takes a keyword
        `gather` (a function mapping this device's per-image arrays to the global batch's, e.g.
        `StepContext.all_gather`); the semantic task passes it.

    The decorated `f(logits [..., K], labels [...], *, ignore_label, valid_mask=None, ...)`
    returns `(sum, count)` (see `segjax.losses.pixel`); it is returned unchanged.

    Raises:
      ValueError: `name` is already registered, or `f` does not take the keywords
        `ignore_label` and `valid_mask` (and `gather` when `gathers`).
    """

    def decorator(fn: LossFn) -> LossFn:
        if name in LOSSES:
            old = LOSSES[name]
            raise ValueError(f"loss {name!r} is registered twice (first by "
                             f"{old.__module__}.{getattr(old, '__qualname__', old)})")
        needed = ("ignore_label", "valid_mask") + (("gather",) if gathers else ())
        missing = [k for k in needed if not _takes(fn, k)]
        if missing:
            raise ValueError(f"loss {name!r}: {getattr(fn, '__qualname__', fn)} must take the "
                             f"keyword argument(s) {missing}")
        LOSSES[name] = fn
        if gathers:
            _GATHERING.add(name)
        return fn

    return decorator


def gathers(name: str) -> bool:
    """Whether the registered loss `name` takes `gather` (ranks pixels over the whole batch).

    Raises:
      ValueError: `name` is not registered (lists the registered ones).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss kind {name!r}; choose one of {sorted(LOSSES)}")
    return name in _GATHERING
