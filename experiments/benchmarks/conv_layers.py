r"""Every convolution of DeepLabV3-ResNet50 timed alone, segjax against torch, in one run.

    python -m experiments.benchmarks.conv_layers --batch=4 --size=256 [--mode=train] [--json]

Where `train_step`/`eval_step` give one ratio for the whole step, this splits it by layer: each
distinct conv shape of the model (torchvision's ResNet-50 at output stride 8 and its DeepLabHead)
is run through the convolution segjax's models use (`segjax.models.layers.conv_general_dilated_impl`,
i.e. `segjax.ops.conv_general_dilated` on CPU: per-tap atrous convs, strided 1x1 convs as
matmuls) and through `torch.nn.functional.conv2d` on `channels_last` tensors, alternating rounds,
forward only (`--mode=eval`) or forward plus the input and kernel gradients (`--mode=train`).
Each row is weighted by how often the model runs that shape. The two sides are checked to
compute the same convolution (relative error column). A dense matmul row shows each library's
best GEMM, which bounds what a matmul-based lowering can reach.

No TensorFlow; torch is required (it is what this measures against), on the GPU when there is
one (then both sides run there; note that TF32 defaults differ between the libraries).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from experiments.benchmarks import common
from segjax import jsonio


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One conv of the model: `count` times per step, input `[batch, h, w, cin]`."""

    layer: str
    count: int
    h: int
    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1
    dilation: int = 1

    @property
    def padding(self) -> int:
        return self.dilation * (self.kernel - 1) // 2

    def out_size(self) -> int:
        return (self.h + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) // self.stride + 1

    def flops(self, batch: int) -> float:
        """Multiply-adds x 2 of the dense conv (every tap, padding included)."""
        return 2.0 * batch * self.out_size() ** 2 * self.kernel ** 2 * self.cin * self.cout


