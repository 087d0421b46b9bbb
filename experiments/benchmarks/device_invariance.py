r"""Same config, same seed, other device layouts: do the first training steps agree?

    python -m experiments.benchmarks.device_invariance \
      --config=experiments/configs/deeplab_voc.py:demo [--steps=2] [--config.KEY=VALUE ...]

Runs the generic trainer (`experiments.train`) for `--steps` steps in fresh work directories
under `--workdir` on: 1 device (pmap and mesh), 4 host devices (pmap and mesh) and 2 processes
x 2 devices (mesh, `jax.distributed` over 127.0.0.1), then prints step 1's loss (a forward pass
of the same state on the same batch: equal up to rounding), step 1's `grad_norm` and step 2's
loss (reduction order differs between layouts: ~1e-4), relative to the first layout, and with
`--json` one JSON object. The issue's bounds: 1e-5, 1e-3, 1e-3.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

from absl import app, flags

from segjax import jsonio


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    global _CONFIG, _STEPS, _WORKDIR, _OVERRIDES, _JSON
    _CONFIG = flags.DEFINE_string("config", "experiments/configs/deeplab_voc.py:demo",
                                  "Config file (path.py[:preset]).")
    _STEPS = flags.DEFINE_integer("steps", 2, "Training steps per layout.")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs go (default: a temp dir).")
    _OVERRIDES = flags.DEFINE_multi_string("override", [], "KEY=VALUE config overrides.")
    _JSON = flags.DEFINE_bool("json", False, "Print one JSON object as the last line.")


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (name, parallelism, host devices per process, processes)
LAYOUTS = (("1 device, pmap", "pmap", 1, 1), ("1 device, mesh", "mesh", 1, 1),
           ("4 devices, pmap", "pmap", 4, 1), ("4 devices, mesh", "mesh", 4, 1),
           ("2 processes x 2, mesh", "mesh", 2, 2), ("2 processes x 2, pmap", "pmap", 2, 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_layout(workdir: str, parallelism: str, devices: int, processes: int) -> list[dict]:
    """Trains `--steps` steps in `workdir`; returns the train lines of metrics.jsonl."""
    args = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
            f"--config={_CONFIG.value}", f"--config.parallelism={parallelism}",
            f"--config.num_train_steps={_STEPS.value}", "--config.log_every_steps=1",
            f"--config.eval_every_steps={_STEPS.value}", "--config.eval.num_visualizations=0"]
    args += [f"--config.{o}" for o in _OVERRIDES.value]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    port = _free_port()
    procs = []
    for pid in range(processes):
        penv = dict(env)
        if processes > 1:
            penv.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                        JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen(args, cwd=REPO, env=penv, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        if p.returncode:
            raise RuntimeError(f"{' '.join(args)} failed:\n{out[-3000:]}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == "train"]


def main(argv):
    del argv
    root = _WORKDIR.value or tempfile.mkdtemp(prefix="segjax_invariance_")
    results = {}
    for i, (name, parallelism, devices, processes) in enumerate(LAYOUTS):
        lines = run_layout(os.path.join(root, f"layout{i}"), parallelism, devices, processes)
        results[name] = {"step1_loss": lines[0]["loss"], "step1_grad_norm": lines[0]["grad_norm"],
                         "step2_loss": lines[1]["loss"] if len(lines) > 1 else None}
        print(f"{name:24s} " + "  ".join(f"{k} {v:.7f}" for k, v in results[name].items()
                                         if v is not None), flush=True)
    ref = results[LAYOUTS[0][0]]
    worst = {k: max(abs(r[k] - ref[k]) / abs(ref[k]) for r in results.values())
             for k in ref if ref[k] is not None}
    print("largest relative difference from the first layout: " +
          "  ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    if _JSON.value:
        print(jsonio.dumps({"config": _CONFIG.value, "overrides": _OVERRIDES.value,
                          "layouts": results, "max_rel_diff": worst}))


if __name__ == "__main__":
    define_flags()
    app.run(main)
