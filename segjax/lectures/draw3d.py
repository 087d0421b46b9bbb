"""Matplotlib (Agg) drawing of figure 12 (volumes and point clouds) from `data.deep3d`'s dict.

Kept apart from `draw` (the 2-D figures); like it, every number shown comes from the dict.
"""

from __future__ import annotations

import numpy as np

from segjax.lectures.draw import _plt, _save

CLASS_COLOURS = ("none", "tab:green", "tab:red", "tab:orange")  # background, organ, lesion A, B
PART_COLOURS = ("tab:blue", "tab:orange", "tab:green")  # a category's parts, in id order


def _overlay(ax, plane: dict, names, title: str, vmin: float, vmax: float) -> None:
    """The slice in grey, each foreground class of the truth outlined, the prediction filled."""
    from matplotlib.colors import ListedColormap

    ax.imshow(plane["image"], cmap="gray", origin="lower", vmin=vmin, vmax=vmax)
    label = plane["label"]
    for k in range(1, len(names)):
        if (label == k).any() and (label != k).any():
            ax.contour(label == k, levels=[0.5], colors=[CLASS_COLOURS[k % len(CLASS_COLOURS)]],
                       linewidths=1.2, origin="lower")
    if "prediction" in plane:
        pred = np.ma.masked_equal(np.asarray(plane["prediction"]), 0)
        colours = ["black"] + [CLASS_COLOURS[k % len(CLASS_COLOURS)] for k in range(1, len(names))]
        ax.imshow(pred, cmap=ListedColormap(colours), vmin=0, vmax=len(names) - 1, alpha=0.4,
                  origin="lower", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def _cloud(ax, points, ids, part_ids, title: str) -> None:
    colours = np.array(PART_COLOURS)[np.searchsorted(part_ids, ids)]
    # ShapeNet's up is y: draw it as matplotlib's z.
    ax.scatter(points[:, 0], points[:, 2], points[:, 1], c=colours, s=3, depthshade=False)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_zlim(-1, 1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    ax.set_title(title, fontsize=9)


def draw_deep3d(d: dict, path: str) -> None:
    plt = _plt()
    v, p = d["volume"], d["parts"]
    names = v["class_names"]
    grey = np.concatenate([np.ravel(q["image"]) for q in v["planes"].values()])
    fig = plt.figure(figsize=(12, 7.6))
    for i, (plane, index) in enumerate(v["slices"].items()):
        ax = fig.add_subplot(2, 3, i + 1)
        _overlay(ax, v["planes"][plane], names, f"{plane} slice {index}", grey.min(), grey.max())
    shown = "truth outlined, prediction filled" if "dice" in v else "truth outlined (no --volume_run)"
    dice = ("; Dice " + ", ".join(f"{k} {x:.3f}" for k, x in v["dice"].items())) if "dice" in v else ""
    size = "x".join(map(str, v["shape"]))
    fig.text(0.5, 0.93, f"(a) {v['dataset']} validation volume {v['index']} ({size}): {shown}{dice}",
             ha="center", fontsize=9)
    ids = np.asarray(p["part_ids"])
    ax = fig.add_subplot(2, 3, 4, projection="3d")
    _cloud(ax, np.asarray(p["points"]), np.asarray(p["part"]), ids, f"{p['category']}: truth")
    if "prediction" in p:
        ax = fig.add_subplot(2, 3, 5, projection="3d")
        _cloud(ax, np.asarray(p["points"]), np.asarray(p["prediction"]), ids,
               f"prediction (shape mIoU {p['miou']:.3f})")
    legend = fig.add_subplot(2, 3, 6)
    legend.axis("off")
    lines = [f"(b) {p['dataset']} validation shape {p['index']}"]
    for k, name in enumerate(p["parts"]):
        iou = f", IoU {p['part_iou'][name]:.3f}" if "part_iou" in p else ""
        lines.append(f"{name}: {p['part_points'][name]} points{iou}")
        legend.scatter([0.02], [0.8 - 0.12 * (k + 1)], c=PART_COLOURS[k], s=40)
    if "prediction" not in p:
        lines.append("(no --pointnet_run: truth only)")
    for k, line in enumerate(lines):
        legend.text(0.06, 0.8 - 0.12 * k, line, fontsize=9, va="center")
    legend.set_xlim(0, 1)
    legend.set_ylim(0, 1)
    fig.suptitle("12. Deep learning for 3D: a lesion in an MR-like volume, parts of a point cloud",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    _save(fig, path)
