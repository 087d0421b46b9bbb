"""The scaling model (experiments.benchmarks.scaling_model) against hand-computed formulas, and
the `scaling --interconnect` command's JSON contract on a tiny U-Net (step time given)."""

import json
import math
import os
import subprocess
import sys

import pytest

from experiments.benchmarks import scaling_model as M
from tests import compile_flags

LINK = M.Link("test", bandwidth=1e9, latency=1e-6, base_latency=5e-6, source="test")
FLAT = M.Interconnect("flat", LINK)


def test_ring_and_tree_all_reduce_by_hand():
    s = 8e6
    assert M.flat_all_reduce_time(s, 1, LINK) == 0
    assert M.flat_all_reduce_time(s, 4, LINK, "ring") == pytest.approx(
        2 * 3 / 4 * s / 1e9 + 5e-6 + 2 * 3 * 1e-6)
    assert M.flat_all_reduce_time(s, 64, LINK, "tree") == pytest.approx(
        2 * s / 1e9 + 5e-6 + 2 * 6 * 1e-6)
    # Small messages: the tree's log N latency wins at scale; large ones: the ring's bandwidth.
    assert M.flat_all_reduce_time(1e3, 512, LINK, "tree") < M.flat_all_reduce_time(1e3, 512, LINK)
    assert M.flat_all_reduce_time(1e9, 8, LINK, "ring") < M.flat_all_reduce_time(1e9, 8, LINK, "tree")


def test_hierarchical_all_reduce_by_hand():
    fast = M.Link("fast", 100e9, 0.5e-6, 5e-6, "test")
    ic = M.Interconnect("h", fast, LINK, devices_per_host=8, devices_per_nic=2)
    s = 16e6
    assert M.all_reduce_time(s, 8, ic) == M.flat_all_reduce_time(s, 8, fast)  # one host
    inside = 7 / 8 * s / 100e9 + 5e-6 + 7 * 0.5e-6
    between = 2 * 3 / 4 * (s / 8) / (1e9 / 2) + 5e-6 + 2 * 3 * 1e-6  # 4 hosts, 2 GPUs per NIC
    assert M.all_reduce_time(s, 32, ic) == pytest.approx(2 * inside + between)


def test_prediction_by_hand_with_and_without_overlap():
    traffic = M.StepTraffic(gradient_bytes=4e6, gradient_ops=2, critical_all_reduces=[1024, 8],
                            gathers=[400])
    kw = dict(step_time_s=0.1, per_device_batch=8, interconnect=FLAT)
    one = M.predict(traffic, 1, **kw)
    assert one["efficiency"] == 1 and one["img_per_s"] == pytest.approx(80)
    grad = M.flat_all_reduce_time(4e6, 16, LINK) + M.flat_all_reduce_time(0, 16, LINK)
    crit = (M.flat_all_reduce_time(1024, 16, LINK) + M.flat_all_reduce_time(8, 16, LINK)
            + 15 * 400 / 1e9 + 5e-6 + 15 * 1e-6)
    got = M.predict(traffic, 16, **kw)
    assert got["step_s"] == pytest.approx(0.1 + crit + grad)
    assert got["efficiency"] == pytest.approx(0.1 / (0.1 + crit + grad))
    hidden = M.predict(traffic, 16, overlap=True, **kw)  # 2/3 of 0.1 s hides the gradients
    assert hidden["step_s"] == pytest.approx(0.1 + crit)
    long = M.predict(traffic, 16, overlap=True, backward_fraction=grad / 0.2, **kw)
    assert long["step_s"] == pytest.approx(0.1 + crit + grad / 2)


def test_every_interconnect_states_its_sources():
    assert {"nvlink", "ici", "eth100", "eth400"} <= set(M.INTERCONNECTS)
    for ic in M.INTERCONNECTS.values():
        for link in (ic.intra, ic.inter):
            if link is not None:
                assert link.source and link.bandwidth > 0 and link.latency > 0
    torus = M.INTERCONNECTS["ici"]
    assert M.all_reduce_time(0, 512, torus) == pytest.approx(
        torus.intra.base_latency + 2 * 3 * 7 * torus.intra.latency)  # 8x8x8: 3 rings of 8


def test_command_prints_the_contract_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    # The command sets its own device count; the suite's compile flags (conftest.py) are kept.
    env["XLA_FLAGS"] = compile_flags()
    env["JAX_PLATFORMS"] = "cpu"
    plot = tmp_path / "curve.png"
    cmd = [sys.executable, "-m", "experiments.benchmarks.scaling", "--model=unet",
           "--per_device_batch=2", "--size=8", "--devices=2", "--predict_devices=8,64,512",
           "--interconnect=eth100", "--step_time_s=0.05", "--json", f"--plot={plot}",
           '--overrides={"base_features": 2, "depth": 1}']
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["param_bytes"] > 0
    assert result["collective_bytes_per_step"] >= result["param_bytes"]
    assert result["step_time_s"] == 0.05 and result["step_time_source"] == "given"
    rows = result["predicted"]
    assert [r["devices"] for r in rows] == [1, 8, 64, 512]
    eff = [r["efficiency"] for r in rows]
    assert eff[0] == pytest.approx(1) and all(e <= 1 for e in eff)
    assert all(a > b for a, b in zip(eff, eff[1:])), eff
    for r in rows:
        assert r["img_per_s"] == pytest.approx(r["devices"] * 2 * r["efficiency"] / 0.05)
    assert set(result["variants"]) == {"ring", "ring+overlap", "tree", "tree+overlap"}
    assert plot.stat().st_size > 0
    # The parameter bytes of that U-Net, counted here from its own init (not from the compiled
    # step the command reads): every gradient is all-reduced once, in float32.
    import jax
    import numpy as np

    from segjax.models import create_model

    unet = create_model("unet", num_classes=21, base_features=2, depth=1)
    shapes = jax.eval_shape(lambda: unet.init(jax.random.key(0), np.zeros((1, 8, 8, 3),
                                                                             np.float32)))
    want = sum(4 * math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
    assert result["param_bytes"] == want
    assert result["gradient_bytes"] == want and result["gradient_all_reduces"] >= 1
