"""Classical segmentation baselines (host-side, NumPy in and out; scikit-image and OpenCV do the work).

`METHODS` maps a name to a `Method`: the function (in `segjax.classical.methods`), what it
returns, which inputs it is given and how its output becomes a segmentation in the dataset's
label space. `segment(name, image, label, instances, num_classes)` runs one method on one image
and applies that mapping; `segjax.classical.benchmark` runs them over a dataset.

Inputs — a method given ground truth is not an automatic method, and reports say which it got:
  * `automatic`: the RGB image only.
  * `boxes`: plus the tight box and class of every ground-truth instance (what a perfect
    detector would hand over). One fit per box; the fitted mask takes the box's class.
  * `seeds`: plus labelled seeds from the ground truth (`labelling.ground_truth_seeds`: the
    eroded core of every connected region of every class, background included). The output is
    a class per pixel directly.

Label space — how each kind of output is scored:
  * `foreground` (bool object-vs-background mask) and `objects` (region map, 0 = background):
    the method decides object vs background; each foreground component / region is then *named*
    by an oracle, the majority ground-truth object class under it (`labelling.label_foreground`;
    a false detection over background keeps a wrong object class). The class identity is oracle
    information; the object-vs-background score `miou_binary` uses none.
  * `regions` (an over-segmentation): every region gets the majority ground-truth class,
    background included (`labelling.label_regions`): the oracle upper bound a perfect region
    classifier would reach. Scored in addition without labels: boundary recall and
    under-segmentation error (`segjax.classical.scoring`), and the number of regions.
  * `classes` (box and seed methods): already class ids, from the classes of the boxes/seeds.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from segjax.classical import labelling, methods, scoring


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method. `output` in {foreground, objects, regions, classes}; `inputs` in
    {automatic, boxes, seeds}; `summary` says in a line what it does."""

    fn: Callable
    output: str
    inputs: str
    summary: str
    requires: str = ""  # an optional module it imports ("cv2")


METHODS: dict[str, Method] = {
    "otsu": Method(methods.otsu, "foreground", "automatic",
                   "global Otsu threshold of the luminance"),
    "adaptive_threshold": Method(methods.adaptive_threshold, "foreground", "automatic",
                                 "local Gaussian-mean threshold of the luminance"),
    "otsu_morphology": Method(methods.otsu_morphology, "foreground", "automatic",
                              "Otsu + opening/closing (disk) + small specks and holes removed"),
    "watershed_distance": Method(methods.watershed_distance, "objects", "automatic",
                                 "Otsu+morphology foreground split at distance-transform peaks"),
    "chan_vese": Method(methods.chan_vese, "foreground", "automatic",
                        "Chan-Vese level set on the luminance"),
    "morph_chan_vese": Method(methods.morph_chan_vese, "foreground", "automatic",
                              "morphological Chan-Vese (ACWE) on the luminance"),
    "watershed_gradient": Method(methods.watershed_gradient, "regions", "automatic",
                                 "watershed of the Sobel gradient from its h-minima"),
    "slic": Method(methods.slic, "regions", "automatic", "SLIC superpixels (~150)"),
    "felzenszwalb": Method(methods.felzenszwalb, "regions", "automatic",
                           "Felzenszwalb-Huttenlocher graph segmentation"),
    "quickshift": Method(methods.quickshift, "regions", "automatic", "quickshift mode seeking"),
    "snake": Method(methods.snake, "classes", "boxes",
                    "active_contour snake (RGB edges) from the circle around each box"),
    "morph_geodesic": Method(methods.morph_geodesic, "classes", "boxes",
                             "morphological geodesic active contour (colour edges) shrinking from each box"),
    "grabcut": Method(methods.grabcut, "classes", "boxes", "OpenCV GrabCut from each box",
                      requires="cv2"),
    "random_walker": Method(methods.random_walker, "classes", "seeds",
                            "random walker from ground-truth seeds"),
}

INPUTS_TEXT = {
    "automatic": "automatic (image only)",
    "boxes": "ground-truth instance boxes + their classes",
    "seeds": "ground-truth seeds (eroded regions, every class)",
}
LABELLING_TEXT = {
    "foreground": "object/background by the method; objects named by oracle (majority GT class)",
    "objects": "object/background by the method; objects named by oracle (majority GT class)",
    "regions": "oracle: each region gets its majority GT class (upper bound)",
    "classes": "classes of the given boxes/seeds",
}


def available_methods() -> list[str]:
    """Names of the registered methods whose optional dependencies are importable."""
    import importlib.util

    return [n for n, m in METHODS.items() if not m.requires or importlib.util.find_spec(m.requires)]


def segment(name: str, image: np.ndarray, label: np.ndarray, instances: np.ndarray,
            num_classes: int) -> dict:
    """Runs method `name` on one image and maps its output to the label space.

    Args:
      image: uint8 [H, W, 3]. label: int class ids [H, W] (0 = background), used for the
        method's inputs (boxes/seeds) and the oracle labelling described in the module docstring.
      instances: int [H, W] instance ids (0 = none), for the boxes.
    Returns a dict: `pred` int32 [H, W] class ids; `raw` the method's own output; for `regions`
    methods also `num_regions`, `boundary_recall`, `undersegmentation_error`.
    """
    method = METHODS[name]
    label = np.asarray(label)
    kwargs = {}
    if method.inputs == "boxes":
        kwargs["boxes"], kwargs["box_classes"] = labelling.instance_boxes(instances, label,
                                                                          num_classes)
    elif method.inputs == "seeds":
        kwargs["seeds"] = labelling.ground_truth_seeds(label)
    raw = method.fn(image, **kwargs)
    out = {"raw": raw}
    if method.output in ("foreground", "objects"):
        out["pred"] = labelling.label_foreground(raw, label, num_classes)
    elif method.output == "regions":
        out["pred"] = labelling.label_regions(raw, label, num_classes)
        out["num_regions"] = int(len(np.unique(raw)))
        out["boundary_recall"] = scoring.boundary_recall(raw, label)
        out["undersegmentation_error"] = scoring.undersegmentation_error(raw, label)
    else:
        out["pred"] = np.asarray(raw, np.int32)
    return out


__all__ = ["METHODS", "Method", "available_methods", "segment", "INPUTS_TEXT", "LABELLING_TEXT"]
