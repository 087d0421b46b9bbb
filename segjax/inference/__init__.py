"""Whole-volume (and whole-image) inference with a model that was trained on crops.

- `sliding_window`: `sliding_window_inference`, overlapping windows blended with constant or
  Gaussian importance weights (nnU-Net, MONAI), the window forward compiled once and a bounded
  number of windows in memory whatever the volume size.
"""

from segjax.inference.sliding_window import (gaussian_importance_map, sliding_window_inference,
                                             window_starts)

__all__ = ["gaussian_importance_map", "sliding_window_inference", "window_starts"]
