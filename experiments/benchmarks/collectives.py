"""Collective accounting: what a data-parallel train step sends between devices, read from XLA.

`step_collectives(...)` compiles segjax's real train step (`segjax.train.parallel`) for a model,
per-device batch, image size, parallelism ("pmap" or "mesh") and device count on host devices
and reads every collective from the optimized HLO text (`hlo_collectives`): all-reduce,
all-gather, reduce-scatter, collective-permute, all-to-all (sync and async `-start` forms).

Byte convention (per device, per step): `operand_bytes` is what one device puts into the
collective -- the buffer it reduces (all-reduce), its own shard (all-gather), the buffer it
reduce-scatters, what it sends (permute, all-to-all). `result_bytes` is what it gets back (for
all-gather: N times its shard). XLA's all-reduce combiner (it runs on CPU too) packs several
arrays into one tuple-shaped all-reduce; `count` counts HLO collectives, `buffers` the arrays in
them. Collectives inside loop bodies are counted once (segjax's train steps have none).

What a step moves, measured on this backend (tests/benchmarks/test_collectives.py):
  * the gradient all-reduce: exactly the parameter bytes (float32 parameters -> float32
    gradients);
  * synchronised BatchNorm: per BN layer 4 all-reduces of C float32 (forward mean and variance,
    and the two reductions of their backward pass) = 2 x the bytes of its `batch_stats`
    (mean + var); pmap (explicit `pmean`) and mesh (GSPMD partitioning the batch reductions)
    move the same bytes;
  * less C float32 per residual block whose shortcut has a BatchNorm (ResNet's downsampling
    blocks): the add hands both branches' last BN the same cotangent, so their bias-gradient
    sums are one computation and XLA all-reduces it once (DeepLabV3-R101: 3840 floats fewer);
  * the loss: float32 scalars (global sum and count, the aux head's count);
  * OHEM with `min_kept`: an all-gather of one float32 per pixel of the local batch (the
    global threshold; mesh adds one int32 count).

The gradient bytes do not depend on the image size (the parameters don't); BatchNorm's and the
loss's don't either; only gathers of per-pixel values do.

Example:
  acc = step_collectives("deeplabv3plus_resnet18", per_device_batch=2, size=33,
                         parallelism="pmap", num_devices=2, overrides={"backbone_width": 8})
  acc.by_kind()["all-reduce"]["bytes"], acc.param_bytes
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Iterable, Mapping

import numpy as np

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
                    "all-to-all")

# Bytes per element of HLO primitive types.
_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "token": 0,
}
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One array of a collective: HLO dtype, shape, bytes."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(_DTYPE_BYTES[self.dtype] * int(np.prod(self.shape, dtype=np.int64)))


@dataclasses.dataclass
class CollectiveOp:
    """One collective instruction of the optimized HLO.

    Attributes:
      kind: one of COLLECTIVE_KINDS.
      name: the HLO instruction name.
      operands: the arrays this device contributes (a combined all-reduce has several).
      results: the arrays it receives.
      group_size: devices per replica group, when the HLO states it plainly (else None).
      op_name: the `metadata={op_name=...}` of the instruction (the JAX op it came from).
    """

    kind: str
    name: str
    operands: list[Buffer]
    results: list[Buffer]
    group_size: int | None = None
    op_name: str = ""

    @property
    def operand_bytes(self) -> int:
        return sum(b.nbytes for b in self.operands)

    @property
    def result_bytes(self) -> int:
        return sum(b.nbytes for b in self.results)


def _arrays(type_str: str) -> list[Buffer]:
    return [Buffer(d, tuple(int(x) for x in dims.split(",") if x))
            for d, dims in _ARRAY.findall(type_str) if d in _DTYPE_BYTES]


def _balanced(text: str, start: int) -> int:
    """Index just past the parenthesis group opening at text[start] == '('."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f"unbalanced parentheses in HLO line: {text[:200]}")


