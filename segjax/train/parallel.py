"""Data parallelism for the pure steps: `jax.pmap` or `jax.jit` over a device mesh, multi-host.

Both modes take the same process-local batches (`[B_local, ...]` per leaf) and the same host
`TrainState`, and give the same results (proved in tests/train/test_parallel.py):

  pmap: state stacked on the local devices ([n_local, ...]); the batch reshaped to
    [n_local, B_local / n_local, ...]; the step runs with `axis_name` so loss sums, counts,
    gradients and BatchNorm statistics are reduced over all devices (of all processes).
  mesh: a 1-D `Mesh` over all devices with axis "batch"; state replicated (`P()`), the batch one
    global array sharded on its first axis (`P("batch")`) built with
    `jax.make_array_from_process_local_data`; plain `jax.jit` with axis_name=None.

Evaluation runs through the same class (`eval_step`), so the code proven equal under pmap and
mesh is the code that runs.

Example:
  par = Parallel(config.parallelism)    # PmapParallel or MeshParallel
  state = par.replicate(state)          # host TrainState -> device layout
  step = par.train_step(task, learning_rate_fn=schedule)
  state, metrics = step(state, par.shard_batch(batch), rng)
  host_state = par.unreplicate(state)   # numpy leaves, e.g. for a checkpoint
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from segjax.tasks.base import Task
from segjax.train import steps
from segjax.train.state import TrainState

AXIS = "batch"


def _with_axis(state: TrainState, axis_name: str | None) -> TrainState:
    """`state` whose apply_fn is the same model with BatchNorm synchronised over `axis_name`."""
    module = getattr(state.apply_fn, "__self__", None)
    if module is None:
        raise ValueError(f"state.apply_fn must be a flax module's bound `apply`, got "
                         f"{state.apply_fn!r}")
    if not hasattr(module, "axis_name"):
        if axis_name is None:  # jit over a mesh: BatchNorm is global without an axis name
            return state
        raise ValueError(
            f"model {type(module).__name__} has no `axis_name` field, which parallelism='pmap' "
            "needs to synchronise BatchNorm: add `axis_name: str | None = None` to the module "
            "and pass it to its BatchNorm layers (`axis_name=self.axis_name`), or train with "
            "config.parallelism='mesh'")
    if module.axis_name == axis_name:
        return state
    return state.replace(apply_fn=module.clone(axis_name=axis_name).apply)


def _first_replica(x: Any) -> np.ndarray:
    return np.asarray(x.addressable_shards[0].data) if isinstance(x, jax.Array) else np.asarray(x)


def _local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for s in shards:
        start = s.index[0].start or 0
        if start not in seen:
            seen.add(start)
            rows.append(np.asarray(s.data))
    return np.concatenate(rows)


class Compiled:
    """A compiled step and how many times it was traced (for recompile guards)."""

    def __init__(self, fn: Callable, compile_fn: Callable[[Callable], Callable]):
        self._traces = 0

        def counted(*args, **kwargs):
            self._traces += 1
            return fn(*args, **kwargs)

        self._compiled = compile_fn(counted)

    def __call__(self, *args):
        return self._compiled(*args)

    def trace_count(self) -> int:
        """Times the step was traced (one per distinct input shape)."""
        return self._traces

    def lower(self, *args):
        """`jax.jit(...).lower` / `jax.pmap(...).lower` of the step (for HLO inspection)."""
        return self._compiled.lower(*args)


class Parallel:
    """Runs `segjax.train.steps` data-parallel; `Parallel("pmap")` or `Parallel("mesh")`.

    The constructor returns the strategy named (`PARALLELISMS`): `PmapParallel` or
    `MeshParallel`. Both take host `TrainState`s and process-local batches, compile the same
    pure steps, and give the same results (tests/train/test_parallel.py).

    Attributes:
      parallelism: "pmap" or "mesh".
      devices: all devices taking part (all processes), in mesh/pmap order.
      local_devices: this process's devices among them.
      mesh: the 1-D mesh with axis "batch" (over local devices in pmap mode).
    """

    parallelism = ""
    axis_name: str | None = None  # the axis the steps reduce over (None: jit over a mesh)

    def __new__(cls, parallelism: str | None = None, **kwargs):
        if cls is Parallel:
            if parallelism not in PARALLELISMS:
                raise ValueError(f"parallelism must be one of {tuple(PARALLELISMS)}, got "
                                 f"{parallelism!r}")
            cls = PARALLELISMS[parallelism]
        return super().__new__(cls)

    def __init__(self, parallelism: str | None = None, *,
                 devices: Sequence[jax.Device] | None = None):
        del parallelism  # chose the class in __new__
        self._explicit_devices = devices is not None
        self.devices = list(devices) if devices is not None else jax.devices()
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        if not self.local_devices:
            raise ValueError("none of the given devices belongs to this process")
        self.mesh = Mesh(np.array(self._mesh_devices()), (AXIS,))
        self._replicated = NamedSharding(self.mesh, P())
        self._sharded = NamedSharding(self.mesh, P(AXIS))

    def _mesh_devices(self) -> list:
        return self.devices

    @property
    def num_devices(self) -> int:
        """Devices over all processes (the global batch is split this many ways)."""
        return len(self.devices)

    @property
    def local_device_count(self) -> int:
        """Devices of this process (a process-local batch must be divisible by this)."""
        return len(self.local_devices)

    def _check_rows(self, key: str, value: np.ndarray) -> None:
        if value.ndim == 0 or value.shape[0] % self.local_device_count:
            raise ValueError(
                f"batch[{key!r}] has shape {value.shape}: its leading (per-process batch) size "
                f"must be divisible by the {self.local_device_count} local devices")

    # The interface of a strategy -----------------------------------------------------------

    def replicate(self, state: TrainState) -> TrainState:
        """Host `TrainState` -> the device layout of this strategy (and the model's axis)."""
        raise NotImplementedError

    def unreplicate(self, state: TrainState) -> TrainState:
        """Device state -> host `TrainState` with numpy leaves (one replica), axis_name=None."""
        raise NotImplementedError

    def shard_batch(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """Process-local batch (leaves [B_local, ...]) -> this strategy's device layout."""
        raise NotImplementedError

    def host_value(self, tree: Any) -> Any:
        """A replicated output of a compiled step (e.g. eval sums) as numpy, one replica."""
        return jax.tree.map(_first_replica, tree)

    def local_rows(self, x: Any) -> np.ndarray:
        """Per-example outputs of a compiled step -> this process's rows [B_local, ...]."""
        raise NotImplementedError

    def _compile(self, fn: Callable, *, in_roles: tuple, out_roles: tuple, donate: tuple):
        """`fn` (with `axis_name=self.axis_name` bound) compiled for this strategy. Roles are
        per argument/output: "state" (the device state), "batch" (split over devices by
        rows) or "replicated" (the same everywhere: keys, metrics, sums)."""
        raise NotImplementedError

    # Compiled steps ------------------------------------------------------------------------

    def train_step(self, task: Task, *, learning_rate_fn: Callable[[Any], Any] | None = None,
                   donate: bool = True):
        """Compiled `(state, sharded batch, rng) -> (state, metrics)` of `steps.train_step`;
        metrics are global scalars."""
        fn = functools.partial(steps.train_step, task=task, axis_name=self.axis_name,
                               learning_rate_fn=learning_rate_fn)
        return self._compile(fn, in_roles=("state", "batch", "replicated"),
                             out_roles=("state", "replicated"), donate=(0,) if donate else ())

    def eval_step(self, task: Task):
        """Compiled `(state, sharded batch) -> (sums, per_example)` of `steps.eval_step`:
        `sums` summed over all devices, `per_example` by rows (see `local_rows`)."""
        fn = functools.partial(steps.eval_step, task=task, axis_name=self.axis_name)
        return self._compile(fn, in_roles=("state", "batch"), out_roles=("replicated", "batch"),
                             donate=())


class PmapParallel(Parallel):
    """`jax.pmap` over the local devices (of every process) with the "batch" axis: state
    stacked [n_local, ...], batches reshaped to [n_local, B_local / n_local, ...], the steps
    reduce (and BatchNorm synchronises) over the axis."""

    parallelism = "pmap"
    axis_name = AXIS

    def _mesh_devices(self) -> list:
        return self.local_devices

    def replicate(self, state: TrainState) -> TrainState:
        state = _with_axis(state, AXIS)
        n = self.local_device_count
        return jax.tree.map(lambda x: jax.device_put(
            np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), self._sharded), state)

    def unreplicate(self, state: TrainState) -> TrainState:
        return _with_axis(jax.tree.map(lambda x: _first_replica(x)[0], state), None)

    def shard_batch(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        out = {}
        for key, value in batch.items():
            value = np.asarray(value)
            self._check_rows(key, value)
            out[key] = jax.device_put(
                value.reshape((self.local_device_count, -1) + value.shape[1:]), self._sharded)
        return out

    def local_rows(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        return x.reshape((-1,) + x.shape[2:])

    def _compile(self, fn, *, in_roles, out_roles, donate):
        kwargs = {"devices": self.devices} if self._explicit_devices else {}
        axis = {"state": 0, "batch": 0, "replicated": None}
        return Compiled(fn, lambda f: jax.pmap(
            f, axis_name=AXIS, in_axes=tuple(axis[r] for r in in_roles),
            out_axes=tuple(axis[r] for r in out_roles), donate_argnums=donate, **kwargs))


class MeshParallel(Parallel):
    """`jax.jit` over a 1-D `Mesh` of all devices with axis "batch": state replicated (`P()`),
    the batch one global array sharded on its first axis (`P("batch")`, built with
    `jax.make_array_from_process_local_data`); the steps run with axis_name=None and their
    plain sums are global."""

    parallelism = "mesh"
    axis_name = None

    def replicate(self, state: TrainState) -> TrainState:
        state = _with_axis(state, None)
        return jax.tree.map(lambda x: jax.make_array_from_callback(
            np.shape(x), self._replicated, lambda idx, x=np.asarray(x): x[idx]), state)

    def unreplicate(self, state: TrainState) -> TrainState:
        return _with_axis(jax.tree.map(_first_replica, state), None)

    def shard_batch(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        out = {}
        for key, value in batch.items():
            value = np.asarray(value)
            self._check_rows(key, value)
            out[key] = jax.make_array_from_process_local_data(self._sharded, value)
        return out

    def local_rows(self, x: Any) -> np.ndarray:
        return _local_rows(x)

    def _compile(self, fn, *, in_roles, out_roles, donate):
        spec = lambda role: self._sharded if role == "batch" else self._replicated  # noqa: E731
        return Compiled(fn, lambda f: jax.jit(
            f, in_shardings=tuple(spec(r) for r in in_roles),
            out_shardings=tuple(spec(r) for r in out_roles), donate_argnums=donate))


PARALLELISMS = {"pmap": PmapParallel, "mesh": MeshParallel}


def _config_get(config: Any, key: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping) or hasattr(config, "get"):
        try:
            return config.get(key)
        except (KeyError, AttributeError):
            return None
    return getattr(config, key, None)


def initialize_distributed(config: Any = None) -> bool:
    """Starts multi-process JAX (`jax.distributed.initialize`) when asked; returns whether it did.

    Settings come from `config` (keys `coordinator_address`, `num_processes`, `process_id`,
    optional `local_device_ids`; a dict or ConfigDict, or its `distributed` sub-config) or else
    the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID. With no
    coordinator address (or a single process) nothing happens and training is single-process.
    Call it before anything touches the devices. On CPU the collectives use gloo.
    """
    sub = _config_get(config, "distributed")
    if sub is not None:
        config = sub
    address = _config_get(config, "coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = _config_get(config, "num_processes")
    num = num if num is not None else os.environ.get("JAX_NUM_PROCESSES")
    pid = _config_get(config, "process_id")
    pid = pid if pid is not None else os.environ.get("JAX_PROCESS_ID")
    local_ids = _config_get(config, "local_device_ids")
    if not address or (num is not None and int(num) <= 1):
        return False
    if num is None or pid is None:
        raise ValueError(
            f"coordinator_address={address!r} is set but num_processes ({num}) or process_id ({pid}) "
            "is missing: set config.num_processes/process_id or JAX_NUM_PROCESSES/JAX_PROCESS_ID"
        )
    if jax.distributed.is_initialized():  # Already done (e.g. by the launcher).
        return True
    logging.info("jax.distributed.initialize(%s, num_processes=%s, process_id=%s)", address, num, pid)
    jax.distributed.initialize(
        coordinator_address=address, num_processes=int(num), process_id=int(pid),
        local_device_ids=local_ids,
    )
    return True
