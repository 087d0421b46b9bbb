"""Figure 10: TensorMask's dense masks over 4-D tensors, read from a trained model.

TensorMask (Chen et al. 2019) predicts, at every window (position y, x of a pyramid level), a
V x U mask: a 4-D tensor (y, x, v, u) per level and anchor. The head computes it in the *aligned*
representation (channel (v, u) at image cell (y, x) is about that cell itself) and
`segjax.ops.swap_align2nat` turns it into the *natural* one (channel (v, u) at window (y, x) is the
mask pixel (v, u) of the window centred there). In the *tensor bipyramid* level l's masks are
2**l V pixels a side, each pixel one cell of P2 (4 image pixels), so larger windows get finer
masks rather than the same V x V.
"""

from __future__ import annotations

import jax
import numpy as np

from segjax import ops


def _window_of(t: int, grids, num_anchors: int) -> tuple[int, int, int, int]:
    """(level, anchor, y, x) of flat window index `t` (level-major, then y, x, anchor)."""
    start = 0
    for lvl, (h, w) in enumerate(grids):
        n = h * w * num_anchors
        if t < start + n:
            cell, anchor = divmod(t - start, num_anchors)
            return lvl, anchor, cell // w, cell % w
        start += n
    raise ValueError(f"window index {t} is past the {start} windows")


def _natural(aligned_level: np.ndarray, lam: int, y: int, x: int) -> np.ndarray:
    """The natural (lam V) x (lam V) mask probabilities of window (y, x) of one level."""
    # The windows form computes this one window (equal to swap_align2nat(...)[0, y, x] exactly)
    # instead of the level's whole natural map.
    nat = ops.swap_align2nat_windows(aligned_level, lam, np.asarray([[y]]), np.asarray([[x]]))[0, 0]
    return np.asarray(jax.nn.sigmoid(nat))


def tensormask_windows(model, variables, image: np.ndarray, *, score_thresh: float = 0.5,
                       max_detections: int = 4) -> dict:
    """Figure 10's data from a TensorMask `model` (its `variables`) on one uint8 `image`.

    Returns: `image`; `detections` (up to `max_detections` scoring >= `score_thresh`, best first:
    score, class, level, anchor, cell (y, x), window [x1, y1, x2, y2], box and `mask`, the
    window's natural mask probabilities at its level's size); for the best detection's centre,
    `bipyramid` (per level: the window of the same anchor nearest the centre and its natural mask,
    2**l V a side) and `natural_vs_aligned` at P2 (the V x V channels of the nearest cell in
    both representations, and `aligned_centre_map`, the centre channel over the whole P2 grid).
    """
    from segjax.tasks.base import padded_input

    x = padded_input(image, model.size_divisible)
    grids = [(x.shape[1] // (4 * 2 ** lvl), x.shape[2] // (4 * 2 ** lvl)) for lvl in range(len(model.anchor_sizes))]

    def inner(m, x):
        feats = m.features(x)
        head = m.head(feats)
        return head[2], m.detect(x, feats, head)

    aligned, det = jax.jit(lambda v, x: model.apply(v, x, method=inner))(variables, x)
    aligned = [[np.asarray(a) for a in per_anchor] for per_anchor in aligned]
    det = jax.tree.map(lambda a: np.asarray(a)[0], det)
    anchors = model.anchor_sizes
    num_anchors = len(anchors[0])

    def window_box(lvl, anchor, y, xx):
        s, z = 4 * 2 ** lvl, anchors[lvl][anchor]
        return [xx * s - z / 2, y * s - z / 2, xx * s + z / 2, y * s + z / 2]

    detections = []
    for k in np.flatnonzero(det["valid"] & (det["scores"] >= score_thresh))[:max_detections]:
        lvl, anchor, y, xx = _window_of(int(det["window"][k]), grids, num_anchors)
        detections.append({"score": float(det["scores"][k]), "class": int(det["classes"][k]),
                           "level": lvl, "anchor": anchor, "cell": [y, xx],
                           "window": window_box(lvl, anchor, y, xx), "box": det["boxes"][k].tolist(),
                           "mask": _natural(aligned[lvl][anchor], 2 ** lvl, y, xx)})
    out = {"image": np.asarray(image), "detections": detections,
           "mask_sizes": [list(model.mask_sizes)], "grids": [list(g) for g in grids]}
    if not detections:
        return out
    best = detections[0]
    cx, cy = (best["box"][0] + best["box"][2]) / 2, (best["box"][1] + best["box"][3]) / 2
    anchor = best["anchor"]
    bipyramid = []
    for lvl, (h, w) in enumerate(grids):
        s = 4 * 2 ** lvl
        y, xx = min(int(round(cy / s)), h - 1), min(int(round(cx / s)), w - 1)
        mask = _natural(aligned[lvl][anchor], 2 ** lvl, y, xx)
        bipyramid.append({"level": lvl, "cell": [y, xx], "window": window_box(lvl, anchor, y, xx),
                          "mask_side": int(mask.shape[0]), "mask": mask})
    out["bipyramid"] = bipyramid
    v = model.mask_sizes[anchor]
    y, xx = bipyramid[0]["cell"]
    flat = aligned[0][anchor][0]
    out["natural_vs_aligned"] = {
        "cell": [y, xx], "anchor": anchor, "V": v,
        "natural": bipyramid[0]["mask"],
        "aligned": np.asarray(jax.nn.sigmoid(flat[y, xx].reshape(v, v))),
        "aligned_centre_map": np.asarray(jax.nn.sigmoid(flat[..., (v // 2) * v + v // 2]))}
    return out


def tensormask(run_dir: str, min_objects: int = 3) -> dict:
    """Figure 10 from a trained run of `experiments/configs/tensormask.py:demo` (its best
    checkpoint) on the first validation image of the run's `synthetic_shapes` config with at least
    `min_objects` objects."""
    from segjax.data.builders.synthetic_shapes import BUILDER_CONFIGS, generate
    from segjax.models.detection.tensormask import TensorMask
    from segjax.train import restore

    run = restore.load_run(run_dir, "best")
    if not isinstance(run.model, TensorMask):
        raise ValueError(f"figure 10 needs a TensorMask run (experiments/configs/tensormask.py:demo); "
                         f"{run_dir} trained {run.config.model.name}")
    name = run.config.dataset.name
    if name.split("/")[0] != "synthetic_shapes":
        raise ValueError(f"figure 10 draws a synthetic_shapes image; {run_dir} trained on {name}")
    configs = {c.name: c for c in BUILDER_CONFIGS}
    config = configs[name.split("/")[1] if "/" in name else BUILDER_CONFIGS[0].name]
    index = next(i for i in range(config.num_validation)
                 if len(generate(config, "validation", i)["classes"]) >= min_objects)
    out = tensormask_windows(run.model, run.variables, generate(config, "validation", index)["image"])
    out.update(run=run_dir, step=int(run.step), dataset=name, index=index)
    return out
