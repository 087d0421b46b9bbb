"""Figure 12: "highlight a tumour within an MRI scan" and "Deep learning for 3D".

(a) A `synthetic_volumes` volume cut by the axial, coronal and sagittal planes through its
lesions, with the truth (and, from a trained `unet3d.py:demo` run, the prediction: normalised as
the run's task normalises, blended window by window with `segjax.inference.sliding_window_inference`
at the run's patch size); (b) a `synthetic_parts` point cloud coloured by part (and, from a trained
`pointnet.py:demo` run, by predicted part, restricted to the shape's category as the task
evaluates). Without a run each panel shows the truth alone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

VOLUME_CONFIG = "clean"
PARTS_CONFIG = "default"
PARTS_INDEX = 1  # a lamp (example i has category i mod 4): three parts
LESIONS = (2, 3)  # synthetic_volumes' lesion A and lesion B


def lesion_slices(label: np.ndarray) -> list[int]:
    """(d, h, w) of the planes through the centroid of the lesion voxels of `label` [D, H, W]
    (the organ's when there is no lesion)."""
    mask = np.isin(label, LESIONS)
    if not mask.any():
        mask = label > 0
    if not mask.any():
        return [s // 2 for s in label.shape]
    return [int(round(float(c.mean()))) for c in np.nonzero(mask)]


def dice_per_class(pred: np.ndarray, label: np.ndarray, num_classes: int) -> list[float]:
    """Dice 2|P ∩ G| / (|P| + |G|) of classes 1 .. num_classes - 1 over the whole volume (1.0
    where a class is in neither)."""
    out = []
    for k in range(1, num_classes):
        p, g = pred == k, label == k
        total = int(p.sum()) + int(g.sum())
        out.append(1.0 if total == 0 else 2.0 * int((p & g).sum()) / total)
    return out


def part_ious(pred: np.ndarray, part: np.ndarray, parts: np.ndarray) -> list[float]:
    """ShapeNet-part's IoU of each global part id in `parts` over one shape's points (1.0 where
    a part is in neither the prediction nor the truth)."""
    out = []
    for k in parts:
        p, g = pred == k, part == k
        union = int((p | g).sum())
        out.append(1.0 if union == 0 else int((p & g).sum()) / union)
    return out


def predict_volume(apply_fn, variables, image: np.ndarray, *, roi_size, normalize: str,
                   overlap: float = 0.5, sigma_scale: float = 0.125,
                   sw_batch_size: int = 4) -> np.ndarray:
    """int32 `[D, H, W]`: arg-max of the Gaussian-blended sliding-window softmax of
    `apply_fn(variables, windows, train=False)["logits"]` over `image` `[D, H, W, C]`, normalised
    first with `segjax.tasks.volumetric.normalize_volume(image, normalize)`."""
    from segjax.inference import sliding_window_inference
    from segjax.tasks.volumetric import normalize_volume

    forward = jax.jit(lambda v, x: jax.nn.softmax(apply_fn(v, x, train=False)["logits"], axis=-1))
    probs = sliding_window_inference(functools.partial(forward, variables),
                                     normalize_volume(image, normalize)[None], roi_size,
                                     overlap=overlap, mode="gaussian", sigma_scale=sigma_scale,
                                     sw_batch_size=sw_batch_size)
    return np.asarray(jnp.argmax(probs[0], axis=-1), np.int32)


def predict_parts(apply_fn, variables, points: np.ndarray, category: int, *,
                  use_categories: bool) -> np.ndarray:
    """int32 `[P]`: the part of each of `points` `[P, 3]`, the arg-max of
    `apply_fn(variables, points[None], train=False[, categories=[category]])["logits"]` over the
    parts of `category` only (`segjax.metrics.parts.restrict_to_category`, as the task evaluates)."""
    from segjax.data.builders.synthetic_parts import PART_CATEGORY
    from segjax.metrics.parts import restrict_to_category

    categories = jnp.asarray([category], jnp.int32)
    kwargs = {"categories": categories} if use_categories else {}
    logits = apply_fn(variables, jnp.asarray(points)[None], train=False, **kwargs)["logits"]
    return np.asarray(restrict_to_category(logits, categories, jnp.asarray(PART_CATEGORY)))[0]


def volume_panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray | None,
                 class_names) -> dict:
    """Panel (a): the three orthogonal slices through the lesions of `image` [D, H, W, C] (first
    channel), `label` and `pred` [D, H, W] (or None), and the Dice of each foreground class."""
    d, h, w = lesion_slices(label)
    cut = {"axial": lambda a: a[d], "coronal": lambda a: a[:, h], "sagittal": lambda a: a[:, :, w]}
    out = {"shape": list(label.shape), "slices": {"axial": d, "coronal": h, "sagittal": w},
           "class_names": list(class_names),
           "voxels": {n: int((label == k).sum()) for k, n in enumerate(class_names)},
           "planes": {k: {"image": f(image[..., 0]), "label": f(label),
                          **({"prediction": f(pred)} if pred is not None else {})}
                      for k, f in cut.items()}}
    if pred is not None:
        dice = dice_per_class(pred, label, len(class_names))
        out["dice"] = dict(zip(class_names[1:], dice))
        out["mean_foreground_dice"] = float(np.mean(dice))
    return out


def parts_panel(points: np.ndarray, part: np.ndarray, category: int, pred: np.ndarray | None) -> dict:
    """Panel (b): `points` [P, 3] with `part` [P] (global ids) and `pred` [P] (or None), and the
    IoU of each of the category's parts and their mean (the shape's mIoU)."""
    from segjax.data.builders.synthetic_parts import CATEGORIES, PART_CATEGORY, PART_NAMES

    parts = np.flatnonzero(PART_CATEGORY == category)
    out = {"category": CATEGORIES[category], "parts": [PART_NAMES[k] for k in parts],
           "part_ids": parts.tolist(), "points": points, "part": part,
           "part_points": {PART_NAMES[k]: int((part == k).sum()) for k in parts}}
    if pred is not None:
        ious = part_ious(pred, part, parts)
        out["prediction"] = pred
        out["part_iou"] = {PART_NAMES[k]: v for k, v in zip(parts, ious)}
        out["miou"] = float(np.mean(ious))
    return out


def _config(builder, name: str):
    configs = {c.name: c for c in builder.BUILDER_CONFIGS}
    return configs[name.split("/")[1] if "/" in name else builder.BUILDER_CONFIGS[0].name]


def _load(run_dir: str, dataset: str, what: str):
    from segjax.train import restore

    run = restore.load_run(run_dir, "best")
    if run.config.dataset.name.split("/")[0] != dataset:
        raise ValueError(f"figure 12 draws a {dataset} example; {run_dir} trained on "
                         f"{run.config.dataset.name} (pass a {what} run)")
    return run


def deep3d(volume_run: str | None = None, pointnet_run: str | None = None) -> dict:
    """Figure 12's data: `volume` (`volume_panel` of the first validation volume with both lesion
    kinds, predicted by `volume_run` when given) and `parts` (`parts_panel` of validation shape
    PARTS_INDEX, predicted by `pointnet_run` when given)."""
    from segjax.data.builders import synthetic_parts, synthetic_volumes

    vconfig = _config(synthetic_volumes, VOLUME_CONFIG)
    prun = None
    if volume_run:
        vrun = _load(volume_run, "synthetic_volumes", "experiments/configs/unet3d.py:demo")
        vconfig = _config(synthetic_volumes, vrun.config.dataset.name)
    examples = (synthetic_volumes.generate(vconfig, "validation", i)
                for i in range(vconfig.num_validation))
    index, example = next((i, e) for i, e in enumerate(examples)
                          if np.isin(LESIONS, e["label"]).all())
    pred = None
    if volume_run:
        task = vrun.task
        pred = predict_volume(vrun.model.apply, vrun.variables, example["image"],
                              roi_size=task.patch_size, normalize=task.normalize,
                              overlap=task.overlap, sigma_scale=task.sigma_scale,
                              sw_batch_size=task.sw_batch_size)
    volume = volume_panel(example["image"], np.asarray(example["label"], np.int32), pred,
                          synthetic_volumes.CLASS_NAMES)
    volume.update(dataset=f"synthetic_volumes/{vconfig.name}", index=index,
                  run=volume_run or None)

    pconfig = _config(synthetic_parts, PARTS_CONFIG)
    if pointnet_run:
        prun = _load(pointnet_run, "synthetic_parts", "experiments/configs/pointnet.py:demo")
        pconfig = _config(synthetic_parts, prun.config.dataset.name)
    shape = synthetic_parts.generate(pconfig, "validation", PARTS_INDEX)
    ppred = None
    if prun is not None:
        ppred = predict_parts(prun.model.apply, prun.variables, shape["points"],
                              int(shape["category"]), use_categories=prun.task.use_categories)
    parts = parts_panel(shape["points"], shape["part"], int(shape["category"]), ppred)
    parts.update(dataset=f"synthetic_parts/{pconfig.name}", index=PARTS_INDEX,
                 run=pointnet_run or None)
    return {"volume": volume, "parts": parts}
