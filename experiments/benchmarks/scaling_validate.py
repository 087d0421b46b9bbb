"""Checks the scaling model's collective times against a real multi-process all-reduce (issue 17).

  python -m experiments.benchmarks.scaling_validate [--sizes_mb=0.004,0.25,4,16,64] [--reps=5]

Two processes x 2 CPU devices each joined through `jax.distributed` on 127.0.0.1 (gloo), as
tests/train/test_distributed.py. In the same run, before JAX starts, the two processes measure
their loopback TCP link: one-way bandwidth (64 MiB streamed in 1 MiB chunks, best of 3) and
latency (half the round trip of 1-byte ping-pongs, median of 500). Then each times a `psum`
over all 4 devices (pmap) of float32 buffers of the given sizes (median of --reps after one
warm-up call) and the script compares with `scaling_model`'s ring all-reduce over 4 devices on
a `Link` with the measured bandwidth and latency (and, as a second reading, the hierarchical
form: 2 devices per process joined in memory, processes over loopback).

A measurement, not a test: it runs on whatever the CPUs are doing (the load average is
printed); with --json the last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time

from absl import app, flags

from segjax import jsonio


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    global _SIZES, _REPS, _JSON, _WORKER, _PORTS, _OUT
    _SIZES = flags.DEFINE_list("sizes_mb", ["0.004", "0.25", "4", "16", "64"],
                               "psum buffer sizes in MB (1e6 bytes) per device.")
    _REPS = flags.DEFINE_integer("reps", 5, "Timed calls per size.")
    _JSON = flags.DEFINE_bool("json", False, "Print one JSON line last.")
    _WORKER = flags.DEFINE_integer("worker", -1, "Internal: run process i of the pair.")
    _PORTS = flags.DEFINE_list("ports", [], "Internal: coordinator and socket ports.")
    _OUT = flags.DEFINE_string("out", "", "Internal: where worker 0 writes its JSON.")


CHUNK = 1 << 20
STREAM = 64 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(pid: int, port: int) -> socket.socket:
    if pid == 0:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(1)
        conn, _ = srv.accept()
        srv.close()
    else:
        deadline = time.time() + 60
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _recv_exact(conn: socket.socket, buf: memoryview) -> None:
    got = 0
    while got < len(buf):
        n = conn.recv_into(buf[got:])
        if not n:
            raise ConnectionError("peer closed")
        got += n


def measure_loopback(pid: int, port: int) -> dict:
    """One-way TCP bandwidth (bytes/s) and latency (s) between the two processes."""
    conn = _connect(pid, port)
    payload = bytearray(CHUNK)
    rates = []
    for _ in range(3):
        if pid == 1:
            for _ in range(STREAM // CHUNK):
                conn.sendall(payload)
            _recv_exact(conn, memoryview(bytearray(1)))  # receiver's ack
        else:
            buf = memoryview(bytearray(CHUNK))
            _recv_exact(conn, buf[:1])
            t0 = time.perf_counter()
            _recv_exact(conn, buf[1:])
            for _ in range(STREAM // CHUNK - 1):
                _recv_exact(conn, buf)
            rates.append((STREAM - 1) / (time.perf_counter() - t0))
            conn.sendall(b"k")
    one, rtts = memoryview(bytearray(1)), []
    for _ in range(500):
        t0 = time.perf_counter()
        if pid == 0:
            conn.sendall(b"p")
            _recv_exact(conn, one)
        else:
            _recv_exact(conn, one)
            conn.sendall(b"p")
        rtts.append(time.perf_counter() - t0)
    conn.close()
    return {"bandwidth": max(rates) if rates else None, "latency": statistics.median(rtts) / 2}


def _worker(pid: int) -> None:
    coord, sock_port = (int(p) for p in _PORTS.value)
    link = measure_loopback(pid, sock_port)
    import jax
    import numpy as np

    jax.distributed.initialize(f"127.0.0.1:{coord}", num_processes=2, process_id=pid)
    assert jax.device_count() == 4 and jax.local_device_count() == 2, jax.devices()
    psum = jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i")
    place = jax.pmap(lambda x: x)
    rows = []
    for mb in (float(s) for s in _SIZES.value):
        n = max(1, int(mb * 1e6) // 4)
        x = place(np.ones((2, n), np.float32))
        jax.block_until_ready(psum(x))  # compile + warm up
        times = []
        for _ in range(_REPS.value):
            t0 = time.perf_counter()
            jax.block_until_ready(psum(x))
            times.append(time.perf_counter() - t0)
        rows.append({"bytes": n * 4, "median_s": statistics.median(times), "min_s": min(times)})
    if pid == 0:
        bw = link["bandwidth"]
        jsonio.dump({"link": {"bandwidth": bw, "latency": link["latency"]}, "psum": rows},
                    _OUT.value)
    jax.distributed.shutdown()


def _model_rows(result: dict) -> list[dict]:
    from experiments.benchmarks import scaling_model as M

    bw, lat = result["link"]["bandwidth"], result["link"]["latency"]
    loop = M.Link("loopback TCP (measured)", bandwidth=bw, latency=lat, base_latency=0.0,
                  source="measured in this run")
    # Inside a process the two devices share memory: modelled as free next to the TCP link.
    memory = M.Link("process memory", bandwidth=1e12, latency=0.0, base_latency=0.0,
                    source="assumed negligible")
    flat = M.Interconnect("loopback", loop)
    hier = M.Interconnect("loopback_hier", memory, loop, devices_per_host=2, devices_per_nic=2)
    rows = []
    for r in result["psum"]:
        ring = M.all_reduce_time(r["bytes"], 4, flat, "ring")
        two = M.all_reduce_time(r["bytes"], 4, hier, "ring")
        rows.append({**r, "model_ring4_s": ring, "model_hier_s": two,
                     "measured_over_ring4": r["median_s"] / ring,
                     "bus_bandwidth": 2 * 3 / 4 * r["bytes"] / r["median_s"]})
    return rows


def main(argv):
    del argv
    if _WORKER.value >= 0:
        _worker(_WORKER.value)
        return
    load_before = os.getloadavg()
    ports = [str(_free_port()), str(_free_port())]
    out = f"/tmp/scaling_validate_{os.getpid()}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_NUM_CPU_DEVICES="2")
    args = [f"--sizes_mb={','.join(_SIZES.value)}", f"--reps={_REPS.value}",
            f"--ports={','.join(ports)}", f"--out={out}"]
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.benchmarks.scaling_validate",
                               f"--worker={i}", *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for i, (p, log) in enumerate(zip(procs, logs)):
        if p.returncode:
            raise SystemExit(f"worker {i} exited with {p.returncode}:\n{log[-3000:]}")
    with open(out) as f:
        result = json.load(f)
    os.remove(out)
    rows = _model_rows(result)
    link = result["link"]
    print(f"2 processes x 2 CPU devices (gloo over 127.0.0.1), {os.cpu_count()} CPUs; load "
          f"average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; "
          f"{time.time() - t0:.0f} s")
    print(f"loopback TCP measured: {link['bandwidth'] / 1e9:.2f} GB/s one way, latency "
          f"{link['latency'] * 1e6:.1f} us (half RTT)")
    print("| psum bytes/device | measured median ms | min ms | MODEL ring(4) ms | MODEL "
          "hierarchical ms | measured / ring model | bus bandwidth GB/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['bytes']:,} | {r['median_s'] * 1e3:.2f} | {r['min_s'] * 1e3:.2f} | "
              f"{r['model_ring4_s'] * 1e3:.2f} | {r['model_hier_s'] * 1e3:.2f} | "
              f"{r['measured_over_ring4']:.2f} | {r['bus_bandwidth'] / 1e9:.2f} |")
    small, peak = rows[0], max(rows, key=lambda r: r["bus_bandwidth"])
    print(f"smallest psum {small['median_s'] * 1e3:.2f} ms (MODEL {small['model_ring4_s'] * 1e3:.3f} "
          f"ms); best bus bandwidth {peak['bus_bandwidth'] / 1e9:.2f} GB/s at {peak['bytes']:,} B "
          f"(loopback link {link['bandwidth'] / 1e9:.2f} GB/s)")
    if _JSON.value:
        print(jsonio.dumps({"link": link, "rows": rows, "load_before": load_before,
                          "load_after": os.getloadavg()}))


if __name__ == "__main__":
    define_flags()
    app.run(main)
