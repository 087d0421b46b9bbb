"""Shared pieces of the step benchmarks: synthetic batches, timing, peak FLOP/s, torchvision twins.

Nothing here imports TensorFlow (the GPU machine has none); torch is imported only when a
comparison is asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from segjax import jsonio

IGNORE_LABEL = 255

# segjax name -> torchvision.models.segmentation constructor name (same architecture).
TORCHVISION_TWINS = {
    "fcn_resnet50": "fcn_resnet50",
    "fcn_resnet101": "fcn_resnet101",
    "deeplabv3_resnet50": "deeplabv3_resnet50",
    "deeplabv3_resnet101": "deeplabv3_resnet101",
}

# segjax instance model -> torchvision.models.detection constructor (same architecture).
TORCHVISION_DETECTION_TWINS = {"maskrcnn_resnet50_fpn": "maskrcnn_resnet50_fpn"}
# The instance benchmarks run the COCO recipe's setting on both sides: torchvision's
# pretrained-backbone freezing (FrozenBatchNorm2d, conv1 + layer1 fixed), and an eval score
# threshold of 0 so that both sides run the mask head on 100 detections per image (random
# weights score every class ~1/K, below torchvision's 0.05, and torchvision would skip it).
TRAINABLE_BACKBONE_LAYERS = 3
BENCH_BOX_SCORE_THRESH = 0.0
MAX_INSTANCES = 8
# Both sides zero the RPN's box-delta layer (`rpn_head.bbox_pred` / `rpn.head.bbox_pred`), so the
# proposals are the anchors themselves, as a trained RPN's are anchor-like. With random deltas
# the random backbone's large features (~1e3) push every box to the clamp, clipping makes most of
# them the same image-sized box, and NMS leaves ~70 proposals per image in torchvision (seed 0),
# whose dynamic shapes then run its box head on ~75 ROIs per image instead of the recipe's 512;
# segjax's static shapes always do the 512.
ZERO_RPN_DELTAS = True


def zero_rpn_deltas(variables):
    """segjax Mask R-CNN `variables` with the RPN's box-delta layer zeroed (ZERO_RPN_DELTAS)."""
    import jax

    head = variables["params"]["rpn_head"]
    zeroed = dict(head, bbox_pred=jax.tree.map(lambda x: x * 0, head["bbox_pred"]))
    return {**variables, "params": {**variables["params"], "rpn_head": zeroed}}


def is_instance_model(name: str) -> bool:
    from segjax.models.registry import model_output

    return model_output(name) == "detections"


