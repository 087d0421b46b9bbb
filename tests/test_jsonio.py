"""segjax.jsonio: the JSON segjax writes is strict (no NaN/Infinity), refusals name the key and
leave no file, finite values are written byte for byte as `json.dump` wrote them; no writer in
segjax/ or experiments/ bypasses it; metrics.jsonl writes NaN as null."""

import ast
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from segjax import jsonio

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _strict_load(text):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=5),
                  st.floats(allow_nan=True, allow_infinity=True))
_json = st.recursive(_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=4), kids, max_size=4)),
    max_leaves=12)


def _nonfinite_paths(x, path=""):
    """Independent enumeration of every non-finite float's path (the first is reported)."""
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _nonfinite_paths(v, f"{path}.{k}" if path
                                                                   else str(k))]
    if isinstance(x, list):
        return [p for i, v in enumerate(x) for p in _nonfinite_paths(v, f"{path}[{i}]")]
    return [path or "<top level>"] if isinstance(x, float) and not math.isfinite(x) else []


@given(_json)
def test_dumps_is_json_dumps_or_names_the_first_nonfinite_value(value):
    bad = _nonfinite_paths(value)
    if not bad:
        text = jsonio.dumps(value, indent=1, sort_keys=True)
        assert text == json.dumps(value, indent=1, sort_keys=True)  # the same bytes as before
        assert _strict_load(text) == value
    else:
        with pytest.raises(ValueError, match="strict JSON") as e:
            jsonio.dumps(value, where="f.json")
        assert str(e.value).startswith(f"f.json: JSON value {bad[0]} is ")
        assert jsonio.nonfinite_path(value)[0] == bad[0]


def test_numpy_values_and_dump_leaves_no_file(tmp_path):
    path = tmp_path / "report.json"
    with pytest.raises(ValueError, match=r"zeros\.dice_before is nan"):
        jsonio.dump({"zeros": {"dice_before": np.float64("nan")}}, str(path), indent=2)
    assert os.listdir(tmp_path) == []  # neither the file nor its .tmp
    with pytest.raises(ValueError, match=r"curve\[1\] is -inf"):
        jsonio.dumps({"curve": [0.5, -math.inf]})
    jsonio.dump({"a": [1, 0.25]}, str(path), indent=2, end="\n")
    assert path.read_text() == json.dumps({"a": [1, 0.25]}, indent=2) + "\n"
    assert os.listdir(tmp_path) == ["report.json"]
    assert jsonio.finite_or_none({"a": np.array([1.5, np.nan]), "b": (np.inf, 2)}) == {
        "a": [1.5, None], "b": [None, 2]}


def test_metrics_jsonl_writes_nan_as_null(tmp_path):
    from segjax.train.metric_writers import MetricWriter, read_metrics

    writer = MetricWriter(str(tmp_path), tensorboard=False)
    writer.write(3, "validation", {"miou": float("nan"), "iou_per_class": np.array([0.5, np.inf]),
                                   "loss": np.float32(0.25)})
    writer.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert _strict_load(text) == {"step": 3, "split": "validation", "miou": None,
                                  "iou_per_class": [0.5, None], "loss": 0.25}
    assert read_metrics(str(tmp_path))[0]["miou"] is None


def _json_writes(tree):
    """(line, call) of every json.dump / json.dumps call in a module."""
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("dump", "dumps") and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "json"):
            out.append((node.lineno, ast.unparse(node)))
    return out


def test_no_writer_bypasses_jsonio():
    """Every json.dump/dumps in segjax/ and experiments/ goes through segjax.jsonio (strict);
    the one exception hashes a config in memory (sweep's cell key) and writes nothing."""
    allowed = {("segjax/train/sweep.py",
                "json.dumps(_without_neutral(config.to_dict()), sort_keys=True, default=repr)")}
    found = []
    for top in ("segjax", "experiments"):
        for root, _, names in os.walk(os.path.join(REPO, top)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    rel = os.path.relpath(path, REPO)
                    if rel == "segjax/jsonio.py":
                        continue
                    with open(path) as f:
                        tree = ast.parse(f.read())
                    found += [(rel, call) for _, call in _json_writes(tree)]
    assert set(found) <= allowed, sorted(set(found) - allowed)
