"""Data-parallel scaling: measured on the devices here, and modelled for many accelerators.

Measured (as before): train steps/s for 1, 2, 4, 8 devices at a fixed per-device batch.

  python -m experiments.benchmarks.scaling --model=unet --per_device_batch=2 --size=64 \
      [--parallelism=mesh|pmap] [--devices=1,2,4,8] [--json]

Each device count runs in its own subprocess. On a CPU host the devices are XLA host devices
(`--xla_force_host_platform_device_count`), which share the same cores: the table then shows the
overhead of the data-parallel machinery, not a speed-up. On an accelerator host the first N real
devices are used (counts above the number present are skipped). No TensorFlow.

Modelled (with --interconnect): the step is compiled for --devices host devices, its collectives
are read from the optimized HLO (`experiments.benchmarks.collectives`), and the scaling model
(`experiments.benchmarks.scaling_model`: single-device step time + ring/tree collective times
with stated bandwidths and latencies, hierarchical above 8 GPUs per host, with/without overlap)
predicts images/s and efficiency at --predict_devices:

  python -m experiments.benchmarks.scaling --model=NAME --per_device_batch=B --size=S \
      --devices=2 --predict_devices=8,64,512 --interconnect=nvlink|nvlink_eth400|nvlink_eth100|
      eth400|eth100|ici|ici_v5e [--step_time_s=T] [--algorithm=ring|tree] [--overlap]
      [--plot=FILE.png] [--json]

Without --step_time_s the single-device step is timed here (on a CPU that is a CPU's time:
give an accelerator's measured or assumed time instead). The byte count compiles with direct
convolutions (SEGJAX_WINOGRAD=0, what accelerators in bfloat16 run) unless --winograd: under
mesh, GSPMD all-reduces a Winograd conv's kernel gradient in the transformed domain, 4 x
its bytes (36 frequencies for 9 taps). The parallelism defaults to mesh when measuring and pmap when modelling. The last
line with --json is one JSON object: `collective_bytes_per_step` (bytes each device puts into
collectives per step), `param_bytes`, `predicted` ([{"devices", "img_per_s", "efficiency",
...}] for 1 and --predict_devices, with the chosen --algorithm/--overlap) and `variants` (ring /
tree x overlap).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

from absl import app, flags

from segjax import jsonio


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    global _MODEL, _PER_DEVICE, _SIZE, _PARALLELISM, _DEVICES, _STEPS, _JSON, _WORKER, _OVERRIDES, _INTERCONNECT, _PREDICT, _STEP_TIME, _ALGORITHM, _OVERLAP, _PLOT, _WINOGRAD
    _MODEL = flags.DEFINE_string("model", "unet", "Registered segjax model name.")
    _PER_DEVICE = flags.DEFINE_integer("per_device_batch", 2, "Batch per device.")
    _SIZE = flags.DEFINE_integer("size", 64, "Square image size.")
    _PARALLELISM = flags.DEFINE_enum("parallelism", None, ["mesh", "pmap"],
                                     "Data-parallel mode (default: mesh when measuring, pmap when "
                                     "modelling).")
    _DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts to run.")
    _STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per device count.")
    _JSON = flags.DEFINE_bool("json", False, "Print one JSON line last.")
    _WORKER = flags.DEFINE_integer("worker", 0, "Internal: run one device count in this process.")
    _OVERRIDES = flags.DEFINE_string("overrides", "{}", "JSON dict of model overrides (e.g. width).")
    _INTERCONNECT = flags.DEFINE_string(
        "interconnect", None, "Model the scaling on this interconnect (scaling_model.INTERCONNECTS) "
        "instead of measuring device counts.")
    _PREDICT = flags.DEFINE_list("predict_devices", ["8", "64", "512"],
                                 "Device counts to predict (1 is always added).")
    _STEP_TIME = flags.DEFINE_float("step_time_s", None, "Single-device step time in seconds "
                                    "(default: time it here).")
    _ALGORITHM = flags.DEFINE_enum("algorithm", "ring", ["ring", "tree"],
                                   "All-reduce algorithm of the headline prediction.")
    _OVERLAP = flags.DEFINE_bool("overlap", False, "Headline prediction overlaps the gradient "
                                 "all-reduce with the backward pass.")
    _PLOT = flags.DEFINE_string("plot", None, "Write the predicted curves to this PNG.")
    _WINOGRAD = flags.DEFINE_bool("winograd", False, "Count bytes with segjax's CPU Winograd "
                                  "routing on (default: direct convolutions).")
_NUM_CLASSES = 21


def _parallelism(default: str) -> str:
    return _PARALLELISM.value or default


def _worker(n: int, parallelism: str | None = None) -> dict:
    import time

    import jax
    import numpy as np

    from experiments.benchmarks import common
    from segjax.models import create_model
    from segjax.train import optim, parallel, state as state_lib

    if jax.device_count() < n:
        return {"devices": n, "skipped": f"only {jax.device_count()} devices"}
    par = parallel.Parallel(parallelism or _parallelism("mesh"), devices=jax.devices()[:n])
    model = create_model(_MODEL.value, num_classes=21, **_overrides())
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


def _model(devices: int) -> dict:
    """The --interconnect mode: collective bytes from the compiled step, then the model."""
    if "jax" not in sys.modules:  # host devices for the compile; must precede importing JAX
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={devices}").strip()
    from experiments.benchmarks import collectives, common, scaling_model

    if _INTERCONNECT.value not in scaling_model.INTERCONNECTS:
        raise app.UsageError(f"--interconnect={_INTERCONNECT.value!r} is not one of "
                             f"{sorted(scaling_model.INTERCONNECTS)}")
    ic = scaling_model.INTERCONNECTS[_INTERCONNECT.value]
    parallelism = _parallelism("pmap")
    env = contextlib.nullcontext() if _WINOGRAD.value else common.direct_convolutions()
    with env:
        acc = collectives.step_collectives(
            _MODEL.value, per_device_batch=_PER_DEVICE.value, size=_SIZE.value,
            parallelism=parallelism, num_devices=devices, num_classes=_NUM_CLASSES,
            overrides=_overrides())
    print(acc.table())
    if _STEP_TIME.value is not None:
        step_time, source = _STEP_TIME.value, "given"
    else:
        import jax

        row = _worker(1, parallelism)
        step_time = _PER_DEVICE.value / row["img_per_s"]
        source = f"measured here on 1 {jax.default_backend()} device"
    traffic = scaling_model.StepTraffic.from_accounting(acc)
    counts = sorted({1, *(int(d) for d in _PREDICT.value)})
    kw = dict(step_time_s=step_time, per_device_batch=_PER_DEVICE.value, interconnect=ic)
    predicted = scaling_model.predict_all(traffic, counts, algorithm=_ALGORITHM.value,
                                          overlap=_OVERLAP.value, **kw)
    variants = scaling_model.variants(traffic, counts, **kw)
    print(f"\nscaling MODEL: {_MODEL.value}, per-device batch {_PER_DEVICE.value}, {_SIZE.value}², "
          f"{parallelism}, {ic.name}: {ic.description}; single-device step {step_time * 1e3:.1f} ms "
          f"({source})")
    print("| devices | " + " | ".join(f"{k} img/s (eff.)" for k in variants) + " |")
    print("|---:|" + "---:|" * len(variants))
    for i, n in enumerate(counts):
        cells = [f"{v[i]['img_per_s']:.1f} ({v[i]['efficiency']:.2f})" for v in variants.values()]
        print(f"| {n} | " + " | ".join(cells) + " |")
    if _PLOT.value:
        scaling_model.plot(variants, _PLOT.value, per_device_batch=_PER_DEVICE.value,
                           step_time_s=step_time,
                           title=f"MODEL: {_MODEL.value}, {_PER_DEVICE.value}/device, "
                                 f"{_SIZE.value}², {ic.name}, step {step_time * 1e3:.1f} ms "
                                 f"({source})")
    summary = acc.summary()
    summary.pop("ops")
    return {**summary, "interconnect": ic.name, "interconnect_description": ic.description,
            "step_time_s": step_time, "step_time_source": source,
            "algorithm": _ALGORITHM.value, "overlap": _OVERLAP.value, "predicted": predicted,
            "variants": variants, "kind": "model"}


def _overrides() -> dict:
    """--overrides as a dict, refused by name when it is not a JSON object."""
    try:
        value = json.loads(_OVERRIDES.value)
    except ValueError as e:
        raise ValueError(f"--overrides={_OVERRIDES.value!r} is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--overrides={_OVERRIDES.value!r} must be a JSON object of model overrides")
    return value


def main(argv):
    del argv
    _overrides()  # refused before anything is built
    if _INTERCONNECT.value:
        result = _model(max(int(d) for d in _DEVICES.value))
        if _JSON.value:
            print(jsonio.dumps(result))
        return
    if _WORKER.value:
        print(jsonio.dumps(_worker(_WORKER.value)), flush=True)
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
    print(f"scaling: {_MODEL.value} per-device batch {_PER_DEVICE.value}, {_SIZE.value}², {_parallelism('mesh')}")
    print("| devices | steps/s | images/s | efficiency vs 1 | first step s |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['devices']} | skipped: {r['skipped']} | | | |")
            continue
        eff = r["img_per_s"] / (base["img_per_s"] * r["devices"] / base["devices"])
        print(f"| {r['devices']} | {r['steps_per_s']:.3f} | {r['img_per_s']:.2f} | {eff:.2f} | {r['first_step_s']:.1f} |")
    if _JSON.value:
        print(jsonio.dumps({"model": _MODEL.value, "rows": rows}))


if __name__ == "__main__":
    from experiments import cli  # one `error:` line for a bad flag value or model name

    cli.run(main, define_flags)
