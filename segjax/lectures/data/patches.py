"""Figure 11: the patch classifier of the first deck and its fully convolutional twin."""

from __future__ import annotations

import numpy as np


def patch_vs_fcn(size: int = 128, sizes=(32, 64), rounds: int = 2) -> dict:
    """Figure 11's data: a `synthetic_shapes` image, the patches of three neighbouring pixels, how
    many patches read each pixel, and the two ways' seconds and FLOPs per image at `sizes`
    (`experiments.benchmarks.patch_vs_fcn.measure`: the same weights, the same outputs)."""
    from experiments.benchmarks.patch_vs_fcn import measure
    from segjax.data.builders.synthetic_shapes import BUILDER_CONFIGS, generate
    from segjax.models import create_model

    p = create_model("patch_classifier", num_classes=8).patch_size
    image = generate(BUILDER_CONFIGS[0], "train", 0)["image"][:size, :size]
    lo, hi = p // 2, p - 1 - p // 2
    # Patches containing pixel y: those of the centres c in [y - hi, y + lo] (the patch of c spans
    # c - lo .. c + hi), counted per axis by a box filter over the centres shifted by hi.
    inside = np.zeros((size + p - 1, size + p - 1))
    inside[hi:hi + size, hi:hi + size] = 1
    counts = np.zeros((size, size))
    for dy in range(p):
        for dx in range(p):
            counts += inside[dy:dy + size, dx:dx + size]
    centre = (size // 2, size // 2)
    patches = [[centre[0] - lo, centre[1] - lo + k, p] for k in (-2, 0, 2)]  # [top, left, size]
    rows = [measure(s, rounds=rounds) for s in sizes]
    return {"image": image, "patch_size": p, "pad": [lo, hi], "patches": patches, "read_counts": counts,
            "max_reads": int(counts.max()), "timings": rows}
