r"""Where a compiled train or eval step spends its time, per layer and per kind of HLO op.

    python -m experiments.benchmarks.profile_step --model=deeplabv3_resnet50 --batch=4 --size=256 \
      --mode=train [--top=30]

Traces two steps with `jax.profiler` (a Perfetto trace), sums each HLO instruction's thunk time,
and attributes it to the model path in the compiled HLO's `op_name` metadata (forward or
backward, e.g. `bwd ynn_fusion layer4/conv3/dot_general`). Prints ms per step. Needs no
TensorFlow; instructions without metadata (e.g. XLA's kernel-gradient convolutions) show as "?".
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile

import jax
from absl import app, flags

from experiments.benchmarks import step_bench

_STEPS = 2


def op_names(hlo_text: str) -> dict[str, str]:
    """{instruction name: op_name metadata} of a compiled HLO module's text."""
    pattern = r"^\s*(?:ROOT )?%([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]+)\""
    return {m.group(1): m.group(2) for m in re.finditer(pattern, hlo_text, re.M)}


def layer_key(instruction: str, op_name: str | None) -> str:
    """'fwd|bwd KIND path' with the jit/jvp/transpose wrappers and block indices dropped."""
    kind = re.sub(r"[.\d]+$", "", instruction)
    if op_name is None:
        return f"?   {kind:24s} ?"
    direction = "bwd" if "transpose(jvp" in op_name else "fwd"
    path = re.sub(r"jit\([^)]*\)/|transpose\(|jvp\(|\)", "", op_name)
    parts = [p for p in path.split("/") if p and not p.isdigit()]
    return f"{direction} {kind:24s} {'/'.join(parts[1:])}"


def thunk_times(trace_dir: str) -> collections.Counter:
    """Total microseconds per trace event name in the Perfetto trace under `trace_dir`."""
    path = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    times = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            times[e["name"]] += e["dur"]
    return times


def main(argv):
    del argv
    flags_ = flags.FLAGS
    model, data, _ = step_bench.setup(flags_.model, flags_.batch, flags_.size, flags_.dtype,
                                      flags_.num_classes)
    build = step_bench._segjax_train if flags_.mode == "train" else step_bench._segjax_eval
    run, _, flops, hlo = build(model, data, with_hlo=True)
    run()
    names = op_names(hlo)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(_STEPS):
                run()
        times = thunk_times(d)
    by_layer, by_kind = collections.Counter(), collections.Counter()
    for name, us in times.items():
        if name.startswith("$") or " " in name or "::" in name or "(" in name:
            continue  # Python frames and runtime bookkeeping
        by_layer[layer_key(name, names.get(name))] += us / _STEPS / 1e3
        by_kind[re.sub(r"[.\d]+$", "", name)] += us / _STEPS / 1e3
    total = sum(by_kind.values())
    print(f"{flags_.mode}: {flags_.model} batch={flags_.batch} size={flags_.size}: "
          f"{total:.0f} ms of ops per step, {flops / 1e9:.1f} GFLOP")
    print("\n| ms/step | kind |\n|---:|---|")
    for kind, ms in by_kind.most_common(12):
        print(f"| {ms:.1f} | {kind} |")
    print("\n| ms/step | direction, kind, layer |\n|---:|---|")
    for key, ms in by_layer.most_common(flags_.top):
        print(f"| {ms:.1f} | {key} |")


if __name__ == "__main__":
    # Flags are defined here, not at import, so that tests can import the helpers above.
    step_bench.define_step_flags()
    flags.DEFINE_enum("mode", "train", ["train", "eval"], "Which step to profile.")
    flags.DEFINE_integer("top", 30, "Rows of the per-layer table.")
    app.run(main)
