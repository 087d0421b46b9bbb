"""Host-side image input for the style commands: files or scikit-image's bundled pictures, in [0, 1].

`load_image("astronaut", 128)` -> float32 [1, 128, 128, 3]. Names of scikit-image's bundled
images (`SKIMAGE_IMAGES`: no download) are accepted instead of paths; the grey textures (brick,
grass, gravel) are repeated over the three channels.
"""

from __future__ import annotations

import os

import numpy as np

SKIMAGE_IMAGES = ("astronaut", "chelsea", "coffee", "brick", "grass", "gravel")


def _read(name_or_path: str) -> np.ndarray:
    """uint8 [H, W, 3] of a scikit-image name or an image file."""
    if name_or_path in SKIMAGE_IMAGES and not os.path.exists(name_or_path):
        import skimage.data

        image = np.asarray(getattr(skimage.data, name_or_path)())
    else:
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"image {name_or_path} is neither a file nor one of scikit-image's "
                                    f"bundled images ({', '.join(SKIMAGE_IMAGES)})")
        from PIL import Image

        try:
            with Image.open(name_or_path) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot read image {name_or_path}: {e}") from None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.size == 0:
        raise ValueError(f"image {name_or_path} has no pixels")
    return image[..., :3]


def load_image(name_or_path: str, size: int) -> np.ndarray:
    """RGB float32 [1, h, w, 3] in [0, 1], resized (Lanczos) so that `max(h, w) == size`.

    Raises:
      FileNotFoundError: neither a file nor a name of `SKIMAGE_IMAGES`; ValueError: unreadable
        file or a size below 1.
    """
    if not (isinstance(size, int) and size >= 1):
        raise ValueError(f"size must be a positive int, got {size!r}")
    from PIL import Image

    image = _read(name_or_path)
    h, w = image.shape[:2]
    scale = size / max(h, w)
    hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = Image.fromarray(image.astype(np.uint8)).resize(hw[::-1], Image.LANCZOS)
    return (np.asarray(resized, np.float32) / 255.0)[None]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] (or [1, H, W, 3]) in [0, 1] -> uint8, clipped and rounded."""
    image = np.asarray(image, np.float32)
    image = image[0] if image.ndim == 4 else image
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
