"""Strict JSON for everything segjax writes (DESIGN §4, "Bad input is hunted").

Python's `json` writes `NaN`, `Infinity` and `-Infinity` by default: not JSON (RFC 8259), so
`jq`, JavaScript and strict parsers reject the file. Every `json.dump`/`json.dumps` in segjax and
experiments/ that writes a file or a metrics line goes through `dumps`/`dump` here, which refuse
a non-finite number by naming where it is. A writer whose value can legitimately be undefined
converts it first, explicitly: `metrics.jsonl` writes NaN/inf as `null`
(`segjax.train.metric_writers`, with `finite_or_none`).

Example:
  >>> dump({"dice": 0.5}, "/tmp/report.json", indent=2)      # written whole (tmp + rename)
  >>> dumps({"dice": float("nan")})
  Traceback (most recent call last):
  ValueError: JSON value dice is nan: ...
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping


def nonfinite_path(obj: Any, path: str = "") -> tuple[str, float] | None:
    """`(dotted path, value)` of the first NaN/inf float in `obj` (dicts, lists, tuples,
    numpy scalars and arrays), or None when every number is finite."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            found = nonfinite_path(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = nonfinite_path(v, f"{path}[{i}]")
            if found:
                return found
        return None
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return nonfinite_path(obj.tolist(), path)
    if isinstance(obj, float) and not math.isfinite(obj):
        return (path or "<top level>", obj)
    return None


def finite_or_none(value: Any) -> Any:
    """A JSON-ready copy: numpy/jax scalars and arrays to Python, NaN/inf to None (`null`).

    For writers where a number can legitimately be undefined (a metric of an empty class);
    readers take `null` as "undefined"."""
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if hasattr(value, "tolist"):
        return finite_or_none(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(obj: Any, *, where: str = "", **kwargs) -> str:
    """`json.dumps(obj, allow_nan=False, **kwargs)`, whose refusal names the key.

    Raises:
      ValueError: `obj` holds NaN or inf, naming its dotted path (and `where`, e.g. the file).
    """
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError as e:
        found = nonfinite_path(obj)
        if found is None:
            raise
        key, value = found
        raise ValueError(f"{where + ': ' if where else ''}JSON value {key} is {value}: strict "
                         "JSON has no NaN/inf (a number that can be undefined must be written "
                         "as null by its writer)") from e


def dump(obj: Any, path: str, *, end: str = "", **kwargs) -> None:
    """Writes `obj` to `path` as strict JSON (`dumps`) followed by `end`, whole or not at all:
    the text is built first, then written to `path.tmp` and renamed (a refused value leaves no
    file behind)."""
    text = dumps(obj, where=path, **kwargs) + end
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
