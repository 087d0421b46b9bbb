"""The config check, hunted with generated values (issue 29): every documented key (the trainer's,
`segjax/train/defaults.py`, and each registered task's declared sections), given a value of the
wrong type, None where it is not optional, NaN/inf or a value outside its declared range, makes
`check_config` fail with a ValueError naming `config.<key>`; values of the right type inside the
range pass.

The keys, their types and ranges are read from the declarations (`trainer_defaults()`,
`tasks.task_defaults`, `defaults.RANGES`, `tasks.task_ranges`) so that a key added there is
hunted here without editing this file. The expected type is the default's (a placeholder's
declared type), read here from ml_collections (`ConfigDict.get_type`).
"""

import copy
import math

import ml_collections
import pytest
from hypothesis import given, strategies as st

from experiments.configs.common import base_config
from segjax import tasks
from segjax.train import config_utils, defaults

TASKS = tasks.available_tasks()
# Keys validated against other tables or keys rather than on their own: `task` and
# `parallelism` by name (the registries), `imports` by importing them; they are still hunted
# with wrong types below.
_CROSS = {"dataset.min_scale", "dataset.max_scale", "eval.window", "eval.stride"}


def _leaves(node, prefix=""):
    for key in node.keys():
        value = node[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
            continue
        kind = node.get_type(key)  # a placeholder's declared type, else the default's
        yield f"{prefix}{key}", (None if kind is type(None) else kind), value


def _interval(spec):
    """Independent parse of "[a, b)" / "(a, b] or None"."""
    text, _, none = spec.partition(" or ")
    low, high = (float(v) for v in text[1:-1].split(","))
    return low, text[0] == "[", high, text[-1] == "]", none == "None"


def _declared():
    """[(task, key, type, default, interval or None)] for every declared key of every task."""
    out = []
    for task in TASKS:
        ranges = {**defaults.RANGES, **tasks.task_ranges(task)}
        seen = set()
        for node in (defaults.trainer_defaults(), tasks.task_defaults(task)):
            for key, kind, default in _leaves(node):
                if key in seen or kind is None:
                    continue
                seen.add(key)
                out.append((task, key, kind, default,
                            _interval(ranges[key]) if key in ranges else None))
    return out


DECLARED = _declared()
_BASE = {task: base_config(task) for task in TASKS}


def _with(task, key, value):
    c = copy.deepcopy(_BASE[task])
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    with node.ignore_type():
        node[leaf] = value
    return c


def _bad_values(kind, default, interval):
    """A strategy of values `check_config` must refuse for a key of this type and range."""
    options = []
    if kind is bool:
        options += [st.integers(0, 2), st.text(max_size=3), st.just(0.5)]
    elif kind is int:
        options += [st.booleans(), st.text(max_size=3),
                    st.floats(-1e3, 1e3).filter(lambda f: f != int(f)), st.just(2.0),
                    st.lists(st.integers(), max_size=2)]
    elif kind is float:
        # (a bool set on a float field is stored as 1.0/0.0 by ml_collections itself)
        options += [st.text(max_size=3), st.just(math.nan), st.just(math.inf),
                    st.just(-math.inf), st.lists(st.floats(), max_size=2)]
    elif kind is str:
        options += [st.integers(), st.floats(allow_nan=False), st.booleans(),
                    st.lists(st.text(max_size=2), max_size=2)]
    elif kind in (tuple, list):
        options += [st.integers(), st.booleans(), st.floats(allow_nan=False)]
    if default is not None and not (interval and interval[4]):
        options.append(st.none())
    if interval and kind in (int, float):
        low, low_closed, high, high_closed, _ = interval
        if math.isfinite(low):
            below = st.integers(int(low) - 1000, math.ceil(low) - 1) if kind is int else \
                st.floats(low - 1e3, low, exclude_max=low_closed)
            options.append(below)
        if math.isfinite(high):
            above = st.integers(math.floor(high) + 1, int(high) + 1000) if kind is int else \
                st.floats(high, high + 1e3, exclude_min=high_closed)
            options.append(above)
    return st.one_of(options)


def _good_values(kind, interval):
    if kind is bool:
        return st.booleans()
    if kind in (int, float):
        low, low_closed, high, high_closed, _ = interval or (-1e6, True, 1e6, True, False)
        low, high = max(low, -1e6), min(high, 1e6)
        if kind is int:
            return st.integers(math.ceil(low) + (0 if low_closed or low != int(low) else 1),
                               math.floor(high) - (0 if high_closed or high != int(high) else 1))
        return st.floats(low, high, exclude_min=not low_closed, exclude_max=not high_closed)
    return None


def _assert_refused(task, key, value):
    with pytest.raises(ValueError) as e:
        config_utils.check_config(_with(task, key, value))
    assert f"config.{key}" in str(e.value), (task, key, value, str(e.value))


def test_the_declarations_are_hunted():
    """The table covers every task, and the keys the issue named by hand are in it."""
    keys = {key for _, key, *_ in DECLARED}
    assert {t for t, *_ in DECLARED} == set(TASKS)
    assert {"batch_size", "seed", "optimizer.momentum", "dataset.crop_size", "eval.pad_to",
            "loss.label_smoothing", "oracle.eval_copies", "fewshot.ways",
            "embedding.delta_v", "instance.max_instances", "model.output_stride"} <= keys
    for task in TASKS:  # every range names a declared key (a misspelt range would check nothing)
        ranged = set(defaults.RANGES) | set(tasks.task_ranges(task))
        assert ranged <= {k for t, k, *_ in DECLARED if t == task}, task


def test_every_key_refuses_a_value_of_the_wrong_type_or_range():
    """Deterministic sweep: wrong-typed values, None (not optional), NaN and each range end for
    every declared key (the trainer's once, in the semantic task's config; each task's own)."""
    trainer = {key for key, _, _ in _leaves(defaults.trainer_defaults())}
    for task, key, kind, default, interval in DECLARED:
        if key in trainer and task != "semantic":
            continue
        bad = {bool: [1, "yes"], int: ["3", 2.5, True], float: ["0.5", [0.5], math.nan],
               str: [3, ["a"]], tuple: [3, True], list: [3]}.get(kind, [])
        if default is not None and not (interval and interval[4]):
            bad.append(None)
        if interval and kind in (int, float):
            low, low_closed, high, high_closed, _ = interval
            step = 1 if kind is int else 1e-3
            if math.isfinite(low):
                bad.append(kind(low if not low_closed else low - step))
            if math.isfinite(high):
                bad.append(kind(high if not high_closed else high + step))
        for value in bad:
            _assert_refused(task, key, value)


@given(st.data())
def test_generated_bad_values_are_refused_by_key(data):
    task, key, kind, default, interval = data.draw(st.sampled_from(DECLARED))
    value = data.draw(_bad_values(kind, default, interval))
    _assert_refused(task, key, value)


@given(st.data())
def test_values_of_the_declared_type_in_range_pass(data):
    """The check is not stricter than the declarations (keys whose default is None take part in
    cross-key rules, e.g. a loss option of another loss kind, and are left out)."""
    cases = [c for c in DECLARED if c[3] is not None and c[1] not in _CROSS
             and _good_values(c[2], c[4]) is not None]
    task, key, kind, default, interval = data.draw(st.sampled_from(cases))
    value = data.draw(_good_values(kind, interval))
    config_utils.check_config(_with(task, key, value))
