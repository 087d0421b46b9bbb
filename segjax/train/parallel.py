"""Data parallelism for the pure steps: `jax.pmap` or `jax.jit` over a device mesh, multi-host.

Both modes take the same process-local batches (`[B_local, ...]` per leaf) and the same host
`TrainState`, and give the same results (proved in tests/train/test_parallel.py):

  pmap: state stacked on the local devices ([n_local, ...]); the batch reshaped to
    [n_local, B_local / n_local, ...]; the step runs with `axis_name` so loss sums, counts,
    gradients and BatchNorm statistics are reduced over all devices (of all processes).
  mesh: a 1-D `Mesh` over all devices with axis "batch"; state replicated (`P()`), the batch one
    global array sharded on its first axis (`P("batch")`) built with
    `jax.make_array_from_process_local_data`; plain `jax.jit` with axis_name=None.

Example:
  par = Parallel(config.parallelism)
  state = par.replicate(state)          # host TrainState -> device layout
  step = par.train_step(loss_fn, learning_rate_fn=schedule)
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

from segjax.train import steps
from segjax.train.state import TrainState

AXIS = "batch"
PARALLELISMS = ("pmap", "mesh")


def _with_axis(state: TrainState, axis_name: str | None) -> TrainState:
    """`state` whose apply_fn is the same model with BatchNorm synchronised over `axis_name`."""
    module = getattr(state.apply_fn, "__self__", None)
    if module is None or not hasattr(module, "axis_name"):
        raise ValueError(
            "state.apply_fn must be a segjax model's bound `apply` (a module with an `axis_name` "
            f"field), got {state.apply_fn!r}"
        )
    if module.axis_name == axis_name:
        return state
    return state.replace(apply_fn=module.clone(axis_name=axis_name).apply)


def _first_replica(x: Any) -> np.ndarray:
    return np.asarray(x.addressable_shards[0].data) if isinstance(x, jax.Array) else np.asarray(x)


class Parallel:
    """Runs `segjax.train.steps` data-parallel with `parallelism` "pmap" or "mesh".

    Attributes:
      parallelism: "pmap" or "mesh".
      devices: all devices taking part (all processes), in mesh/pmap order.
      local_devices: this process's devices among them.
      mesh: the 1-D mesh with axis "batch" (over local devices in pmap mode).
    """

    def __init__(self, parallelism: str, *, devices: Sequence[jax.Device] | None = None):
        if parallelism not in PARALLELISMS:
            raise ValueError(f"parallelism must be one of {PARALLELISMS}, got {parallelism!r}")
        self.parallelism = parallelism
        self._explicit_devices = devices is not None
        self.devices = list(devices) if devices is not None else jax.devices()
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        if not self.local_devices:
            raise ValueError("none of the given devices belongs to this process")
        mesh_devices = self.local_devices if parallelism == "pmap" else self.devices
        self.mesh = Mesh(np.array(mesh_devices), (AXIS,))
        self._replicated = NamedSharding(self.mesh, P())
        self._sharded = NamedSharding(self.mesh, P(AXIS))

    @property
    def num_devices(self) -> int:
        """Devices over all processes (the global batch is split this many ways)."""
        return len(self.devices)

    @property
    def local_device_count(self) -> int:
        """Devices of this process (a process-local batch must be divisible by this)."""
        return len(self.local_devices)

    # ------------------------------------------------------------------ state and batches

    def replicate(self, state: TrainState) -> TrainState:
        """Host `TrainState` -> the device layout of this mode (and the model's axis_name set)."""
        if self.parallelism == "pmap":
            state = _with_axis(state, AXIS)
            n = self.local_device_count
            return jax.tree.map(
                lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), self._sharded),
                state,
            )
        state = _with_axis(state, None)
        return jax.tree.map(
            lambda x: jax.make_array_from_callback(np.shape(x), self._replicated, lambda idx, x=np.asarray(x): x[idx]),
            state,
        )

    def unreplicate(self, state: TrainState) -> TrainState:
        """Device state -> host `TrainState` with numpy leaves (one replica) and axis_name=None."""
        if self.parallelism == "pmap":
            state = jax.tree.map(lambda x: _first_replica(x)[0], state)
        else:
            state = jax.tree.map(_first_replica, state)
        return _with_axis(state, None)

    def shard_batch(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """Process-local batch (leaves [B_local, ...]) -> this mode's device layout.

        pmap: [n_local, B_local / n_local, ...] on the local devices; mesh: a global array
        [B_local * process_count, ...] sharded over "batch". B_local must be divisible by the
        number of local devices.
        """
        n = self.local_device_count
        out = {}
        for key, value in batch.items():
            value = np.asarray(value)
            if value.ndim == 0 or value.shape[0] % n:
                raise ValueError(
                    f"batch[{key!r}] has shape {value.shape}: its leading (per-process batch) size "
                    f"must be divisible by the {n} local devices"
                )
            if self.parallelism == "pmap":
                out[key] = jax.device_put(value.reshape((n, -1) + value.shape[1:]), self._sharded)
            else:
                out[key] = jax.make_array_from_process_local_data(self._sharded, value)
        return out

    # ------------------------------------------------------------------ compiled steps

    def _pmap_kwargs(self) -> dict[str, Any]:
        return {"devices": self.devices} if self._explicit_devices else {}

    def train_step(
        self, loss_fn: steps.LossFn, *, learning_rate_fn: Callable[[Any], Any] | None = None, donate: bool = True
    ) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
        """Compiled `(state, sharded batch, rng) -> (state, metrics)`; metrics are global scalars."""
        donate_argnums = (0,) if donate else ()
        if self.parallelism == "pmap":
            fn = functools.partial(
                steps.train_step, loss_fn=loss_fn, axis_name=AXIS, learning_rate_fn=learning_rate_fn
            )
            return jax.pmap(
                fn, axis_name=AXIS, in_axes=(0, 0, None), out_axes=(0, None),
                donate_argnums=donate_argnums, **self._pmap_kwargs(),
            )
        fn = functools.partial(
            steps.train_step, loss_fn=loss_fn, axis_name=None, learning_rate_fn=learning_rate_fn
        )
        return jax.jit(
            fn,
            in_shardings=(self._replicated, self._sharded, self._replicated),
            out_shardings=(self._replicated, self._replicated),
            donate_argnums=donate_argnums,
        )

    def eval_step(
        self, *, num_classes: int, ignore_label: int
    ) -> Callable[[TrainState, Mapping[str, jax.Array]], jax.Array]:
        """Compiled `(state, sharded batch) -> confusion int32 [K, K]` summed over all devices."""
        pmap = self.parallelism == "pmap"
        fn = functools.partial(
            steps.eval_step, num_classes=num_classes, ignore_label=ignore_label, axis_name=AXIS if pmap else None
        )
        if pmap:
            return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0), out_axes=None, **self._pmap_kwargs())
        return jax.jit(fn, in_shardings=(self._replicated, self._sharded), out_shardings=self._replicated)


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