def _parse_instruction(line: str) -> tuple[str, str, str, list[str], str] | None:
    """(name, result type, opcode, operand names, rest) of one HLO instruction line, or None."""
    m = _DEF.match(line)
    if not m:
        return None
    name, pos = m.group(1), m.end()
    if pos < len(line) and line[pos] == "(":  # tuple-shaped result
        end = _balanced(line, pos)
    else:
        end = line.find(" ", pos)
        if end < 0:
            return None
    type_str = line[pos:end]
    rest = line[end:].lstrip()
    m = re.match(r"([\w\-]+)\(", rest)
    if not m:
        return None
    opcode = m.group(1)
    close = _balanced(rest, m.end() - 1)
    operand_text = rest[m.end():close - 1]
    operands = re.findall(r"%([\w.\-]+)", operand_text)
    return name, type_str, opcode, operands, rest[close:]


def _group_size(attrs: str) -> int | None:
    m = re.search(r"replica_groups=\{\{([0-9,]+)\}", attrs)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]", attrs)  # iota form [groups,size]<=[...]
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)  # mesh[...] {axes}
    if m:
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
        axes = re.findall(r"'(\w+)'", m.group(2))
        if axes and all(a in sizes for a in axes):
            return int(np.prod([int(sizes[a]) for a in axes]))
    return None


def hlo_collectives(hlo_text: str) -> list[CollectiveOp]:
    """Every collective of an HLO module's text (`compiled.as_text()`), in text order.

    Synchronous ops (`all-reduce(...)`) and async pairs (`all-reduce-start` ... `-done`, counted
    once at the start) are read; operand arrays are looked up by name among the module's
    instruction definitions (the optimized text prints operands without their types).
    """
    types: dict[str, str] = {}
    parsed = []
    for line in hlo_text.splitlines():
        inst = _parse_instruction(line)
        if inst is None:
            continue
        types[inst[0]] = inst[1]
        parsed.append(inst)
    ops = []
    for name, type_str, opcode, operands, attrs in parsed:
        kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
        if kind not in COLLECTIVE_KINDS:
            continue
        in_arrays = [b for o in operands for b in _arrays(types.get(o, ""))]
        out_arrays = _arrays(type_str)
        if opcode.endswith("-start"):
            # Async results are tuples ((operands), (results), contexts...): keep the results.
            n_in = len(in_arrays)
            out_arrays = out_arrays[n_in:2 * n_in] if kind != "all-reduce" else out_arrays
            if kind == "collective-permute":
                out_arrays = [b for b in out_arrays if b.dtype != "u32"] or out_arrays
        m = _OP_NAME.search(attrs)
        ops.append(CollectiveOp(kind=kind, name=name, operands=in_arrays, results=out_arrays,
                                group_size=_group_size(attrs), op_name=m.group(1) if m else ""))
    return ops


def tree_bytes(tree: Any) -> int:
    """Total bytes of the array leaves of a pytree."""
    import jax

    return int(sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes
                   for x in jax.tree.leaves(tree)))