def deeplabv3_resnet50_convs(size: int) -> list[ConvShape]:
    """The convolutions of `deeplabv3_resnet50` (output stride 8) on `size`x`size` images.

    torchvision's ResNet-50 v1.5 (stride on the 3x3 conv), layer3/layer4 dilated 2/4 instead of
    strided (layer4's first block keeps dilation 2), and the DeepLabHead: ASPP 1x1 + rates
    12/24/36 + image pooling, projection, 3x3 conv, classifier (21 classes).
    """
    s2 = -(-size // 2)  # the stem conv and the max pool each halve, rounding up
    s4 = -(-s2 // 2)
    s8 = -(-s4 // 2)
    return [
        ConvShape("stem 7x7/2", 1, size, 3, 64, 7, 2),
        ConvShape("layer1 conv1", 1, s4, 64, 64),
        ConvShape("layer1 conv1", 2, s4, 256, 64),
        ConvShape("layer1 conv2", 3, s4, 64, 64, 3),
        ConvShape("layer1 conv3 + downsample", 4, s4, 64, 256),
        ConvShape("layer2.0 conv1", 1, s4, 256, 128),
        ConvShape("layer2.0 conv2 /2", 1, s4, 128, 128, 3, 2),
        ConvShape("layer2.0 downsample /2", 1, s4, 256, 512, 1, 2),
        ConvShape("layer2 conv1", 3, s8, 512, 128),
        ConvShape("layer2 conv2", 3, s8, 128, 128, 3),
        ConvShape("layer2 conv3", 4, s8, 128, 512),
        ConvShape("layer3.0 conv1", 1, s8, 512, 256),
        ConvShape("layer3.0 conv2", 1, s8, 256, 256, 3),
        ConvShape("layer3.0 downsample", 1, s8, 512, 1024),
        ConvShape("layer3 conv1", 5, s8, 1024, 256),
        ConvShape("layer3 conv2 d2", 5, s8, 256, 256, 3, 1, 2),
        ConvShape("layer3 conv3", 6, s8, 256, 1024),
        ConvShape("layer4.0 conv1", 1, s8, 1024, 512),
        ConvShape("layer4.0 conv2 d2", 1, s8, 512, 512, 3, 1, 2),
        ConvShape("layer4.0 downsample", 1, s8, 1024, 2048),
        ConvShape("layer4 conv1", 2, s8, 2048, 512),
        ConvShape("layer4 conv2 d4", 2, s8, 512, 512, 3, 1, 4),
        ConvShape("layer4 conv3", 3, s8, 512, 2048),
        ConvShape("aspp 1x1", 1, s8, 2048, 256),
        ConvShape("aspp d12", 1, s8, 2048, 256, 3, 1, 12),
        ConvShape("aspp d24", 1, s8, 2048, 256, 3, 1, 24),
        ConvShape("aspp d36", 1, s8, 2048, 256, 3, 1, 36),
        ConvShape("aspp pooling", 1, 1, 2048, 256),
        ConvShape("aspp project", 1, s8, 1280, 256),
        ConvShape("head conv 3x3", 1, s8, 256, 256, 3),
        ConvShape("head classifier", 1, s8, 256, 21),
    ]


def _segjax_conv(shape: ConvShape) -> Callable:
    from segjax.models.layers import conv_general_dilated_impl

    conv = conv_general_dilated_impl() or lax.conv_general_dilated
    p = shape.padding

    def f(x, w):
        return conv(x, w, (shape.stride, shape.stride), ((p, p), (p, p)), None,
                    (shape.dilation, shape.dilation), ("NHWC", "HWIO", "NHWC"))

    return f


def _builders(shape: ConvShape, batch: int, train: bool, rng: np.random.Generator):
    """(segjax_fn, torch_fn, relative error of the two outputs)."""
    import torch

    x = rng.normal(size=(batch, shape.h, shape.h, shape.cin)).astype(np.float32)
    w = (rng.normal(size=(shape.kernel, shape.kernel, shape.cin, shape.cout))
         / np.sqrt(shape.kernel ** 2 * shape.cin)).astype(np.float32)
    conv = _segjax_conv(shape)
    jx, jw = jnp.asarray(x), jnp.asarray(w)
    if train:
        jfn = jax.jit(jax.grad(lambda x, w: jnp.vdot(conv(x, w), conv(x, w)) / 2, argnums=(0, 1)))
    else:
        jfn = jax.jit(conv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device).contiguous(
        memory_format=torch.channels_last)
    tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).to(device).contiguous(
        memory_format=torch.channels_last)
    kw = dict(stride=shape.stride, padding=shape.padding, dilation=shape.dilation)

    def torch_fn():
        if not train:
            with torch.no_grad():
                out = torch.nn.functional.conv2d(tx, tw, **kw)
        else:
            a, b = tx.detach().requires_grad_(True), tw.detach().requires_grad_(True)
            y = torch.nn.functional.conv2d(a, b, **kw)
            y.backward(y)  # d/dx of |y|^2 / 2: the same two gradients as the JAX side
            out = a.grad
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    def jax_fn():
        return jax.block_until_ready(jfn(jx, jw))

    want = torch_fn()
    got = jax_fn()
    got = np.asarray(got[0] if train else got)
    want = want.detach().cpu().numpy().transpose(0, 2, 3, 1)
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    return jax_fn, torch_fn, err


def _warm_then_time(fn: Callable) -> Callable[[int], float]:
    """`n -> seconds per call of fn over n calls`, after one untimed call: the torch side of
    `common.median_alternating`, which warms the segjax side the same way (right after the other
    side evicted its operands from the caches, XLA's 5 ms products took up to 2x)."""
    def timed(n: int) -> float:
        fn()
        return common.time_calls(fn, n)

    return timed


def gemm_peaks(size: int = 2048, reps: int = 5) -> tuple[float, float]:
    """Best dense float32 matmul FLOP/s of XLA (`common.measure_matmul_peak`) and of torch
    (`torch.mm`)."""
    import torch

    a = np.random.default_rng(0).normal(size=(size, size)).astype(np.float32)
    cuda = torch.cuda.is_available()
    ta = torch.from_numpy(a).to("cuda" if cuda else "cpu")

    def torch_mm():
        torch.mm(ta, ta)
        if cuda:
            torch.cuda.synchronize()

    torch_mm()
    best = min(common.time_calls(torch_mm, 1) for _ in range(reps))
    return common.measure_matmul_peak("float32", size=size, reps=reps), 2 * size ** 3 / best


@dataclasses.dataclass
class Row:
    layer: str
    count: int
    shape: str
    gflop: float
    segjax_ms: float
    torch_ms: float
    rel_err: float


def run(*, batch: int, size: int, mode: str, steps: int = 3, rounds: int = 3,
        layers: list[ConvShape] | None = None) -> tuple[list[Row], tuple[float, float]]:
    """Times every conv of `layers` (default: DeepLabV3-ResNet50's) both ways; returns the rows
    and the two GEMM peaks."""
    train = mode == "train"
    rng = np.random.default_rng(0)
    rows = []
    for shape in layers or deeplabv3_resnet50_convs(size):
        jax_fn, torch_fn, err = _builders(shape, batch, train, rng)
        js, ts = common.median_alternating(jax_fn, _warm_then_time(torch_fn), steps, rounds)
        desc = (f"{shape.h}² {shape.cin}→{shape.cout} k{shape.kernel} s{shape.stride} "
                f"d{shape.dilation}")
        rows.append(Row(shape.layer, shape.count, desc, shape.flops(batch) * (3 if train else 1) / 1e9,
                        js * 1e3, ts * 1e3, err))
    return rows, gemm_peaks()


def table(rows: list[Row], peaks: tuple[float, float], *, batch: int, size: int,
          mode: str) -> str:
    """Markdown table: per-shape ms (one call), ratio, and count-weighted totals."""
    lines = [f"{mode}: DeepLabV3-ResNet50 convolutions, batch {batch}, {size}², float32; dense "
             f"GEMM peak XLA {peaks[0] / 1e9:.0f} / torch.mm {peaks[1] / 1e9:.0f} GFLOP/s", "",
             "| layer | × | shape | GFLOP | segjax ms | torch ms | torch/segjax | rel. err |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.layer} | {r.count} | {r.shape} | {r.gflop:.2f} | {r.segjax_ms:.1f} | "
                     f"{r.torch_ms:.1f} | {r.torch_ms / r.segjax_ms:.2f} | {r.rel_err:.0e} |")
    js = sum(r.count * r.segjax_ms for r in rows)
    ts = sum(r.count * r.torch_ms for r in rows)
    lines.append(f"| **all convs, × count** | | | {sum(r.count * r.gflop for r in rows):.0f} | "
                 f"**{js:.0f}** | **{ts:.0f}** | **{ts / js:.2f}** | |")
    return "\n".join(lines)


def main(argv):
    del argv
    f = flags.FLAGS
    rows, peaks = run(batch=f.batch, size=f.size, mode=f.mode, steps=f.steps, rounds=f.rounds)
    print(table(rows, peaks, batch=f.batch, size=f.size, mode=f.mode), flush=True)
    if f.json:
        print(jsonio.dumps({"rows": [dataclasses.asdict(r) for r in rows],
                          "xla_gemm_flops": peaks[0], "torch_gemm_flops": peaks[1]}))


if __name__ == "__main__":
    # Flags are defined here, not at import, so that tests can import the helpers above.
    flags.DEFINE_integer("batch", 4, "Batch size.")
    flags.DEFINE_integer("size", 256, "Square image size.")
    flags.DEFINE_enum("mode", "eval", ["eval", "train"], "Forward only, or forward + gradients.")
    flags.DEFINE_integer("steps", 3, "Timed calls per round (after one untimed call).")
    flags.DEFINE_integer("rounds", 3, "Alternating rounds (median is reported).")
    flags.DEFINE_bool("json", False, "Print one JSON line last.")
    app.run(main)
