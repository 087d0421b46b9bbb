"""A data-parallel scaling *model*: step time on N devices from one device's step time and the
bytes the step's collectives move (`experiments.benchmarks.collectives`).

  t_step(N) = t_compute + t_critical(N) + t_gradients_exposed(N)
  img/s(N)  = N * per_device_batch / t_step(N);   efficiency = img/s(N) / (N * img/s(1))

* t_compute: the single-device step time (measured, or given: an assumption, say so).
* t_critical: collectives that sit between layers and cannot be hidden -- synchronised
  BatchNorm statistics (4 small all-reduces per BN layer, forward and backward), the loss's
  scalars and any gathers (OHEM). Each all-reduce of the compiled step that holds a non-gradient
  buffer costs one collective of those bytes: latency-bound.
* t_gradients: the gradient bytes (= parameter bytes) all-reduced in buckets of
  `GRADIENT_BUCKET_BYTES` (one latency per bucket). The compiled CPU step's own split is not
  used: XLA:CPU's combiner packs gradients together with the BatchNorm reductions next to them
  (216 all-reduces for DeepLabV3-R101), which says nothing about an accelerator's bucketing. With `overlap`, the gradient all-reduce
  runs during the backward pass (`backward_fraction` of the compute, 2/3 when backward costs
  twice the forward) and only what sticks out is paid: max(0, t_gradients - f * t_compute).

Collective times (per device; S bytes; N devices; B bytes/s one direction per device; a per-step
latency; plus a per-collective base latency):
  ring all-reduce      2(N-1)/N * S/B + 2(N-1) * latency
  tree all-reduce      2 * S/B + 2 * ceil(log2 N) * latency  (pipelined double binary tree: NCCL
                       models its bandwidth as half the bus bandwidth, latency log N)
  ring all-gather      (N-1) * s/B + (N-1) * latency          (s = one device's shard)
  on a torus (TPU ICI) the ring runs per dimension: 2 * dims * (N^(1/dims) - 1) latency steps
  hierarchical (N > devices per host, g per host, M = N/g hosts): reduce-scatter inside the host
  ((g-1)/g * S/B_in + (g-1) lat_in), an all-reduce of S/g between hosts (ring or tree over M, at
  the host link's bandwidth shared by the devices on one NIC), all-gather inside the host.

Every constant below says where it comes from. Efficiency factors (achieved / line rate) are
assumptions, stated as such.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

GB = 1e9
US = 1e-6


@dataclasses.dataclass(frozen=True)
class Link:
    """One kind of link, as one device sees it.

    Attributes:
      bandwidth: achievable bytes/s per device in one direction (line rate x efficiency).
      latency: seconds per algorithm step (one hop of a ring / tree level).
      base_latency: fixed seconds per collective (launch, synchronisation).
      source: where the numbers come from.
    """

    name: str
    bandwidth: float
    latency: float
    base_latency: float
    source: str


# --- Links -----------------------------------------------------------------------------------
# NCCL's own cost model (NVIDIA/nccl, src/graph/tuning.cc, tables `baseLat` and `hwLat`): a
# ring collective with the LL protocol (what small messages use) costs a base latency of
# 6.6 us (3.6 us in older releases' table) plus 0.47 us per step over NVLink and 2.7 us per
# step over the network.
_NCCL_BASE = 6.6 * US
_NCCL_NVLINK_HOP = 0.47 * US
_NCCL_NET_HOP = 2.7 * US

NVLINK4 = Link(
    "NVLink 4 (H100/H200 SXM, NVSwitch)",
    # NVIDIA H100/H200 datasheets: NVLink 900 GB/s per GPU, bidirectional -> 450 GB/s each
    # way; x 0.8 achieved (assumption; nccl-tests all_reduce bus bandwidth on 8 x H100 is
    # reported in the 350-480 GB/s range, NVLS included).
    bandwidth=450 * GB * 0.8, latency=_NCCL_NVLINK_HOP, base_latency=_NCCL_BASE,
    source="NVIDIA H100/H200 datasheet 900 GB/s bidirectional; 0.8 efficiency assumed; "
           "latencies from NCCL tuning.cc")
IB_NDR400 = Link(
    "InfiniBand NDR 400 Gb/s per GPU",
    # DGX H100: 8 x ConnectX-7 400 Gb/s, one per GPU (NVIDIA DGX H100 user guide). 400 Gb/s =
    # 50 GB/s each way; x 0.9 achieved (assumption: RDMA with large messages).
    bandwidth=50 * GB * 0.9, latency=_NCCL_NET_HOP, base_latency=_NCCL_BASE,
    source="400 Gb/s line rate (ConnectX-7, one per GPU in a DGX H100); 0.9 efficiency assumed")
ETH400 = Link(
    "400 Gb/s Ethernet",
    # 400GbE line rate = 50 GB/s each way; x 0.8 achieved (assumption: RoCE/TCP framing and
    # congestion control).
    bandwidth=50 * GB * 0.8, latency=_NCCL_NET_HOP, base_latency=_NCCL_BASE,
    source="400 Gb/s line rate; 0.8 efficiency assumed; NCCL network latency")
ETH100 = Link(
    "100 Gb/s Ethernet",
    # 100GbE line rate = 12.5 GB/s each way; x 0.8 achieved (assumption, as above).
    bandwidth=12.5 * GB * 0.8, latency=_NCCL_NET_HOP, base_latency=_NCCL_BASE,
    source="100 Gb/s line rate; 0.8 efficiency assumed; NCCL network latency")
ICI_V4 = Link(
    "TPU v4 ICI (3D torus)",
    # Cloud TPU v4 documentation: "All-reduce bandwidth per Pod 1.1 PB/s" for 4096 chips ->
    # 268.6 GB/s per chip; used as the per-device all-reduce bandwidth as stated (no extra
    # efficiency factor). Latency: no vendor figure; 1 us per hop and 5 us per collective are
    # assumptions (the order of NCCL's NVLink numbers).
    bandwidth=1.1e15 / 4096, latency=1.0 * US, base_latency=5.0 * US,
    source="Cloud TPU v4 docs: all-reduce bandwidth 1.1 PB/s per 4096-chip pod; latencies "
           "assumed")
ICI_V5E = Link(
    "TPU v5e ICI (2D torus)",
    # Cloud TPU v5e documentation: "All-reduce bandwidth per Pod 51.2 TB/s" for 256 chips ->
    # 200 GB/s per chip. Latencies assumed as for v4.
    bandwidth=51.2e12 / 256, latency=1.0 * US, base_latency=5.0 * US,
    source="Cloud TPU v5e docs: all-reduce bandwidth 51.2 TB/s per 256-chip pod; latencies "
           "assumed")


@dataclasses.dataclass(frozen=True)
class Interconnect:
    """How N devices are joined.

    Attributes:
      intra: the link inside a host (or the only link when `devices_per_host` is None).
      inter: the link between hosts (None: flat, every hop over `intra`).
      devices_per_host: devices sharing a host's fast link (hierarchical above it).
      devices_per_nic: devices sharing one host NIC (1: one NIC per device).
      torus_dims: for a flat torus (TPU ICI), its dimensions: a ring all-reduce runs one ring
        per dimension, so its latency grows with 2 * dims * (N^(1/dims) - 1) steps, not 2(N-1).
    """

    name: str
    intra: Link
    inter: Link | None = None
    devices_per_host: int | None = None
    devices_per_nic: int = 1
    description: str = ""
    torus_dims: int | None = None


INTERCONNECTS = {
    "nvlink": Interconnect(
        "nvlink", NVLINK4, IB_NDR400, 8, 1,
        "8 x H100/H200 per host on NVLink 4; hosts on InfiniBand NDR 400 Gb/s, one NIC per GPU "
        "(DGX H100 / SuperPOD); hierarchical above 8"),
    "nvlink_eth400": Interconnect(
        "nvlink_eth400", NVLINK4, ETH400, 8, 1,
        "8 GPUs per host on NVLink 4; hosts on 400 Gb/s Ethernet, one NIC per GPU"),
    "nvlink_eth100": Interconnect(
        "nvlink_eth100", NVLINK4, ETH100, 8, 8,
        "8 GPUs per host on NVLink 4; one 100 Gb/s Ethernet NIC per host"),
    "eth400": Interconnect(
        "eth400", ETH400, None, None, 1,
        "flat: every device on its own 400 Gb/s Ethernet NIC, no NVLink (one GPU per host)"),
    "eth100": Interconnect(
        "eth100", ETH100, None, None, 1,
        "flat: every device on its own 100 Gb/s Ethernet NIC, no NVLink (one GPU per host)"),
    # TPU v4 slices are 3D tori, v5e 2D (Cloud TPU docs).
    "ici": Interconnect("ici", ICI_V4, None, None, 1, "TPU v4 slice, ICI only (3D torus)", 3),
    "ici_v5e": Interconnect("ici_v5e", ICI_V5E, None, None, 1,
                            "TPU v5e slice, ICI only (2D torus)", 2),
}
ALGORITHMS = ("ring", "tree")
# PyTorch DistributedDataParallel's default gradient bucket (`bucket_cap_mb=25`), as a stand-in
# for how an accelerator run splits the gradient all-reduce (an assumption; XLA's GPU combiner
# uses thresholds of the same order).
GRADIENT_BUCKET_BYTES = 25 * 2**20


def _steps_latency(steps: float, link: Link) -> float:
    return link.base_latency + steps * link.latency


def flat_all_reduce_time(nbytes: float, n: int, link: Link, algorithm: str = "ring",
                         torus_dims: int | None = None) -> float:
    """Seconds for an all-reduce of `nbytes` per device over `n` devices on one kind of link
    (on a torus of `torus_dims` dimensions the ring runs per dimension: fewer steps)."""
    if n <= 1:
        return 0.0
    if algorithm == "ring":
        steps = 2 * (n - 1)
        if torus_dims:
            steps = min(steps, 2 * torus_dims * (math.ceil(n ** (1 / torus_dims)) - 1))
        return 2 * (n - 1) / n * nbytes / link.bandwidth + _steps_latency(steps, link)
    if algorithm == "tree":
        return 2 * nbytes / link.bandwidth + _steps_latency(2 * math.ceil(math.log2(n)), link)
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def all_reduce_time(nbytes: float, n: int, ic: Interconnect, algorithm: str = "ring") -> float:
    """Seconds for an all-reduce of `nbytes` per device over `n` devices of `ic` (hierarchical
    when `n` exceeds the devices per host; `algorithm` is used between hosts, rings inside)."""
    g = ic.devices_per_host
    if ic.inter is None or g is None or n <= g:
        return flat_all_reduce_time(nbytes, n, ic.intra, algorithm, ic.torus_dims)
    hosts = math.ceil(n / g)
    inside = (g - 1) / g * nbytes / ic.intra.bandwidth + _steps_latency(g - 1, ic.intra)
    nic = dataclasses.replace(ic.inter, bandwidth=ic.inter.bandwidth / ic.devices_per_nic)
    return 2 * inside + flat_all_reduce_time(nbytes / g, hosts, nic, algorithm)


def all_gather_time(shard_bytes: float, n: int, ic: Interconnect, algorithm: str = "ring") -> float:
    """Seconds for an all-gather of `shard_bytes` per device over `n` devices: the ring's
    (N-1) * shard through the slowest link in use (`algorithm` changes only the latency)."""
    if n <= 1:
        return 0.0
    link = ic.intra
    if ic.inter is not None and ic.devices_per_host is not None and n > ic.devices_per_host:
        link = dataclasses.replace(ic.inter, bandwidth=ic.inter.bandwidth / ic.devices_per_nic)
    steps = n - 1 if algorithm == "ring" else math.ceil(math.log2(n))
    return (n - 1) * shard_bytes / link.bandwidth + _steps_latency(steps, link)


@dataclasses.dataclass
class StepTraffic:
    """What one train step sends, per device, from the compiled step's collectives.

    Attributes:
      gradient_bytes: the gradient all-reduce (equal to the parameter bytes).
      gradient_ops: all-reduces the gradients are split into (>= 1; `from_accounting`: the
        number of `GRADIENT_BUCKET_BYTES` buckets).
      critical_all_reduces: bytes of the non-gradient buffers of each all-reduce holding any
        (BatchNorm statistics, loss scalars): on the critical path, one collective each.
      gathers: operand (shard) bytes of each all-gather.
      other: operand bytes of each reduce-scatter / all-to-all / collective-permute (costed as
        all-gathers of that size: none appear in segjax's data-parallel steps).
    """

    gradient_bytes: int
    gradient_ops: int = 1
    critical_all_reduces: list[int] = dataclasses.field(default_factory=list)
    gathers: list[int] = dataclasses.field(default_factory=list)
    other: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def from_accounting(cls, acc: Any) -> "StepTraffic":
        """From a `collectives.Accounting`."""
        split = acc.split_all_reduce()
        return cls(
            gradient_bytes=split["gradient_bytes"],
            gradient_ops=max(1, math.ceil(split["gradient_bytes"] / GRADIENT_BUCKET_BYTES)),
            critical_all_reduces=[sum(b) for b in split["other_ops"]],
            gathers=[o.operand_bytes for o in acc.ops if o.kind == "all-gather"],
            other=[o.operand_bytes for o in acc.ops
                   if o.kind not in ("all-reduce", "all-gather")])


def predict(traffic: StepTraffic, n: int, *, step_time_s: float, per_device_batch: int,
            interconnect: Interconnect, algorithm: str = "ring", overlap: bool = False,
            backward_fraction: float = 2 / 3) -> dict[str, float]:
    """The model's step on `n` devices (see the module docstring).

    Returns {"devices", "step_s", "gradient_s", "critical_s", "exposed_s", "img_per_s",
    "efficiency"}; times in seconds.
    """
    ic = interconnect
    if n <= 1:
        grad = crit = 0.0
    else:
        grad = (all_reduce_time(traffic.gradient_bytes, n, ic, algorithm)
                + (traffic.gradient_ops - 1) * all_reduce_time(0, n, ic, algorithm))
        crit = (sum(all_reduce_time(b, n, ic, algorithm) for b in traffic.critical_all_reduces)
                + sum(all_gather_time(b, n, ic, algorithm) for b in traffic.gathers)
                + sum(all_gather_time(b, n, ic, algorithm) for b in traffic.other))
    exposed_grad = max(0.0, grad - backward_fraction * step_time_s) if overlap else grad
    step = step_time_s + crit + exposed_grad
    img_per_s = n * per_device_batch / step
    return {"devices": n, "step_s": step, "gradient_s": grad, "critical_s": crit,
            "exposed_s": crit + exposed_grad, "img_per_s": img_per_s,
            "efficiency": img_per_s / (n * per_device_batch / step_time_s)}


def predict_all(traffic: StepTraffic, devices: Iterable[int], **kwargs) -> list[dict[str, float]]:
    """`predict` for each device count."""
    return [predict(traffic, n, **kwargs) for n in devices]


def variants(traffic: StepTraffic, devices: Iterable[int], **kwargs) -> dict[str, list[dict]]:
    """Predictions for ring/tree x with/without overlap: {"ring", "ring+overlap", "tree",
    "tree+overlap"} -> list over `devices`."""
    devices = list(devices)
    out = {}
    for algorithm in ALGORITHMS:
        for overlap in (False, True):
            key = algorithm + ("+overlap" if overlap else "")
            out[key] = predict_all(traffic, devices, algorithm=algorithm, overlap=overlap,
                                   **kwargs)
    return out


def plot(curves: Mapping[str, list[dict]], path: str, *, title: str,
         per_device_batch: int, step_time_s: float) -> None:
    """Images/s and efficiency against devices (log axes) for each curve, with the ideal line;
    written as a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    any_rows = next(iter(curves.values()))
    ns = [r["devices"] for r in any_rows]
    ax1.plot(ns, [n * per_device_batch / step_time_s for n in ns], "k:", label="ideal (linear)")
    for label, rows in curves.items():
        ax1.plot([r["devices"] for r in rows], [r["img_per_s"] for r in rows], "o-", label=label)
        ax2.plot([r["devices"] for r in rows], [r["efficiency"] for r in rows], "o-", label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("devices")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("images/s (model)")
    ax2.set_ylabel("scaling efficiency (model)")
    ax2.set_ylim(0, 1.05)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
