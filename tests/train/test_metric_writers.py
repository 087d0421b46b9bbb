"""metrics.jsonl writer: deterministic lines, NaN as null, truncation on resume; progress line."""

import io
import json
import math

import numpy as np

from segjax.train.metric_writers import MetricWriter, Progress, read_metrics


def test_jsonl_lines_truncate_and_nan(tmp_path):
    w = MetricWriter(str(tmp_path), tensorboard=False)
    w.write(1, "train", {"loss": np.float32(0.5)}, extra_scalars={"images_per_s": 3.0})
    w.write(2, "train", {"loss": 0.25})
    w.write(2, "val", {"miou": 0.5, "iou_per_class": np.array([1.0, math.nan])})
    w.write(3, "train", {"loss": 0.125})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 1, "split": "train", "loss": 0.5}  # no timing
    assert json.loads(lines[2])["iou_per_class"] == [1.0, None]  # strict JSON, no NaN token
    w.truncate_after(2)
    assert [(r["step"], r["split"]) for r in read_metrics(str(tmp_path))] == [
        (1, "train"), (2, "train"), (2, "val")]
    w.close()


def test_disabled_writer_writes_nothing(tmp_path):
    w = MetricWriter(str(tmp_path / "x"), enabled=False)
    w.write(1, "train", {"loss": 1.0})
    w.truncate_after(0)
    assert not (tmp_path / "x").exists()


def test_tensorboard_events_written(tmp_path):
    w = MetricWriter(str(tmp_path))
    w.write(1, "train", {"loss": 0.5})
    w.write_images(1, {"pred": np.zeros((4, 5, 3), np.uint8)})
    w.close()
    assert any(p.name.startswith("events.out.tfevents") and p.stat().st_size > 0
               for p in tmp_path.iterdir())


def test_progress_line_rate_and_eta(monkeypatch):
    clock = iter([0.0, 10.0, 30.0])
    monkeypatch.setattr("segjax.train.metric_writers.time.perf_counter", lambda: next(clock))
    out = io.StringIO()
    p = Progress(total_steps=100, global_batch=8, first_step=0, stream=out)
    assert p.update(10, 1.5) == 8.0  # 10 steps x 8 images in 10 s
    p.exclude(10.0)  # e.g. an eval
    assert p.update(20, 1.25) == 8.0
    assert out.getvalue().splitlines() == [
        "step 10/100  loss 1.5000  8.0 img/s  ETA 0:01:30",
        "step 20/100  loss 1.2500  8.0 img/s  ETA 0:01:20"]
