"""What segjax's TFDS builders share."""
import io
import os
import sys

import numpy as np
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


class GeneratedSplits:
    """Mixin for the builders that generate their data from a seed (no download): splits
    `train` and `validation` of `builder_config.num_train` / `num_validation` examples, example
    `index` of a split being what the builder's `_example(split, index)` returns (its stored
    features). Example ids: `example_id(split, index)`."""

    SPLIT_COUNTS = {"train": "num_train", "validation": "num_validation"}

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split, getattr(self.builder_config, attr))
                for split, attr in self.SPLIT_COUNTS.items()}

    def _generate_examples(self, split: str, count: int):
        for index in range(count):
            yield index, self._example(split, index)


def example_id(split: str, index: int) -> str:
    """The id of generated example `index` of `split`: `train_000042`."""
    return f"{split}_{index:06d}"


def fast_png(array: np.ndarray) -> bytes:
    """Lossless PNG at zlib level 1 (~8x faster than TFDS's default encoder on these images)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


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


def semantic_features(image_format: str = "jpeg") -> "tfds.features.FeaturesDict":
    """The features of a semantic segmentation builder: `image` (`image_format` bytes: "jpeg"
    for releases in JPEG, kept as they are; "png" for lossless ones), `segmentation_mask` uint8
    `[H, W, 1]` (PNG) and `image_id`."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
        "segmentation_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "image_id": tfds.features.Text(),
    })
