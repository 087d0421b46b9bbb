"""Two processes x 2 CPU devices through `jax.distributed` equal one process x 4 devices.

The workers (tests/train/distributed_worker.py) run in subprocesses with a timeout: a peer that
never arrives makes `jax.distributed` abort the process, which must not hang or kill pytest.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.train import distributed_worker
from tests import compile_flags

TIMEOUT_S = 180
WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(out_path: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    # The command sets its own device count; the suite's compile flags (conftest.py) are kept.
    env["XLA_FLAGS"] = compile_flags()
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, out_path], env=dict(env, JAX_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s")
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"worker {i} exited with {p.returncode}:\n{log[-3000:]}"


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    out = str(tmp_path / "two_processes.npz")
    run_two_processes(out)
    two = np.load(out)
    for mode in ("pmap", "mesh"):
        one = distributed_worker.run(mode)
        assert {f"{mode}/{k}" for k in one} <= set(two.files)
        for key, want in one.items():
            got = two[f"{mode}/{key}"]
            if key == "confusion":
                np.testing.assert_array_equal(got, want)
            else:
                rel = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
                assert rel <= 1e-5, (mode, key, rel)
        assert one["confusion"].sum() > 0
