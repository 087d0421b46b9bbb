"""Instance segmentation: boxes, classes and masks per object, scored by COCO mask AP.

Batches (derived on the host from the dataset's segmentation stream with instance ids, so every
augmentation moves image, masks and boxes together and an instance cropped away disappears):
  train: `{"image" [B, H, W, 3], "boxes" [B, M, 4] (x1, y1, x2, y2 pixels), "classes" [B, M]
  int32 (0 = padding slot), "masks" [B, M, H, W] float32, "num_instances" [B]}`, M =
  `config.instance.max_instances`; an image with more instances fails naming it and the key;
  eval: the padded segmentation batch (`"label"`, `"instance"`, `"valid"`, original size).
Loss: the model's train-mode output maps loss names to `(sum, count)` pairs (RPN objectness and
box regression, classifier, box regression, mask); the task adds them, each normalised by its own
*global* count. Evaluation: detections per image come back to the host, masks are pasted at the
image size (`segjax.ops.paste_masks` into each mask's frame: `mask_boxes` where the model gives
one, TensorMask's windows, else the detection box; threshold 0.5) and scored with pycocotools' COCOeval
(`segjax.metrics.coco`); checkpoints are ranked by `mask_ap`.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import jsonio, visualize
from segjax.metrics import coco
from segjax.tasks.base import Accumulator, StepContext, Task, class_palette
from segjax.tasks.registry import register, section

BEST_METRIC = "mask_ap"
LOGGED = ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75",
          "mask_ap_small", "mask_ap_medium", "mask_ap_large", "num_instances", "num_detections")


def check_instance_count(n: int, max_instances: int, row: int,
                         indices: Sequence[int] | None = None) -> None:
    """Raises ValueError naming batch row `row` (by its example index in `indices` if given) when
    its `n` instances exceed `max_instances`: instances are never silently dropped."""
    if n > max_instances:
        name = f"example index {indices[row]}" if indices is not None else f"batch row {row}"
        raise ValueError(f"{name} has {n} instances, more than config.instance.max_instances="
                         f"{max_instances}: raise it (instances are never silently dropped)")


def instance_targets(label: np.ndarray, instance: np.ndarray, *, max_instances: int,
                     ignore_label: int, indices: Sequence[int] | None = None
                     ) -> dict[str, np.ndarray]:
    """Padded per-image targets of a batch of class maps and instance-id maps [B, H, W].

    Returns boxes float32 [B, M, 4] (mask extents, x1 y1 x2 y2 pixel edges), classes int32
    [B, M] (0 = padding), masks float32 [B, M, H, W], num_instances int32 [B].

    Raises:
      ValueError: an image has more than `max_instances` instances (naming it by `indices`).
    """
    b, h, w = label.shape
    out = {"boxes": np.zeros((b, max_instances, 4), np.float32),
           "classes": np.zeros((b, max_instances), np.int32),
           "masks": np.zeros((b, max_instances, h, w), np.float32),
           "num_instances": np.zeros((b,), np.int32)}
    for i in range(b):
        classes, masks = coco.instances_from_maps(label[i], instance[i], ignore_label=ignore_label)
        n = len(classes)
        check_instance_count(n, max_instances, i, indices)
        out["classes"][i, :n] = classes
        out["masks"][i, :n] = masks
        out["boxes"][i, :n] = np.reshape([coco.mask_box(m) for m in masks], (n, 4))
        out["num_instances"][i] = n
    return out


def mask_frames(outputs) -> Any:
    """The boxes the masks of `outputs` live in: `mask_boxes` (TensorMask: the windows) when the
    model returns them, else the detection `boxes` (Mask R-CNN)."""
    return outputs["mask_boxes"] if "mask_boxes" in outputs else outputs["boxes"]


class InstanceAccumulator(Accumulator):
    """Pastes each valid image's detections and feeds them, with its ground truth, to COCOeval."""

    def __init__(self, num_classes: int, ignore_label: int, mask_threshold: float = 0.5):
        from segjax.ops import paste_masks

        self._coco = coco.CocoAccumulator(num_classes)
        self._ignore = ignore_label
        self._threshold = mask_threshold
        self._paste = jax.jit(paste_masks, static_argnums=2)

    def update(self, sums, per_example, batch) -> None:
        del sums
        canvas = tuple(np.shape(batch["label"])[1:3])
        probs = np.asarray(self._paste(per_example["mask_probs"], mask_frames(per_example), canvas))
        for i in range(len(batch["valid"])):
            if not bool(batch["valid"][i]):
                continue
            h, w = int(batch["height"][i]), int(batch["width"][i])
            gt_classes, gt_masks = coco.instances_from_maps(
                batch["label"][i, :h, :w], batch["instance"][i, :h, :w],
                ignore_label=self._ignore)
            d = int(per_example["num_detections"][i])
            self._coco.add_image(
                gt_classes=gt_classes, gt_masks=gt_masks,
                det_boxes=per_example["boxes"][i, :d], det_scores=per_example["scores"][i, :d],
                det_classes=per_example["classes"][i, :d],
                det_masks=probs[i, :d, :h, :w] >= self._threshold)

    def result(self) -> dict[str, Any]:
        return self._coco.result()


