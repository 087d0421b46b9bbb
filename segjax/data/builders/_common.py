"""What segjax's TFDS builders share."""
import os
import sys

import tensorflow_datasets as tfds

from etils import epath
from tensorflow_datasets.core import utils as tfds_utils


class LocalCodePath:
    """Mixin: `code_path` is this module's file.

    TFDS 4.9.10 computes `code_path` through `importlib_resources.abc`, a package it does not
    install on Python >= 3.9, so preparing any builder defined outside TFDS fails with
    ModuleNotFoundError. The file path is all TFDS needs (it looks for `checksums.tsv` beside it).
    """

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The builder's source file."""
        return epath.Path(sys.modules[cls.__module__].__file__)


def manual_dir_of(dl_manager) -> str:
    """The builder's manual directory: TFDS's, or `<download_dir>/manual` when TFDS asserts that
    it does not exist or is empty (the builder then fails naming what is missing there)."""
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError:  # TFDS: the manual directory does not exist or is empty
        return os.fspath(dl_manager.download_dir / "manual")


# The most pixels an image (or a mask, or a COCO entry's declared width x height) may claim: 10^8,
# e.g. 10,000 x 10,000. Decoding one as RGB plus its label maps takes about 0.6 GB, so a build
# stays within a few GB; a header that claims more is refused before any pixel is decoded (a
# 100-byte PNG can claim 10^5 x 10^5 pixels, 30 GB once decoded).
MAX_IMAGE_PIXELS = 10**8


def check_pixel_count(height: int, width: int, what: str) -> None:
    """Raises ValueError naming `what` when `height` x `width` exceeds MAX_IMAGE_PIXELS."""
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} claims {height}x{width} (HxW) = {height * width:,} pixels, "
                         f"more than the {MAX_IMAGE_PIXELS:,} segjax decodes (a damaged or "
                         "hostile header; shrink the image if it is real)")


def open_image(path: str, what: str = "image file"):
    """The PIL image at `path` opened lazily (header read, no pixel decoded), its size checked
    against MAX_IMAGE_PIXELS; the caller closes it (`with open_image(...) as im`).

    Raises FileNotFoundError naming a missing file, ValueError naming a corrupt one or one whose
    header claims too many pixels.
    """
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing {what} {path}")
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:  # PIL's own limit, 2 x 89.5 megapixels
        raise ValueError(f"{what} {path} claims too many pixels: {e}") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"Corrupt or unreadable {what} {path}: {e}") from None
    width, height = im.size
    try:
        check_pixel_count(height, width, f"{what} {path}")
    except ValueError:
        im.close()
        raise
    return im


def semantic_features() -> "tfds.features.FeaturesDict":
    """The features of a semantic segmentation builder: `image` (JPEG bytes kept as they are),
    `segmentation_mask` uint8 `[H, W, 1]` (PNG) and `image_id`."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "segmentation_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "image_id": tfds.features.Text(),
    })
