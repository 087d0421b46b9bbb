"""Initialising a run from pretrained weights (`config.init_from`).

`load_pretrained` reads converted torchvision weights (`python -m segjax.tools.convert_torchvision`)
or another segjax run's newest checkpoint; `merge_pretrained` puts them into a freshly initialised
model strictly: never silently partial, only class layers of another label set re-initialised.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np

from segjax.train.workdir import CONFIG_FILE


def merge_pretrained(variables: dict, converted: dict, *, num_classes: int | None = None) -> dict:
    """`variables` with converted pretrained weights put in; strict, never silently partial.

    A converted backbone (no top-level "backbone" key, while the model has one) replaces the
    model's "backbone" subtree (`torchvision_import.merge_backbone`: names and shapes must match
    exactly). A converted whole model must match the model leaf for leaf; the only leaves allowed
    to differ are those whose shapes differ just in a last axis equal to `num_classes` (the class
    layers of a model converted for another label set): they keep their fresh initialisation and
    are named in a printed message.

    Raises:
      ValueError: listing converted leaves the model lacks, model leaves the checkpoint lacks, or
        shape mismatches other than the class layers.
    """
    from flax import traverse_util

    from segjax.models import torchvision_import

    has_backbone = "backbone" in variables.get("params", {})
    if has_backbone and "backbone" not in converted.get("params", {}):
        return torchvision_import.merge_backbone(variables, converted)

    out, missing, unexpected, bad, reinit = {}, [], [], [], []
    for collection in sorted(set(variables) | set(converted)):
        flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables.get(collection, {})))
        src = traverse_util.flatten_dict(converted.get(collection, {}))
        name = lambda path: f"{collection}/" + "/".join(map(str, path))  # noqa: E731
        unexpected += [name(p) for p in src if p not in flat]
        missing += [name(p) for p in flat if p not in src]
        for path, value in src.items():
            if path not in flat:
                continue
            value = np.asarray(value)
            old = flat[path]
            if old.shape == value.shape:
                flat[path] = value.astype(old.dtype)
            elif (num_classes is not None and old.ndim == value.ndim and old.shape[-1] == num_classes
                  and old.shape[:-1] == value.shape[:-1]):
                reinit.append(name(path))
            else:
                bad.append(f"{name(path)}: checkpoint {value.shape} vs model {old.shape}")
        out[collection] = traverse_util.unflatten_dict(flat)
    if missing or unexpected or bad:
        raise ValueError(
            "config.init_from does not match the model (use a checkpoint converted for this "
            f"architecture): missing {missing[:10]}, unexpected {unexpected[:10]}, "
            f"shape mismatches {bad[:10]}")
    if reinit:
        print(f"init_from: class layers re-initialised for {num_classes} classes: {reinit}",
              flush=True)
    return out


def load_pretrained(path: str) -> dict:
    """`{"params", "batch_stats"}` to initialise from (`config.init_from`).

    `path` is either a directory written by `python -m segjax.tools.convert_torchvision`
    (torchvision weights) or the work directory of another segjax training run, whose newest
    checkpoint is used (transfer learning between datasets or configs; class layers of another
    label set are re-initialised by `merge_pretrained`).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.init_from={path!r} is not a directory (a training work "
                                "dir, or one written by `python -m segjax.tools.convert_torchvision`)")
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        from segjax.train.restore import load_run

        variables = load_run(path, "latest").variables
        print(f"init_from: the newest checkpoint of the training run in {path}", flush=True)
        return jax.tree.map(np.asarray, variables)
    from segjax.models import torchvision_import

    return torchvision_import.load_converted(path)


def initializer(config, num_classes: int) -> Callable[[dict], dict] | None:
    """The `init` of `segjax.train.build.create_state` for `config.init_from`: fresh variables
    -> the pretrained weights merged in (`merge_pretrained`); None when it is "" (scratch)."""
    if not config.get("init_from"):
        return None

    def init(variables: dict) -> dict:
        return merge_pretrained(variables, load_pretrained(config.init_from),
                                num_classes=num_classes)

    return init