def synthetic_instances(batch: int, size: int, num_classes: int, seed: int = 0,
                        max_instances: int = MAX_INSTANCES) -> dict[str, np.ndarray]:
    """A fixed random instance batch: images [B,S,S,3], 1..max_instances rectangles per image:
    boxes [B,M,4] (x1 y1 x2 y2), classes [B,M] (0 = padding), masks uint8 [B,M,S,S],
    num_instances [B]."""
    rng = np.random.default_rng(seed)
    out = {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
           "boxes": np.zeros((batch, max_instances, 4), np.float32),
           "classes": np.zeros((batch, max_instances), np.int32),
           "masks": np.zeros((batch, max_instances, size, size), np.uint8),
           "num_instances": rng.integers(1, max_instances + 1, batch).astype(np.int32)}
    for i in range(batch):
        for j in range(out["num_instances"][i]):
            h, w = rng.integers(size // 10, size // 2, 2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            out["boxes"][i, j] = [x, y, x + w, y + h]
            out["classes"][i, j] = rng.integers(1, num_classes)
            out["masks"][i, j, y:y + h, x:x + w] = 1
    return out


def synthetic_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed random batch: images [B,S,S,3] float32, labels [B,S,S] int32 with ~5% ignore."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    label = rng.integers(0, num_classes, size=(batch, size, size)).astype(np.int32)
    label[rng.random(label.shape) < 0.05] = IGNORE_LABEL
    return {"image": image, "label": label}


def semantic_task(num_classes: int):
    """The benchmarks' task: per-pixel cross-entropy with ignore label 255, no Boundary IoU."""
    from segjax.tasks.semantic import SemanticTask

    return SemanticTask(num_classes=num_classes, ignore_label=IGNORE_LABEL, loss_kind="ce",
                        boundary_iou=False)


def block(tree: Any) -> Any:
    """Waits for every array in `tree` (JAX dispatch is asynchronous)."""
    return jax.block_until_ready(tree)


def time_calls(fn: Callable[[], Any], n: int) -> float:
    """Seconds per call of `fn` averaged over `n` calls (fn must block on its own result)."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def measure_matmul_peak(dtype: str = "float32", size: int | None = None, reps: int = 10) -> float:
    """Achievable dense matmul FLOP/s on the default device for `dtype` (best of `reps`)."""
    on_cpu = jax.default_backend() == "cpu"
    size = size or (1024 if on_cpu else 8192)
    a = jnp.ones((size, size), jnp.dtype(dtype))
    f = jax.jit(lambda x: x @ x)
    block(f(a))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        block(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def peak_memory_bytes() -> int | None:
    """Peak device memory on an accelerator, else the process's peak resident set size."""
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled (or lowered) JAX function, from XLA's cost analysis."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


@contextlib.contextmanager
def direct_convolutions():
    """Within: `SEGJAX_WINOGRAD=0`, so that models traced here use direct convolutions only.

    Winograd convolutions (`segjax.ops.winograd`, on by default on CPU) execute ~1/4 of a 3x3
    conv's multiplications, so a cost analysis of the step segjax runs understates the model's
    work; FLOP tables and MFU count the model's direct-convolution FLOPs. Trace with a fresh
    function inside: jit caches traces by function, and the routing reads the environment.
    """
    old = os.environ.get("SEGJAX_WINOGRAD")
    os.environ["SEGJAX_WINOGRAD"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["SEGJAX_WINOGRAD"]
        else:
            os.environ["SEGJAX_WINOGRAD"] = old


def model_flops(fn: Callable, *args) -> float | None:
    """FLOPs of `fn(*args)` with direct convolutions (`direct_convolutions`), from the cost
    analysis of the lowered module (no compilation)."""
    with direct_convolutions():
        return compiled_flops(jax.jit(lambda *a: fn(*a)).lower(*args))


@dataclasses.dataclass
class Result:
    """One benchmark's outcome; `as_json` keeps the contract keys (DESIGN §3)."""

    model: str
    mode: str
    batch: int
    size: int
    dtype: str
    device: str
    segjax_s_per_step: float
    compile_s: float
    flops_per_step: float | None
    peak_flops: float
    peak_memory_bytes: int | None
    torchvision_s_per_step: float | None = None
    torchvision_compile_s: float | None = None

    @property
    def segjax_img_per_s(self) -> float:
        return self.batch / self.segjax_s_per_step

    @property
    def torchvision_img_per_s(self) -> float | None:
        return None if self.torchvision_s_per_step is None else self.batch / self.torchvision_s_per_step

    @property
    def ratio(self) -> float | None:
        tv = self.torchvision_img_per_s
        return None if tv is None else self.segjax_img_per_s / tv

    @property
    def mfu(self) -> float | None:
        if not self.flops_per_step:
            return None
        return self.flops_per_step / self.segjax_s_per_step / self.peak_flops

    def as_json(self) -> str:
        d = dataclasses.asdict(self)
        d.update(
            segjax_img_per_s=self.segjax_img_per_s,
            torchvision_img_per_s=self.torchvision_img_per_s,
            ratio=self.ratio,
            mfu=self.mfu,
        )
        return jsonio.dumps(d, sort_keys=True)

    def table(self) -> str:
        def fmt(v, spec):
            return "—" if v is None else format(v, spec)

        rows = [
            ("images/s", fmt(self.segjax_img_per_s, ".3f"), fmt(self.torchvision_img_per_s, ".3f")),
            ("ms/step", fmt(self.segjax_s_per_step * 1e3, ".1f"),
             fmt(None if self.torchvision_s_per_step is None else self.torchvision_s_per_step * 1e3, ".1f")),
            ("compile / first step s", fmt(self.compile_s, ".1f"), fmt(self.torchvision_compile_s, ".1f")),
            ("model GFLOP/step", fmt(None if self.flops_per_step is None else self.flops_per_step / 1e9, ".1f"), ""),
            ("MFU", fmt(None if self.mfu is None else 100 * self.mfu, ".1f") + "%", ""),
            ("peak memory MiB", fmt(None if self.peak_memory_bytes is None else self.peak_memory_bytes / 2**20, ".0f"), ""),
        ]
        head = (
            f"{self.mode}: {self.model} batch={self.batch} size={self.size} dtype={self.dtype} "
            f"on {self.device}; matmul peak {self.peak_flops / 1e9:.0f} GFLOP/s; "
            f"segjax/torchvision = {fmt(self.ratio, '.2f')}x"
        )
        lines = [head, "", "| metric | segjax | torchvision |", "|---|---:|---:|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        return "\n".join(lines)


def median_alternating(jax_fn: Callable[[], Any], torch_time: Callable[[int], float] | None,
                       steps: int, rounds: int) -> tuple[float, float | None]:
    """Median seconds/step of each side, alternating rounds so both see the same machine state.

    `jax_fn` runs one step (and blocks); `torch_time(n)` runs `n` steps of the other side and
    returns its seconds per step (e.g. `torch_twin.TwinProcess.seconds_per_step`, which also
    makes one untimed step first). Each round starts with an untimed step: on the 2-core CPU the
    first segjax step right after torch's took ~3.8 s against a steady 3.0 s (BENCHMARKS.md), and
    a training run is made of steady steps.
    """
    js, ts = [], []
    for _ in range(rounds):
        jax_fn()
        js.append(time_calls(jax_fn, steps))
        if torch_time is not None:
            ts.append(torch_time(steps))
    return statistics.median(js), (statistics.median(ts) if ts else None)


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()}"
