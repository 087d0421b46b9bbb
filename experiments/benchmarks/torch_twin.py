"""The torchvision side of the step benchmarks (imported only with --compare=torchvision).

Same architecture, same optimiser (SGD, momentum 0.9, weight decay 1e-4), same loss
(cross-entropy, ignore 255), channels_last; bfloat16 runs use autocast (AMP).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torchvision

from experiments.benchmarks.common import IGNORE_LABEL, TORCHVISION_TWINS


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(name: str, num_classes: int, batch: dict[str, np.ndarray], dtype: str,
          train: bool) -> tuple[Callable[[], None], float]:
    """Returns (step_fn, first_step_seconds) for the torchvision twin of segjax model `name`."""
    ctor = getattr(torchvision.models.segmentation, TORCHVISION_TWINS[name])
    device = _device()
    model = ctor(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    model = model.to(device=device, memory_format=torch.channels_last)
    images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(batch["label"].astype(np.int64)).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_LABEL)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

    if train:
        model.train()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with amp:
                out = model(images)["out"]
            loss = loss_fn(out.float(), labels)
            loss.backward()
            opt.step()
            _sync(device)
    else:
        model.eval()

        @torch.no_grad()
        def step() -> None:
            with amp:
                out = model(images)["out"]
            out.argmax(1)
            _sync(device)

    t0 = time.perf_counter()
    step()
    return step, time.perf_counter() - t0
