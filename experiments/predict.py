r"""Writes colour-coded masks and overlays for images, using a trained work directory.

    python -m experiments.predict --workdir=/tmp/demo --images='/data/*.jpg' --out=/tmp/preds \
      [--checkpoint=latest|best|STEP]

For each image `NAME.ext` it writes `NAME_mask.png` (colours = the dataset palette),
`NAME_overlay.png` (mask blended over the image) and `NAME_labels.png` (class ids as grey
values). The model, dataset palette and eval options (TTA, sliding window) come from the work
dir's config.json; images are normalised by `segjax.data.pipeline.preprocess_image`.
"""

from __future__ import annotations

import glob
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training work directory (config.json + checkpoints/).")
flags.DEFINE_string("images", None, "Glob of input images (any format Pillow reads).")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")
flags.DEFINE_float("alpha", 0.5, "Mask opacity of the overlays.")
flags.mark_flags_as_required(["workdir", "images", "out"])


def predict_files(workdir: str, paths: list[str], out_dir: str, *, checkpoint: str = "latest",
                  alpha: float = 0.5) -> list[str]:
    """Predicts every image in `paths` and writes its PNGs to `out_dir`; returns written paths.

    Images are padded bottom/right to a multiple of 32 (with the mean pixel, i.e. 0 after
    normalisation, as the eval pipeline pads) and predictions cropped back to the original size.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from PIL import Image

    from segjax import evaluate, visualize
    from segjax.data.pipeline import preprocess_image
    from segjax.train import build

    config, info, model, variables = build.load_for_inference(workdir, checkpoint)
    ev = config.eval
    apply_fn = evaluate.model_apply_fn(model)

    @jax.jit
    def predict(variables, image):
        probs = evaluate.predict_probs(
            apply_fn, variables, image,
            scales=tuple(ev.tta_scales) if ev.tta else (1.0,), flip=bool(ev.tta and ev.tta_flip),
            window=ev.window if ev.sliding_window else None,
            stride=ev.stride if ev.sliding_window else None)
        return jnp.argmax(probs, -1)

    written = []
    for path in paths:
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except OSError as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
        h, w = image.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        x = np.zeros((1, ph, pw, 3), np.float32)
        x[0, :h, :w] = preprocess_image(image)
        pred = np.asarray(predict(variables, x))[0, :h, :w]
        stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
        outputs = {
            f"{stem}_mask.png": visualize.colorize(pred, info.palette),
            f"{stem}_overlay.png": visualize.overlay(image, pred, info.palette, alpha=alpha),
            f"{stem}_labels.png": pred.astype(np.uint8),
        }
        for out_path, array in outputs.items():
            visualize.save_png(out_path, array)
            written.append(out_path)
        print(f"{path} -> {stem}_{{mask,overlay,labels}}.png", flush=True)
    return written


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    paths = sorted(glob.glob(FLAGS.images))
    if not paths:
        print(f"error: no file matches --images={FLAGS.images!r}", file=sys.stderr)
        sys.exit(1)
    try:
        predict_files(FLAGS.workdir, paths, FLAGS.out, checkpoint=FLAGS.checkpoint,
                      alpha=FLAGS.alpha)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
