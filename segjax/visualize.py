"""Colour-coded masks and overlays for predictions (numpy, host side).

Example:
  >>> rgb = colorize(mask, palette, ignore_label=255)          # uint8 [H, W, 3]
  >>> blend = overlay(image_uint8, mask, palette, alpha=0.5)   # uint8 [H, W, 3]
  >>> save_png(os.path.join(out, "0001_overlay.png"), blend)
"""

from __future__ import annotations

import os

import numpy as np

IGNORE_COLOR = (255, 255, 255)  # ignored / padding pixels are drawn white


def _check_palette(palette: np.ndarray) -> np.ndarray:
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must have shape [K, 3], got {palette.shape}")
    return palette.astype(np.uint8)


def colorize(mask: np.ndarray, palette: np.ndarray, *, ignore_label: int | None = None) -> np.ndarray:
    """RGB image of a class-id mask.

    Args:
      mask: int [H, W] class ids in [0, K) or `ignore_label`.
      palette: uint8 [K, 3], the colour of each class.
      ignore_label: drawn as `IGNORE_COLOR`.

    Returns:
      uint8 [H, W, 3].

    Raises:
      ValueError: a bad shape, or a class id outside [0, K) that is not `ignore_label`.
    """
    palette = _check_palette(palette)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape [H, W], got {mask.shape}")
    ignored = mask == ignore_label if ignore_label is not None else np.zeros(mask.shape, bool)
    bad = ~ignored & ((mask < 0) | (mask >= len(palette)))
    if bad.any():
        raise ValueError(f"mask holds class ids {np.unique(mask[bad])[:10].tolist()} outside "
                         f"[0, {len(palette)}) (ignore_label={ignore_label})")
    out = palette[np.where(ignored, 0, mask)]
    out[ignored] = IGNORE_COLOR
    return out


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, *, alpha: float = 0.5,
            ignore_label: int | None = None) -> np.ndarray:
    """Blends the colour mask over `image`: `(1 - alpha) * image + alpha * colour`.

    Ignored pixels show the image unchanged.

    Args:
      image: uint8 [H, W, 3].
      mask: int [H, W] (same H, W).
      palette: uint8 [K, 3].
      alpha: weight of the mask colour in [0, 1].

    Returns:
      uint8 [H, W, 3] (rounded to nearest).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[:2] != np.shape(mask):
        raise ValueError(f"image must be [H, W, 3] matching mask {np.shape(mask)}, got {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colour = colorize(mask, palette, ignore_label=ignore_label).astype(np.float32)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
    if ignore_label is not None:
        keep = np.asarray(mask) == ignore_label
        blend[keep] = image[keep]
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """Undoes min-max: maps a float image [H, W, 3] of any range to uint8 for display.

    Pipeline images are normalised (mean/std), so the exact inverse depends on the dataset;
    for display a per-image min-max stretch is what matters.
    """
    image = np.asarray(image, np.float32)
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def side_by_side(*panels: np.ndarray, gap: int = 2) -> np.ndarray:
    """Concatenates uint8 [H, W, 3] panels horizontally with a white `gap` (for TensorBoard)."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    height = panels[0].shape[0]
    if any(p.shape[0] != height or p.ndim != 3 for p in panels):
        raise ValueError(f"panels must be [H, W, 3] with the same H, got {[p.shape for p in panels]}")
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts = []
    for i, panel in enumerate(panels):
        parts += ([spacer] if i else []) + [panel.astype(np.uint8)]
    return np.concatenate(parts, axis=1)


def legend(class_names, palette: np.ndarray, *, height: int, width: int = 120,
           present=None) -> np.ndarray:
    """uint8 [height, width, 3]: a colour swatch and the name of each class, top to bottom.

    `present` (optional bool [K]) lists only those classes (e.g. those in the panel). Text is
    drawn with PIL's built-in bitmap font; rows shrink to fit `height`.
    """
    from PIL import Image, ImageDraw

    palette = _check_palette(palette)
    ids = [k for k in range(len(class_names)) if present is None or present[k]]
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    row = max(1, min(14, height // max(1, len(ids))))
    pad = 1 if row >= 3 else 0  # rows of 1-2 pixels (many classes, a small panel) fill the row
    for i, k in enumerate(ids):
        y = i * row
        draw.rectangle([2, y + pad, 1 + row - 2 * pad, y + row - 1 - pad],
                       fill=tuple(int(c) for c in palette[k]))
        if row >= 9:
            draw.text((row + 4, y), str(class_names[k]), fill=(0, 0, 0))
    return np.asarray(canvas, np.uint8)


def comparison_panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray, *,
                     palette: np.ndarray, class_names, ignore_label: int | None = None,
                     min_height: int = 128) -> np.ndarray:
    """One picture of an example: image | ground truth | prediction | legend (uint8 [H', W', 3]).

    Masks are colour-coded with `palette` (ignored pixels white); the legend lists the classes
    present in the ground truth or the prediction. Small images are enlarged (nearest) to
    `min_height` rows so that the legend's text fits.
    """
    image, label, pred = np.asarray(image), np.asarray(label), np.asarray(pred)
    k = len(class_names)
    panels = [image, colorize(label, palette, ignore_label=ignore_label), colorize(pred, palette)]
    scale = max(1, -(-min_height // image.shape[0]))
    panels = [np.repeat(np.repeat(p, scale, 0), scale, 1) for p in panels]
    present = np.zeros(k, bool)
    for m in (label, pred):
        ids = m[(m >= 0) & (m < k)]
        present[np.unique(ids)] = True
    panels.append(legend(class_names, palette, height=panels[0].shape[0], present=present))
    return side_by_side(*panels)


def draw_instances(image: np.ndarray, masks, boxes, classes, *, palette: np.ndarray,
                   class_names, scores=None, alpha: float = 0.5,
                   min_height: int = 128) -> np.ndarray:
    """uint8 [H', W', 3]: instance masks blended over `image` in their class colour, with box
    outlines and "name score" labels (PIL's bitmap font).

    Args:
      image: uint8 [H, W, 3].
      masks: bool [D, H, W]; boxes [D, 4] (x1, y1, x2, y2 pixels); classes int [D].
      scores: optional [D], printed after the names.
      min_height: small images are enlarged (nearest) to at least this many rows first.
    """
    from PIL import Image, ImageDraw

    palette = _check_palette(palette)
    image = np.asarray(image, np.float32)
    for m, c in zip(masks, classes):
        image[m] = (1 - alpha) * image[m] + alpha * palette[int(c)]
    scale = max(1, -(-min_height // image.shape[0]))
    big = np.repeat(np.repeat(np.clip(np.rint(image), 0, 255).astype(np.uint8), scale, 0),
                    scale, 1)
    canvas = Image.fromarray(big)
    draw = ImageDraw.Draw(canvas)
    for k, (box, c) in enumerate(zip(boxes, classes)):
        colour = tuple(int(v) for v in palette[int(c)])
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour)
        text = str(class_names[int(c)]) + (f" {float(scores[k]):.2f}" if scores is not None else "")
        draw.text((x1 + 1, y1 + 1), text, fill=(255, 255, 255))
    return np.asarray(canvas, np.uint8)


def save_png(path: str, image: np.ndarray) -> None:
    """Writes a uint8 [H, W, 3] (or [H, W]) image as PNG, creating the directory."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
