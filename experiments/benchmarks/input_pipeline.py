"""Input-pipeline throughput on VOC-sized JPEGs (~500x375) with a 513 crop, per thread count.

    python -m experiments.benchmarks.input_pipeline [--images=96] [--batch=8] [--steps=10]
        [--threads=1,2] [--crop=513] [--json]

Writes a fake VOC 2012 + SBD tree of smooth random JPEGs (realistic JPEG sizes) into a temp dir,
builds `voc2012_segmentation` from it, then times `train_batches` (decode, random scale 0.5-2,
pad, crop, flip, normalise) and `eval_batches` (decode, pad to max(crop, 500)) with the tf.data thread pool
limited to each thread count. Prints a Markdown table of images/s (and JSON lines with --json).
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

from experiments import cli
from segjax import jsonio

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined under `__main__` only, like every command's)."""
    flags.DEFINE_integer("images", 96, "Training images of the fake VOC tree.")
    flags.DEFINE_integer("batch", 8, "Batch size.")
    flags.DEFINE_integer("steps", 10, "Timed batches per thread count.")
    flags.DEFINE_integer("crop", 513, "Training crop size.")
    flags.DEFINE_list("threads", ["1", "2"], "tf.data thread counts.")
    flags.DEFINE_bool("json", False, "Also print one JSON line per thread count.")


def _smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    low = Image.fromarray(rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8))
    image = np.asarray(low.resize((width, height), Image.BICUBIC), np.float32)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def write_fake_voc(root: str, num_images: int, seed: int = 0) -> str:
    """Writes `root/VOCdevkit/VOC2012` (num_images train + 8 val) and a one-image SBD tree;
    returns `root` (the manual dir)."""
    from segjax.data.datasets import voc_palette
    rng = np.random.default_rng(seed)
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    sbd = os.path.join(root, "benchmark_RELEASE", "dataset")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    ids = [f"2012_{i:06d}" for i in range(num_images + 8)]
    for i, image_id in enumerate(ids):
        height, width = (375, 500) if i % 3 else (500, 375)
        Image.fromarray(_smooth_image(rng, height, width)).save(
            os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), quality=90)
        mask = Image.fromarray(
            (rng.integers(0, 21) * (rng.random((height, width)) < 0.5)).astype(np.uint8), "P")
        mask.putpalette(voc_palette().ravel().tolist())
        mask.save(os.path.join(voc, "SegmentationClass", f"{image_id}.png"))
    with open(os.path.join(voc, "ImageSets/Segmentation/train.txt"), "w") as f:
        f.write("\n".join(ids[:num_images]))
    with open(os.path.join(voc, "ImageSets/Segmentation/val.txt"), "w") as f:
        f.write("\n".join(ids[num_images:]))
    os.makedirs(os.path.join(sbd, "cls"), exist_ok=True)
    os.makedirs(os.path.join(sbd, "img"), exist_ok=True)
    for name in ("train.txt", "val.txt"):
        with open(os.path.join(sbd, name), "w") as f:
            f.write(ids[0])
    return root


def _rate(iterator, batch: int, steps: int) -> float:
    next(iterator)  # warm-up: tracing, first reads
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return batch * steps / (time.perf_counter() - start)


def benchmark(*, images: int = 96, batch: int = 8, steps: int = 10, crop: int = 513,
              threads=(1, 2), as_json: bool = False) -> None:
    """Runs the benchmark and prints the table (and JSON lines with `as_json`)."""
    import tensorflow_datasets as tfds

    import segjax.data as data
    tfds.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        manual = write_fake_voc(os.path.join(tmp, "manual"), images)
        start = time.perf_counter()
        data.prepare("voc2012", os.path.join(tmp, "tfds"), manual_dir=manual)
        build_s = time.perf_counter() - start
        print(f"built {images + 8} VOC-sized examples in {build_s:.1f} s\n")
        pad = max(crop, 500)  # eval pads whole images: VOC's largest side is 500
        print(f"| tf.data threads | train img/s (crop {crop}) | eval img/s (pad {pad}) |")
        print("|---|---|---|")
        for num_threads in (int(t) for t in threads):
            train = data.train_batches(
                "voc2012", split="train", batch_size=batch, crop_size=crop, seed=0,
                data_dir=os.path.join(tmp, "tfds"), num_threads=num_threads)
            train_rate = _rate(train, batch, steps)
            evaluate = data.eval_batches(
                "voc2012", split="train", batch_size=batch, pad_to=pad,
                data_dir=os.path.join(tmp, "tfds"), num_threads=num_threads)
            eval_rate = _rate(evaluate, batch, min(steps, images // batch - 1))
            print(f"| {num_threads} | {train_rate:.1f} | {eval_rate:.1f} |")
            if as_json:
                print(jsonio.dumps({"threads": num_threads, "train_img_per_s": round(train_rate, 2),
                                  "eval_img_per_s": round(eval_rate, 2), "crop": crop}))


def main(argv) -> None:
    cli.no_arguments(argv)
    benchmark(images=FLAGS.images, batch=FLAGS.batch, steps=FLAGS.steps, crop=FLAGS.crop,
              threads=FLAGS.threads, as_json=FLAGS.json)


if __name__ == "__main__":
    cli.run(main, define_flags)
