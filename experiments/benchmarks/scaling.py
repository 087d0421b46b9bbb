"""Data-parallel scaling: train steps/s for 1, 2, 4, 8 devices at a fixed per-device batch.

  python -m experiments.benchmarks.scaling --model=unet --per_device_batch=2 --size=64 \
      [--parallelism=mesh|pmap] [--devices=1,2,4,8] [--json]

Each device count runs in its own subprocess. On a CPU host the devices are XLA host devices
(`--xla_force_host_platform_device_count`), which share the same cores: the table then shows the
overhead of the data-parallel machinery, not a speed-up. On an accelerator host the first N real
devices are used (counts above the number present are skipped). No TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "unet", "Registered segjax model name.")
_PER_DEVICE = flags.DEFINE_integer("per_device_batch", 2, "Batch per device.")
_SIZE = flags.DEFINE_integer("size", 64, "Square image size.")
_PARALLELISM = flags.DEFINE_enum("parallelism", "mesh", ["mesh", "pmap"], "Data-parallel mode.")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts to run.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per device count.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON line last.")
_WORKER = flags.DEFINE_integer("worker", 0, "Internal: run one device count in this process.")
_OVERRIDES = flags.DEFINE_string("overrides", "{}", "JSON dict of model overrides (e.g. width).")


def _worker(n: int) -> dict:
    import time

    import jax
    import numpy as np

    from experiments.benchmarks import common
    from segjax.models import create_model
    from segjax.train import optim, parallel, state as state_lib

    if jax.device_count() < n:
        return {"devices": n, "skipped": f"only {jax.device_count()} devices"}
    par = parallel.Parallel(_PARALLELISM.value, devices=jax.devices()[:n])
    model = create_model(_MODEL.value, num_classes=21, **json.loads(_OVERRIDES.value))
    shape = (1, _SIZE.value, _SIZE.value, 3)
    variables = state_lib.init_variables(model, jax.random.key(0), shape)
    tx, _ = optim.create_optimizer(variables["params"], base_lr=1e-3, num_steps=1000, momentum=0.9)
    state = par.replicate(state_lib.create_train_state(model, None, shape, tx, variables=variables))
    step = par.train_step(common.semantic_task(21))
    batch = par.shard_batch(common.synthetic_batch(n * _PER_DEVICE.value, _SIZE.value, 21))
    rng = jax.random.key(1)
    t0 = time.perf_counter()
    state, metrics = step(state, batch, rng)
    common.block(metrics)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = step(state, batch, rng)
    common.block(metrics)
    dt = (time.perf_counter() - t0) / _STEPS.value
    assert np.isfinite(float(metrics["loss"]))
    return {"devices": n, "steps_per_s": 1 / dt, "img_per_s": n * _PER_DEVICE.value / dt,
            "first_step_s": first, "backend": jax.default_backend()}


def main(argv):
    del argv
    if _WORKER.value:
        print(json.dumps(_worker(_WORKER.value)), flush=True)
        return
    rows = []
    for n in (int(d) for d in _DEVICES.value):
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
        env["JAX_NUM_CPU_DEVICES"] = str(n)
        cmd = [sys.executable, "-m", "experiments.benchmarks.scaling", f"--worker={n}"] + [
            a for a in sys.argv[1:] if not a.startswith("--devices")
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = next((r for r in rows if "steps_per_s" in r), None)
    print(f"scaling: {_MODEL.value} per-device batch {_PER_DEVICE.value}, {_SIZE.value}², {_PARALLELISM.value}")
    print("| devices | steps/s | images/s | efficiency vs 1 | first step s |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['devices']} | skipped: {r['skipped']} | | | |")
            continue
        eff = r["img_per_s"] / (base["img_per_s"] * r["devices"] / base["devices"])
        print(f"| {r['devices']} | {r['steps_per_s']:.3f} | {r['img_per_s']:.2f} | {eff:.2f} | {r['first_step_s']:.1f} |")
    if _JSON.value:
        print(json.dumps({"model": _MODEL.value, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
