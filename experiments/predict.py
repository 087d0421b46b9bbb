r"""Writes colour-coded masks and overlays for images, using a trained work directory.

    python -m experiments.predict --workdir=/tmp/demo --images='/data/*.jpg' --out=/tmp/preds \
      [--checkpoint=latest|best|STEP]

For each image `NAME.ext` a semantic model writes `NAME_mask.png` (colours = the dataset
palette), `NAME_overlay.png` (mask blended over the image) and `NAME_labels.png` (class ids as
grey values); an instance model (Mask R-CNN) or an embedding model (`unet_embedding`: instances
by the run's `config.embedding.cluster` clustering) writes `NAME_instances.png` (masks, boxes,
class names and scores of the detections scoring >= `--score_thresh`) and
`NAME_instances.json`. The model, dataset palette and eval options (TTA, sliding window) come
from the work dir's config.json; images are normalised by `segjax.data.pipeline.preprocess_image`.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (`__main__`), so that
    importing this module next to another command's (tests do) cannot collide on a name."""
    flags.DEFINE_string("workdir", None, "Training work directory (config.json + checkpoints/).")
    flags.DEFINE_string("images", None, "Glob of input images (any format Pillow reads).")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")
    flags.DEFINE_float("alpha", 0.5, "Mask opacity of the overlays.")
    flags.DEFINE_float("score_thresh", 0.5, "Instance models: detections drawn and listed.")
    flags.mark_flags_as_required(["workdir", "images", "out"])


def _instances(apply_fn, variables, x, h, w, score_thresh):
    """(masks bool [D, h, w], boxes [D, 4], classes [D], scores [D]) of one padded image."""
    import numpy as np

    from segjax.ops import paste_masks

    out = apply_fn(variables, x)
    d = int(out["num_detections"][0])
    boxes, scores = np.asarray(out["boxes"][0, :d]), np.asarray(out["scores"][0, :d])
    keep = scores >= score_thresh
    probs = np.asarray(paste_masks(out["mask_probs"][0, :d], out["boxes"][0, :d], x.shape[1:3]))
    return (probs[keep, :h, :w] >= 0.5, boxes[keep], np.asarray(out["classes"][0, :d])[keep],
            scores[keep])


def predict_files(workdir: str, paths: list[str], out_dir: str, *, checkpoint: str = "latest",
                  alpha: float = 0.5, score_thresh: float = 0.5) -> list[str]:
    """Predicts every image in `paths` and writes its PNGs to `out_dir`; returns written paths.

    Images are padded bottom/right to a multiple of 32 (with the mean pixel, i.e. 0 after
    normalisation, as the eval pipeline pads) and predictions cropped back to the original size.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from PIL import Image

    from segjax import visualize
    from segjax.tasks import semantic_predict as evaluate
    from segjax.data.pipeline import preprocess_image
    from segjax.models.registry import model_output
    from segjax.train import build

    config, info, model, variables = build.load_for_inference(workdir, checkpoint)
    kind = model_output(config.model.name)
    if kind not in ("semantic", "instance", "embedding"):
        raise ValueError(f"{workdir}: a {kind!r} model ({config.model.name}) does not segment "
                         "single images; predict handles semantic, instance and embedding runs")
    instance = kind in ("instance", "embedding")
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

    detect = jax.jit(lambda v, x: model.apply(v, x, train=False))
    if kind == "embedding":
        from segjax.tasks.base import plain_dict
        from segjax.tasks.embedding import embedding_instances

        cluster_kwargs = plain_dict((config.get("embedding") or {}).get("cluster") or {})

        def find(variables, x, h, w, score_thresh):
            out = detect(variables, x)
            det = embedding_instances(np.asarray(jax.nn.softmax(out["logits"][0, :h, :w], -1)),
                                      np.asarray(out["embeddings"][0, :h, :w]), **cluster_kwargs)
            keep = det["scores"] >= score_thresh
            return det["masks"][keep], det["boxes"][keep], det["classes"][keep], det["scores"][keep]
    else:
        find = functools.partial(_instances, detect)
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
        stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
        if instance:
            masks, boxes, classes, scores = find(variables, x, h, w, score_thresh)
            visualize.save_png(f"{stem}_instances.png", visualize.draw_instances(
                image, masks, boxes, classes, palette=info.palette,
                class_names=info.class_names, scores=scores, alpha=alpha))
            with open(f"{stem}_instances.json", "w") as f:
                json.dump([{"class": info.class_names[int(c)], "class_id": int(c),
                            "score": float(sc), "box": [float(v) for v in b],
                            "area": int(m.sum())} for m, b, c, sc in
                           zip(masks, boxes, classes, scores)], f, indent=1)
            written += [f"{stem}_instances.png", f"{stem}_instances.json"]
            print(f"{path} -> {stem}_instances.{{png,json}} ({len(scores)} instances)",
                  flush=True)
            continue
        pred = np.asarray(predict(variables, x))[0, :h, :w]
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
                      alpha=FLAGS.alpha, score_thresh=FLAGS.score_thresh)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