@dataclasses.dataclass
class Accounting:
    """The collectives of one compiled train step, and the model's parameter/statistics bytes.

    Attributes:
      ops: every collective (see `hlo_collectives`).
      param_bytes: bytes of the trainable parameters (one replica).
      batch_stats_bytes: bytes of the BatchNorm running statistics (mean + var, one replica).
      param_shapes: (dtype, shape) of every parameter, for `split_all_reduce`.
      config: what was compiled (model, batch, size, parallelism, devices, ...).
    """

    ops: list[CollectiveOp]
    param_bytes: int
    batch_stats_bytes: int
    param_shapes: list[tuple[str, tuple[int, ...]]]
    config: dict

    def by_kind(self) -> dict[str, dict[str, int]]:
        """{kind: {"count", "buffers", "bytes" (operand, per device), "result_bytes"}} for
        every kind in COLLECTIVE_KINDS (zeros when absent)."""
        out = {k: {"count": 0, "buffers": 0, "bytes": 0, "result_bytes": 0}
               for k in COLLECTIVE_KINDS}
        for op in self.ops:
            d = out[op.kind]
            d["count"] += 1
            d["buffers"] += len(op.operands)
            d["bytes"] += op.operand_bytes
            d["result_bytes"] += op.result_bytes
        return out

    @property
    def total_bytes(self) -> int:
        """Bytes each device puts into collectives per step (sum of operand bytes)."""
        return sum(op.operand_bytes for op in self.ops)

    def split_all_reduce(self) -> dict[str, Any]:
        """The all-reduce buffers split into gradients and the rest (BatchNorm, loss scalars).

        A buffer is counted as a gradient when it has the dtype and shape of a parameter not yet
        matched (a multiset match; BatchNorm's [C] statistics and its [C] scale/bias gradients
        share a shape, so which [C] buffer is called which is arbitrary, the totals are not).

        Returns:
          {"gradient_bytes", "gradient_ops" (all-reduces holding a gradient),
           "other_bytes", "other_buffers" ([nbytes] of the non-gradient buffers),
           "other_ops" ([nbytes of non-gradient buffers] per all-reduce holding any),
           "unmatched_params" (parameters with no gradient buffer: 0 when every gradient is
           all-reduced)}.
        """
        want = collections.Counter(self.param_shapes)
        grad_bytes, other, grad_ops, other_ops = 0, [], 0, []
        for op in self.ops:
            if op.kind != "all-reduce":
                continue
            has_grad, op_other = False, []
            for b in op.operands:
                key = (b.dtype, b.shape)
                if want[key] > 0:
                    want[key] -= 1
                    grad_bytes += b.nbytes
                    has_grad = True
                else:
                    op_other.append(b.nbytes)
            grad_ops += has_grad
            other.extend(op_other)
            if op_other:
                other_ops.append(op_other)
        return {"gradient_bytes": grad_bytes, "gradient_ops": grad_ops,
                "other_bytes": sum(other), "other_buffers": other, "other_ops": other_ops,
                "unmatched_params": sum(want.values())}

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (config, per-kind table, totals, the all-reduce split)."""
        split = self.split_all_reduce()
        return {**self.config, "param_bytes": self.param_bytes,
                "batch_stats_bytes": self.batch_stats_bytes,
                "collective_bytes_per_step": self.total_bytes, "by_kind": self.by_kind(),
                "gradient_bytes": split["gradient_bytes"],
                "gradient_all_reduces": split["gradient_ops"],
                "other_all_reduce_bytes": split["other_bytes"],
                "other_all_reduces": len(split["other_ops"]),
                "ops": [{"kind": o.kind, "operand_bytes": o.operand_bytes,
                         "buffers": len(o.operands), "op_name": o.op_name} for o in self.ops]}

    def table(self) -> str:
        """Markdown table of `by_kind` plus the parameter bytes."""
        lines = ["| collective | count | buffers | bytes/device/step | result bytes |",
                 "|---|---:|---:|---:|---:|"]
        for kind, d in self.by_kind().items():
            if d["count"]:
                lines.append(f"| {kind} | {d['count']} | {d['buffers']} | {d['bytes']:,} | "
                             f"{d['result_bytes']:,} |")
        split = self.split_all_reduce()
        lines.append(f"\nparameters {self.param_bytes:,} B; all-reduced gradients "
                     f"{split['gradient_bytes']:,} B; other all-reduced buffers "
                     f"{split['other_bytes']:,} B in {len(split['other_ops'])} all-reduces "
                     f"(BatchNorm statistics {self.batch_stats_bytes:,} B)")
        return "\n".join(lines)


def _devices(num_devices: int, devices: Iterable | None):
    import jax

    if devices is not None:
        devices = list(devices)
    elif jax.device_count() >= num_devices:
        devices = jax.devices()[:num_devices]
    else:
        devices = jax.devices("cpu")[:num_devices]
    if len(devices) < num_devices:
        raise ValueError(
            f"{num_devices} devices asked, {len(devices)} present: set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={num_devices} before JAX is imported")
    return devices


def train_step_hlo(model, *, per_device_batch: int, size: int, parallelism: str,
                   num_devices: int, num_classes: int = 21, task=None,
                   devices: Iterable | None = None) -> tuple[str, dict]:
    """(optimized HLO text, variables as zeros) of segjax's train step for `model` (a flax module).

    The step is built as the benchmarks build it (SGD momentum, `common.semantic_task` unless a
    `task` is given) and compiled for `num_devices` devices (the default backend's when it has
    that many, else host CPU devices) on a synthetic batch of `per_device_batch` images of
    `size`² per device.
    """
    import jax

    from experiments.benchmarks import common
    from segjax.train import optim, parallel, state as state_lib

    devices = _devices(num_devices, devices)
    par = parallel.Parallel(parallelism, devices=devices)
    shape = (1, size, size, 3)
    # The values do not change the program: zeros of the variables' shapes (no init compile).
    abstract = jax.eval_shape(lambda: state_lib.init_variables(model, jax.random.key(0), shape))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    tx, _ = optim.create_optimizer(variables["params"], base_lr=1e-3, num_steps=1000,
                                   momentum=0.9)
    host = state_lib.create_train_state(model, None, shape, tx, variables=variables)
    task = task or common.semantic_task(num_classes)
    step = par.train_step(task)
    batch = par.shard_batch(common.synthetic_batch(num_devices * per_device_batch, size,
                                                   num_classes))
    text = step.lower(par.replicate(host), batch, jax.random.key(1)).compile().as_text()
    return text, variables


def step_collectives(model: str | Any, *, per_device_batch: int, size: int,
                     parallelism: str = "pmap", num_devices: int = 2, num_classes: int = 21,
                     overrides: Mapping[str, Any] | None = None, task=None,
                     devices: Iterable | None = None) -> Accounting:
    """The collectives of segjax's compiled train step (see the module docstring).

    Args:
      model: a registered model name (built with `create_model(name, num_classes=...,
        **overrides)`) or a flax module.
      per_device_batch, size: images per device and their square size.
      parallelism: "pmap" or "mesh".
      num_devices: devices the step is compiled for.
      task: the task (default `common.semantic_task(num_classes)`, cross-entropy).
    """
    import jax

    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        from segjax.models import create_model

        model = create_model(model, num_classes=num_classes, **dict(overrides or {}))
    text, variables = train_step_hlo(model, per_device_batch=per_device_batch, size=size,
                                     parallelism=parallelism, num_devices=num_devices,
                                     num_classes=num_classes, task=task, devices=devices)
    leaves = jax.tree.leaves(variables["params"])
    shapes = [(_hlo_dtype(x.dtype), tuple(x.shape)) for x in leaves]
    config = {"model": name, "per_device_batch": per_device_batch, "size": size,
              "parallelism": parallelism, "num_devices": num_devices,
              "overrides": dict(overrides or {}), "backend": jax.default_backend()}
    return Accounting(ops=hlo_collectives(text), param_bytes=tree_bytes(variables["params"]),
                      batch_stats_bytes=tree_bytes(variables["batch_stats"]),
                      param_shapes=shapes, config=config)


def _hlo_dtype(dtype: Any) -> str:
    """numpy/JAX dtype -> HLO primitive type name (float32 -> f32, bfloat16 -> bf16, ...)."""
    name = np.dtype(dtype).name
    table = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
             "int32": "s32", "int64": "s64", "int8": "s8", "uint8": "u8", "uint32": "u32",
             "bool": "pred"}
    return table.get(name, name)
