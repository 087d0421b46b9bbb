"""Figure 8: why segmentation is difficult (one synthetic_shapes image per factor)."""

from __future__ import annotations

from typing import Any

import numpy as np

from segjax.lectures.data._common import shapes_config


# --------------------------------------------------------------------------------------------
# 8. Why segmentation is difficult


def difficulty(min_objects: int = 3, class_count_images: int = 64) -> dict:
    """Figure 8: the same scene under each difficulty factor of `synthetic_shapes`.

    `index` is the first training example whose clean scene has at least `min_objects` objects;
    every factor's config (the builder's `BUILDER_CONFIGS`, which share the scene's random stream)
    generates that example with `synthetic_shapes.generate`. Per factor: `image` [S, S, 3],
    `label` [S, S], `classes`, `visible_fraction`; plus `label_disagreement` (pixels whose label
    differs from the clean label, ground-truth variance), `noise_rms` (RMS difference from the
    clean image) and `class_counts` (objects per class over the first `class_count_images`
    examples, clean vs imbalance).
    """
    from segjax.data.builders.synthetic_shapes import FACTORS, generate

    clean_cfg = shapes_config("clean")
    index = next(i for i in range(1000)
                 if len(generate(clean_cfg, "train", i)["classes"]) >= min_objects)
    examples = {"clean": generate(clean_cfg, "train", index)}
    for factor in FACTORS:
        examples[factor] = generate(shapes_config(factor), "train", index)
    out: dict[str, Any] = {"index": index, "split": "train", "factors": {}}
    clean_image = examples["clean"]["image"].astype(np.float64)
    for name, ex in examples.items():
        out["factors"][name] = {
            "image": ex["image"], "label": ex["label"][..., 0],
            "classes": ex["classes"], "visible_fraction": np.round(ex["visible_fraction"], 3),
            "label_disagreement": float(np.mean(ex["label"] != ex["clean_label"])),
            "noise_rms": float(np.sqrt(np.mean((ex["image"] - clean_image) ** 2))),
        }
    counts = {}
    for name in ("clean", "imbalance"):
        cfg = shapes_config(name)
        classes = np.concatenate([generate(cfg, "train", i)["classes"]
                                  for i in range(class_count_images)])
        counts[name] = np.bincount(classes, minlength=6)[1:]
    out["class_counts"] = counts
    out["class_count_images"] = class_count_images
    return out
