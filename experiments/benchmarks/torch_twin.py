"""The torchvision side of the step benchmarks (imported only with --compare=torchvision).

Same architecture, same optimiser (SGD, momentum 0.9, weight decay 1e-4), same loss
(cross-entropy, ignore 255), channels_last; bfloat16 runs use autocast (AMP).

`TwinProcess` runs the twin in a child process (`python -m experiments.benchmarks.torch_twin`,
driven over its stdin/stdout), so that the two libraries' heaps, thread pools and peak-memory
accounting stay apart, and times steady steps: one untimed step before each timed round.
The optimiser runs at lr = 0 (`STATIONARY_LR`) so the weights, and with them the data-dependent
work of the detection twin, stay those of the first step (see `step_bench`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Callable

import numpy as np
import torch
import torchvision

from experiments.benchmarks import common
from experiments.benchmarks.common import IGNORE_LABEL, TORCHVISION_TWINS
from segjax import jsonio


STATIONARY_LR = 0.0  # every step does a full update's work without changing the weights


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def detection_model(name: str, num_classes: int, size: int) -> torch.nn.Module:
    """torchvision's twin of segjax instance model `name` as the benchmarks run it."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    if common.TORCHVISION_DETECTION_TWINS.get(name) != "maskrcnn_resnet50_fpn":
        raise ValueError(f"torchvision has no detection twin of {name!r}")
    backbone = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d),
                                     common.TRAINABLE_BACKBONE_LAYERS)
    model = MaskRCNN(backbone, num_classes=num_classes, min_size=size, max_size=size,
                     box_score_thresh=common.BENCH_BOX_SCORE_THRESH)
    if common.ZERO_RPN_DELTAS:
        with torch.no_grad():
            model.rpn.head.bbox_pred.weight.zero_()
            model.rpn.head.bbox_pred.bias.zero_()
    return model


def build_detection(name: str, num_classes: int, batch: dict[str, np.ndarray], dtype: str,
                    train: bool) -> tuple[Callable[[], None], float]:
    """(step_fn, first_step_seconds) for torchvision's Mask R-CNN at min_size=max_size=S: the
    pretrained-backbone set-up (FrozenBatchNorm2d, the last `TRAINABLE_BACKBONE_LAYERS` stages
    trained), the sum of its five losses in train mode, the whole detector in eval mode."""
    device = _device()
    model = detection_model(name, num_classes, batch["image"].shape[1]).to(device)
    images = [torch.from_numpy(im.transpose(2, 0, 1).copy()).to(device) for im in batch["image"]]
    targets = []
    for i, n in enumerate(batch["num_instances"]):
        targets.append({"boxes": torch.from_numpy(batch["boxes"][i, :n]).to(device),
                        "labels": torch.from_numpy(batch["classes"][i, :n].astype(np.int64)).to(device),
                        "masks": torch.from_numpy(batch["masks"][i, :n]).to(device)})
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=STATIONARY_LR,
                          momentum=0.9, weight_decay=1e-4)
    return _timed_step(model, opt, amp, device, train,
                       loss=lambda: sum(v.float() for v in model(images, targets).values()),
                       forward=lambda: model(images))


def _timed_step(model, opt, amp, device, train: bool, *, loss: Callable[[], torch.Tensor],
                forward: Callable[[], object]) -> tuple[Callable[[], None], float]:
    """(step_fn, first_step_seconds): an SGD step on `loss()` in train mode, or `forward()`
    without gradients in eval mode, under `amp`, synchronised."""
    if train:
        model.train()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with amp:
                value = loss()
            value.backward()
            opt.step()
            _sync(device)
    else:
        model.eval()

        @torch.no_grad()
        def step() -> None:
            with amp:
                forward()
            _sync(device)

    t0 = time.perf_counter()
    step()
    return step, time.perf_counter() - t0


def build(name: str, num_classes: int, batch: dict[str, np.ndarray], dtype: str,
          train: bool) -> tuple[Callable[[], None], float]:
    """Returns (step_fn, first_step_seconds) for the torchvision twin of segjax model `name`."""
    if name in common.TORCHVISION_DETECTION_TWINS:
        return build_detection(name, num_classes, batch, dtype, train)
    ctor = getattr(torchvision.models.segmentation, TORCHVISION_TWINS[name])
    device = _device()
    model = ctor(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    model = model.to(device=device, memory_format=torch.channels_last)
    images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(batch["label"].astype(np.int64)).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_LABEL)
    opt = torch.optim.SGD(model.parameters(), lr=STATIONARY_LR, momentum=0.9, weight_decay=1e-4)
    return _timed_step(model, opt, amp, device, train,
                       loss=lambda: loss_fn(model(images)["out"].float(), labels),
                       forward=lambda: model(images)["out"].argmax(1))


class TwinProcess:
    """The torchvision twin of segjax model `name`, built and timed in a child process.

    `module` is the child's module (another twin serving the same protocol, e.g.
    `torch_unet3d`; `extra` joins its spec line). `first_step_s` is its first (warm-up) step;
    `seconds_per_step(n)` runs one untimed and `n` timed steps there and returns the timed steps'
    mean wall time as the child measured it (no IPC in the timing).
    """

    def __init__(self, name: str, num_classes: int, batch: int, size: int, dtype: str,
                 train: bool, seed: int = 0, *, module: str = "experiments.benchmarks.torch_twin",
                 **extra):
        spec = dict(name=name, num_classes=num_classes, batch=batch, size=size, dtype=dtype,
                    train=train, seed=seed, **extra)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", module], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1)
        self.first_step_s = float(self._ask(jsonio.dumps(spec))["first_step_s"])

    def _ask(self, line: str) -> dict:
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        reply = self._proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the torchvision twin process exited (code {self._proc.wait()}); "
                               "its error is printed above")
        return json.loads(reply)

    def seconds_per_step(self, n: int) -> float:
        return float(self._ask(str(n))["seconds_per_step"])

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=60)


def _serve() -> None:
    """Child side of `TwinProcess`: a JSON spec line, then one step count per line."""
    import os

    from experiments.benchmarks.common import synthetic_batch, synthetic_instances

    # Replies go to the original stdout; anything else printing there (Python or C) goes to
    # stderr instead, so it cannot corrupt the protocol.
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    spec = json.loads(sys.stdin.readline())
    make = synthetic_instances if spec["name"] in common.TORCHVISION_DETECTION_TWINS else synthetic_batch
    data = make(spec["batch"], spec["size"], spec["num_classes"], seed=spec["seed"])
    torch.manual_seed(spec["seed"])  # the same random weights, hence the same detector workload, every run
    step, first = build(spec["name"], spec["num_classes"], data, spec["dtype"], spec["train"])
    print(jsonio.dumps({"first_step_s": first}), file=replies, flush=True)
    for line in sys.stdin:
        n = int(line)
        step()  # untimed: the first step after the other side ran is not a steady one
        start = time.perf_counter()
        for _ in range(n):
            step()
        print(jsonio.dumps({"seconds_per_step": (time.perf_counter() - start) / n}), file=replies,
              flush=True)


if __name__ == "__main__":
    _serve()
