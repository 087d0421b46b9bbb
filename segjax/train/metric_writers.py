"""Metric writers: `metrics.jsonl`, TensorBoard events, and the console progress line.

`metrics.jsonl` holds one JSON object per line with `step` and `split` ("train" or the eval split)
and only deterministic values (no wall-clock fields), so two runs with the same seed write the
same file byte for byte. Timing goes to the console and TensorBoard only. NaN becomes `null`.
Only process 0 writes; on other processes every method is a no-op.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping

import numpy as np

from segjax import jsonio

METRICS_FILE = "metrics.jsonl"


# JSON-ready copy: numpy/jax scalars and arrays to Python, NaN/inf to None (`null`).
_plain = jsonio.finite_or_none


def read_metrics(workdir: str) -> list[dict]:
    """All records of `<workdir>/metrics.jsonl` in order ([] if the file is missing)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    """Writes metrics of one run to `workdir` (jsonl + TensorBoard) on process 0.

    Args:
      workdir: run directory (created if missing).
      enabled: False on processes other than 0.
      tensorboard: also write TensorBoard event files (tensorboardX).
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.workdir = workdir
        self.enabled = enabled
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter  # imported lazily: pulls in protobuf

                self._tb = SummaryWriter(logdir=workdir, flush_secs=30)

    def truncate_after(self, step: int) -> None:
        """Drops records with `step` > `step` (written after the checkpoint a resume starts from).

        A rerun then appends exactly what the uninterrupted run would have written.
        """
        if not self.enabled:
            return
        records = [r for r in read_metrics(self.workdir) if r["step"] <= step]
        path = os.path.join(self.workdir, METRICS_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            for r in records:
                f.write(jsonio.dumps(r, where=path) + "\n")
        os.replace(tmp, path)

    def write(self, step: int, split: str, metrics: Mapping[str, Any], *,
              extra_scalars: Mapping[str, float] | None = None) -> None:
        """Appends `{"step", "split", **metrics}` to metrics.jsonl; scalars also to TensorBoard.

        `extra_scalars` (e.g. images/s) go to TensorBoard only, keeping the jsonl deterministic.
        """
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **_plain(dict(metrics))}
        with open(os.path.join(self.workdir, METRICS_FILE), "a") as f:
            f.write(jsonio.dumps(record, where=METRICS_FILE) + "\n")
        if self._tb is not None:
            scalars = dict(metrics)
            scalars.update(extra_scalars or {})
            for key, value in scalars.items():
                if np.ndim(value) == 0 and value is not None:
                    self._tb.add_scalar(f"{split}/{key}", float(value), int(step))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """TensorBoard images: `{tag: uint8 [H, W, 3]}`."""
        if self.enabled and self._tb is not None:
            for tag, image in images.items():
                self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """Console progress line: step, loss, images/s and ETA, measured between calls.

    Args:
      total_steps: last step of the run.
      global_batch: images per step (all devices).
      first_step: step the run starts from (resume).
      enabled: print only on process 0.
    """

    def __init__(self, total_steps: int, global_batch: int, *, first_step: int = 0,
                 enabled: bool = True, stream=None):
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.enabled = enabled
        self._stream = stream or sys.stdout
        self._last_step = first_step
        self._last_time = time.perf_counter()

    def update(self, step: int, loss: float) -> float:
        """Prints one line and returns images/s since the previous call."""
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        dt = max(now - self._last_time, 1e-9)
        images_per_s = steps * self.global_batch / dt
        eta = (self.total_steps - step) * dt / steps
        self._last_step, self._last_time = step, now
        if self.enabled:
            print(f"step {step}/{self.total_steps}  loss {loss:.4f}  {images_per_s:.1f} img/s  "
                  f"ETA {_hms(eta)}", file=self._stream, flush=True)
        return images_per_s

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` (an eval, a checkpoint) out of the next images/s and ETA."""
        self._last_time += seconds


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