class InstanceTask(Task):
    """Mask R-CNN-style instance segmentation with `num_classes` classes counting background 0.

    Args:
      num_classes: K, with 0 the background (torchvision's convention).
      ignore_label: the dataset's.
      max_instances: M, the padded number of ground-truth slots per image.
      class_names, palette: for the pictures.
    """

    name = "instance"
    best_metric = BEST_METRIC
    model_output = "detections"
    train_keys = ("image", "boxes", "classes", "masks", "num_instances")
    eval_keys = ("image",)

    def __init__(self, *, num_classes: int, ignore_label: int, max_instances: int,
                 class_names: Sequence[str] | None = None, palette: np.ndarray | None = None):
        if max_instances is None or max_instances < 1:
            raise ValueError(f"config.instance.max_instances={max_instances} must be a positive "
                             "int for the instance task")
        self.num_classes, self.ignore_label = num_classes, ignore_label
        self.max_instances = max_instances
        self.class_names = tuple(class_names or (str(k) for k in range(num_classes)))
        self.palette = palette

    # -------------------------------------------------------------------------------- data

    def train_batches(self, data, *, batch_size, seed, start_step) -> Iterator[dict]:
        for batch in data.train(batch_size=batch_size, seed=seed, start_step=start_step,
                                with_instances=True):
            targets = instance_targets(batch["label"], batch["instance"],
                                       max_instances=self.max_instances,
                                       ignore_label=self.ignore_label, indices=batch["index"])
            yield {"image": batch["image"], **targets}

    def eval_batches(self, data, *, batch_size, pad_to):
        return data.eval(batch_size=batch_size, pad_to=pad_to, with_instances=True)

    # ---------------------------------------------------------------------------- training

    def model_inputs(self, batch, *, train):
        if not train:
            return (batch["image"],), {}
        targets = {k: batch[k] for k in ("boxes", "classes", "masks", "num_instances")}
        return (batch["image"],), {"targets": targets}

    def loss(self, outputs, batch, ctx: StepContext):
        """`(sum, count)` with count = this share's images, such that the global loss is the sum
        over the model's loss terms of (global term sum / global term count)."""
        images = jnp.float32(batch["image"].shape[0])
        global_images = ctx.global_sum(images)
        total = jnp.float32(0.0)
        for name in sorted(outputs):
            value = outputs[name]
            if not (isinstance(value, tuple) and len(value) == 2):
                continue
            term_sum, term_count = jnp.sum(value[0]), jnp.sum(value[1])  # per image or total
            # Counts are integers: dividing by max(count, 1) is torchvision's mean where a term has
            # a count and detectron2's max(1, #positives) normaliser (TensorMask) where it has none.
            scale = global_images / jnp.maximum(ctx.global_sum(term_count), 1.0)
            total = total + term_sum * jax.lax.stop_gradient(scale)
        return total, images

    # -------------------------------------------------------------------------- evaluation

    def eval_outputs(self, apply_fn, variables, batch):
        out = apply_fn(variables, batch["image"], train=False)
        keep = ("boxes", "scores", "classes", "num_detections", "mask_probs", "mask_boxes")
        return {}, {k: out[k] for k in keep if k in out}

    def new_accumulator(self) -> InstanceAccumulator:
        return InstanceAccumulator(self.num_classes, self.ignore_label)

    def logged_metrics(self, metrics):
        return {k: metrics[k] for k in LOGGED if k in metrics}

    def summary_line(self, metrics):
        def fmt(key):  # None: no ground truth to score against (COCOeval's -1)
            return "n/a" if metrics[key] is None else f"{metrics[key]:.4f}"

        return f"mask_ap {fmt('mask_ap')}  mask_ap50 {fmt('mask_ap50')}  box_ap {fmt('box_ap')}"

    def save_examples(self, out_dir, step, batch, per_example, *, limit, writer=None) -> int:
        """One picture per valid example: detections (score >= 0.5) drawn over the image next
        to the ground-truth instances."""
        from segjax.ops import paste_masks

        canvas = tuple(np.shape(batch["label"])[1:3])
        probs = np.asarray(jax.jit(paste_masks, static_argnums=2)(
            per_example["mask_probs"], mask_frames(per_example), canvas))

        def panel(i, h, w):
            d = int(per_example["num_detections"][i])
            return self.panel(batch, i, h, w, probs[i, :d, :h, :w] >= 0.5,
                              per_example["boxes"][i, :d], per_example["classes"][i, :d],
                              per_example["scores"][i, :d])

        return self.write_panels(out_dir, step, batch, panel, limit=limit, writer=writer)

    def panel(self, batch, i, h, w, masks, boxes, classes, scores, *extra) -> np.ndarray:
        """Row i's ground-truth instances | its detections of score >= 0.5 (bool masks [D, h, w],
        boxes, classes, scores), then any `extra` uint8 [h, w, 3] images (enlarged as they are)."""
        from segjax.data.pipeline import denormalize

        palette = self._palette()
        image = denormalize(np.asarray(batch["image"][i, :h, :w]))
        gt_classes, gt_masks = coco.instances_from_maps(
            batch["label"][i, :h, :w], batch["instance"][i, :h, :w], ignore_label=self.ignore_label)
        keep = np.asarray(scores) >= 0.5
        gt = visualize.draw_instances(image, gt_masks, [coco.mask_box(m) for m in gt_masks],
                                      gt_classes, palette=palette, class_names=self.class_names)
        pred = visualize.draw_instances(image, masks[keep], boxes[keep], classes[keep],
                                        palette=palette, class_names=self.class_names,
                                        scores=scores[keep])
        scale = gt.shape[0] // h  # draw_instances enlarges small images by an integer factor
        extra = [np.repeat(np.repeat(e, scale, 0), scale, 1) for e in extra]
        return visualize.side_by_side(gt, pred, *extra)

    # ------------------------------------------------------------- single-image inference

    @staticmethod
    def detections(outputs, hw: tuple[int, int], canvas_hw: tuple[int, int]
                   ) -> dict[str, np.ndarray]:
        """The first image's detections from the model's eval outputs on its input padded to
        `canvas_hw`, cropped to the image's `hw`: masks bool [D, H, W] (pasted, >= 0.5), boxes
        [D, 4], classes [D], scores [D]."""
        from segjax.ops import paste_masks

        h, w = hw
        d = int(outputs["num_detections"][0])
        boxes = outputs["boxes"][0, :d]
        frames = mask_frames(outputs)[0, :d]
        probs = np.asarray(paste_masks(outputs["mask_probs"][0, :d], frames, tuple(canvas_hw)))
        return {"masks": probs[:, :h, :w] >= 0.5, "boxes": np.asarray(boxes),
                "classes": np.asarray(outputs["classes"][0, :d]),
                "scores": np.asarray(outputs["scores"][0, :d])}

    def predictor(self, model, variables):
        """uint8 image [H, W, 3] -> its detections (`detections`: masks, boxes, classes,
        scores), the model compiled once per padded size."""
        from segjax.tasks.base import padded_input

        apply = jax.jit(lambda v, x: model.apply(v, x, train=False))

        def predict(image):
            x = padded_input(image)
            return self.detections(apply(variables, x), np.shape(image)[:2], x.shape[1:3])

        return predict

    def write_prediction(self, stem, image, prediction, *, alpha=0.5, score_thresh=0.5):
        """`<stem>_instances.png` (masks, boxes, class names and scores of the detections
        scoring >= `score_thresh`) and `<stem>_instances.json` (one object per detection)."""
        keep = prediction["scores"] >= score_thresh
        masks, boxes = prediction["masks"][keep], prediction["boxes"][keep]
        classes, scores = prediction["classes"][keep], prediction["scores"][keep]
        visualize.save_png(f"{stem}_instances.png", visualize.draw_instances(
            image, masks, boxes, classes, palette=self._palette(),
            class_names=self.class_names, scores=scores, alpha=alpha))
        jsonio.dump([{"class": self.class_names[int(c)], "class_id": int(c),
                      "score": float(sc), "box": [float(v) for v in b], "area": int(m.sum())}
                     for m, b, c, sc in zip(masks, boxes, classes, scores)],
                    f"{stem}_instances.json", indent=1)
        return [f"{stem}_instances.png", f"{stem}_instances.json"]

    def _palette(self) -> np.ndarray:
        return class_palette(self.num_classes, self.palette)


def defaults() -> ml_collections.ConfigDict:
    """The instance task's config section."""
    c = ml_collections.ConfigDict()
    c.instance = ml_collections.ConfigDict()
    # Ground-truth slots per image (static shapes); an image with more fails, naming the key.
    c.instance.max_instances = 100
    return c


@register("instance", defaults=defaults, ranges={"instance.max_instances": "[1, inf)"})
def build(config: ml_collections.ConfigDict, info, data_dir: str | None) -> InstanceTask:
    """The instance task of a run: `config.instance.max_instances` ground-truth slots."""
    del data_dir
    return InstanceTask(num_classes=info.num_classes, ignore_label=info.ignore_label,
                        max_instances=section(config, "instance", "instance").max_instances,
                        class_names=info.class_names, palette=info.palette)
