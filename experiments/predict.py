r"""Predicts images with a trained run and writes what its task draws.

    python -m experiments.predict --run=/tmp/demo --images='/data/*.jpg' --workdir=/tmp/preds \
      [--checkpoint=latest|best|STEP]

The run's task predicts each image of any size and draws it (`Task.predictor`,
`Task.write_prediction`): a semantic run writes `NAME_mask.png` (colours = the dataset palette),
`NAME_overlay.png` and `NAME_labels.png` (class ids as grey values), with the run's eval options
(TTA, sliding window); an instance run (Mask R-CNN) or an embedding run (instances by the run's
`config.embedding.cluster`) writes `NAME_instances.png` (detections scoring >= `--score_thresh`)
and `NAME_instances.json`. Tasks whose model needs more than one image (oracle, few-shot) are
refused by name.
"""

from __future__ import annotations

import glob
import os

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    flags.DEFINE_string("run", None, "The trained run read (its work dir: config.json + "
                        "checkpoints/).")
    flags.DEFINE_string("images", None, "Glob of input images (any format Pillow reads).")
    flags.DEFINE_string("workdir", None, "Output directory (written).")
    flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")
    flags.DEFINE_float("alpha", 0.5, "Mask opacity of the overlays.")
    flags.DEFINE_float("score_thresh", 0.5, "Detections drawn and listed (instance tasks).")
    flags.mark_flags_as_required(["run", "images", "workdir"])


def predict_files(run_dir: str, paths: list[str], out_dir: str, *, checkpoint: str = "latest",
                  alpha: float = 0.5, score_thresh: float = 0.5) -> list[str]:
    """Predicts every image in `paths` with the run in `run_dir` and writes its task's pictures
    to `out_dir`; returns the written paths."""
    import numpy as np
    from PIL import Image

    from segjax.train.restore import load_run

    for path in paths:  # every image is checked before anything is loaded or written
        _check_image(path)
    run = load_run(run_dir, checkpoint)
    predict = run.task.predictor(run.model, run.variables)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in paths:
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except OSError as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
        stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
        outputs = run.task.write_prediction(stem, image, predict(image), alpha=alpha,
                                            score_thresh=score_thresh)
        written += outputs
        print(f"{path} -> {', '.join(os.path.basename(p) for p in outputs)}", flush=True)
    return written


def _check_image(path: str) -> None:
    """Refuses, naming it, a file Pillow cannot read as an image (empty, truncated, not an
    image) or an image with no pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()  # the file's structure and checksums, without decoding it
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    if min(size) < 1:
        raise ValueError(f"image {path} has no pixels (size {size[0]}x{size[1]})")


def main(argv):
    cli.no_arguments(argv)
    paths = sorted(glob.glob(FLAGS.images))
    if not paths:
        raise ValueError(f"no file matches --images={FLAGS.images!r}")
    predict_files(FLAGS.run, paths, FLAGS.workdir, checkpoint=FLAGS.checkpoint,
                  alpha=FLAGS.alpha, score_thresh=FLAGS.score_thresh)


if __name__ == "__main__":
    cli.run(main, define_flags)
