"""Runs 3 training steps + one eval step with `Parallel` in one process of a (possibly) multi-process job.

Used two ways by tests/train/test_distributed.py:
  * in the test process (1 process x 4 CPU devices): `run(mode)`;
  * as a script in 2 subprocesses x 2 CPU devices each, joined through `jax.distributed`:
      python distributed_worker.py OUT.npz   (with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
      JAX_PROCESS_ID set; the device count must be set before JAX is imported, as here; process 1
      passes them to `initialize_distributed` as a config instead)
Each process feeds only its own slice of the same global batches.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    os.environ["JAX_NUM_CPU_DEVICES"] = "2"
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import jax  # noqa: E402
import numpy as np  # noqa: E402

GLOBAL_BATCH = 8
NUM_CLASSES = 3


def run(mode: str) -> dict[str, np.ndarray]:
    """Trains 3 steps with `Parallel(mode)`; returns flat params, batch stats, losses, confusion.

    The model has dropout and an aux head and the loss is OHEM with `min_kept`, so the dropout
    masks and the hard-pixel selection must be those of the global batch in every process.
    """
    from segjax.train import optim, parallel
    from segjax.train.state import create_train_state, init_variables
    from tests.train.tiny import TinySegNet, make_batch, make_task

    model = TinySegNet(num_classes=NUM_CLASSES, dropout=0.5, aux=True)
    task = make_task(NUM_CLASSES, loss_kind="ohem", loss_kwargs={"thresh": 0.6, "min_kept": 20})
    variables = init_variables(model, jax.random.key(0), (1, 9, 11, 3))
    tx, _ = optim.create_optimizer(
        variables["params"], base_lr=0.1, num_steps=10, weight_decay=1e-3, momentum=0.9, backbone_lr_mult=0.5
    )
    state = create_train_state(model, None, (1, 9, 11, 3), tx, variables=variables)
    data_rng = np.random.default_rng(1234)
    batches = [make_batch(data_rng, n=GLOBAL_BATCH, k=NUM_CLASSES) for _ in range(3)]
    par = parallel.Parallel(mode)
    per_process = GLOBAL_BATCH // jax.process_count()
    lo = jax.process_index() * per_process

    def local(batch):
        return {k: v[lo : lo + per_process] for k, v in batch.items()}

    step = par.train_step(task)
    dstate = par.replicate(state)
    out = {}
    for i, batch in enumerate(batches):
        dstate, metrics = step(dstate, par.shard_batch(local(batch)), jax.random.key(7))
        out[f"loss{i}"] = np.asarray(jax.device_get(metrics["loss"]))
    eval_batch = dict(batches[0], valid=np.arange(GLOBAL_BATCH) % 3 != 2)
    sums, _ = par.eval_step(task)(dstate, par.shard_batch(local(eval_batch)))
    out["confusion"] = par.host_value(sums)["confusion"]
    host = par.unreplicate(dstate)
    for path, leaf in jax.tree_util.tree_flatten_with_path({"params": host.params, "batch_stats": host.batch_stats})[0]:
        out[jax.tree_util.keystr(path)] = np.asarray(leaf)
    return out


if __name__ == "__main__":
    from segjax.train.parallel import initialize_distributed

    # Process 0 reads the usual environment variables; process 1 gets the same settings as a
    # config (both ways of `initialize_distributed` are exercised).
    config = None
    if os.environ["JAX_PROCESS_ID"] == "1":
        config = {"distributed": {
            "coordinator_address": os.environ.pop("JAX_COORDINATOR_ADDRESS"),
            "num_processes": int(os.environ.pop("JAX_NUM_PROCESSES")),
            "process_id": int(os.environ.pop("JAX_PROCESS_ID")),
        }}
    assert initialize_distributed(config), "expected JAX_COORDINATOR_ADDRESS etc. in the environment"
    assert jax.process_count() == 2 and jax.local_device_count() == 2, (jax.process_count(), jax.devices())
    results = {}
    for mode in ("pmap", "mesh"):
        results.update({f"{mode}/{k}": v for k, v in run(mode).items()})
    if jax.process_index() == 0:
        np.savez(sys.argv[1], **results)
    jax.distributed.shutdown()
