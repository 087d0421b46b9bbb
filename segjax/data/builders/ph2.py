"""`ph2`: the PH2 dermoscopy database (Mendonça et al., EMBC 2013), lesion vs skin.

PH2 holds 200 dermoscopic images (8-bit RGB, 768x560) of melanocytic lesions with an expert's
binary lesion mask each; Fernandes, Cruz & Cardoso (IJCNN 2018) segment it with their quality
oracle. It is distributed as a RAR archive (https://www.fc.up.pt/addi/ph2%20database.html) that
extracts to

    PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp
    PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp
    PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_roi/...      (colour regions: not read)
    PH2Dataset/PH2_dataset.xlsx, PH2_dataset.txt             (diagnoses: not read)

The builder reads the extracted tree from the manual directory (`<manual_dir>/PH2Dataset/PH2
Dataset images`, or `<manual_dir>/PH2 Dataset images`). Every case folder `IMD<digits>` must hold
both BMPs; the mask must be binary, 0 (skin) and 255 (lesion) -> classes 0 and 1 (a 1-bit BMP
reads as 0/255 too), and have its image's size. A missing or corrupt file, a mask with another
value, or a size mismatch stops the build naming the file; nothing is skipped.

Splits: PH2 defines none, and papers draw their own (random halves, 5-fold cross-validation, or
the first/last cases). segjax's is deterministic and independent of the file system's order:
the case ids sorted by `sha256("ph2:" + id)`, the first half `train`, the next quarter
`validation` and the rest `test` -- 100 / 50 / 50 of the 200 cases (`split_ids`).

Configs: `original` (the images as they are, 768x560) and `128`, `192` (image and mask resized
to a square: the image with PIL's antialiased bilinear filter, the mask by resizing it as 0/255
bilinearly and keeping the pixels >= 128, so the lesion's outline is resampled, not
nearest-neighbour jagged). Fernandes et al. feed their oracle 128x128 inputs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders._common import (LocalCodePath, manual_dir_of, open_image,
                                          semantic_features)

HOMEPAGE = "https://www.fc.up.pt/addi/ph2%20database.html"
IMAGES_DIR = "PH2 Dataset images"
CASE = re.compile(r"IMD\d+")
MASK_VALUES = (0, 255)

INSTRUCTIONS = f"""\
PH2 is not prepared yet. Download the PH2 database from {HOMEPAGE} (a RAR archive; the site asks
for a short form), extract it, and put the extracted PH2Dataset/ folder into the manual directory,
so that <manual_dir>/PH2Dataset/{IMAGES_DIR}/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp exists;
then build with
  python -m segjax.data prepare ph2 --data_dir=DATA_DIR --manual_dir=MANUAL_DIR"""


@dataclasses.dataclass(eq=False)
class PH2Config(tfds.core.BuilderConfig):
    """`size`: the square side images and masks are resized to (None: kept as they are)."""

    size: int | None = None

    def __post_init__(self):
        if self.size is not None and self.size < 8:
            raise ValueError(f"size must be None or >= 8 pixels, got {self.size}")


BUILDER_CONFIGS = [
    PH2Config(name="original", description="The images and masks as released (768x560)."),
    PH2Config(name="128", description="Resized to 128x128 (the paper's oracle input).",
              size=128),
    PH2Config(name="192", description="Resized to 192x192.", size=192),
]
CONFIG_NAMES = tuple(c.name for c in BUILDER_CONFIGS)


def find_images_dir(manual_dir: str) -> str:
    """The `PH2 Dataset images` folder under `manual_dir`; raises FileNotFoundError with
    instructions when it is not there."""
    for parts in (("PH2Dataset", IMAGES_DIR), (IMAGES_DIR,)):
        path = os.path.join(manual_dir, *parts)
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(f"Missing the PH2 release in {manual_dir!r} (no "
                            f"PH2Dataset/{IMAGES_DIR}/ folder).\n"
                            + INSTRUCTIONS.replace("<manual_dir>", manual_dir, 1))


def case_files(images_dir: str) -> dict[str, tuple[str, str]]:
    """`{case id: (image path, mask path)}` of every `IMD<digits>` folder in `images_dir`.
    Raises FileNotFoundError naming a missing file, ValueError when there is no case."""
    cases = {}
    for name in sorted(os.listdir(images_dir)):
        if not CASE.fullmatch(name) or not os.path.isdir(os.path.join(images_dir, name)):
            continue
        image = os.path.join(images_dir, name, f"{name}_Dermoscopic_Image", f"{name}.bmp")
        mask = os.path.join(images_dir, name, f"{name}_lesion", f"{name}_lesion.bmp")
        for path, what in ((image, "dermoscopic image"), (mask, "lesion mask")):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Missing PH2 {what} {path} (case {name} is incomplete: "
                                        "re-extract the release)")
        cases[name] = (image, mask)
    if not cases:
        raise ValueError(f"{images_dir} holds no IMD<digits> case folder; is it PH2's "
                         f"'{IMAGES_DIR}'?")
    return cases


def split_ids(ids) -> dict[str, list[str]]:
    """The deterministic split of case `ids` (see the module docstring): sorted by
    `sha256("ph2:" + id)`, then 50 % train, 25 % validation, the rest test (rounded down)."""
    order = sorted(ids, key=lambda i: hashlib.sha256(f"ph2:{i}".encode()).hexdigest())
    n_train, n_val = len(order) // 2, len(order) // 4
    return {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}


def read_case(image_path: str, mask_path: str, size: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 `[H, W, 3]` and mask uint8 `[H, W, 1]` in {0, 1} of one case, resized to
    `size` x `size` when given (module docstring). Raises ValueError naming the file when the
    mask holds a value other than 0/255, is not grey, or differs in size from its image."""
    from PIL import Image

    with open_image(image_path, "PH2 dermoscopic image") as im:
        try:
            image = im.convert("RGB")
            image.load()
        except OSError as e:
            raise ValueError(f"Corrupt PH2 dermoscopic image {image_path}: {e}") from None
    with open_image(mask_path, "PH2 lesion mask") as im:
        try:
            mask = np.asarray(im.convert("L") if im.mode in ("1", "P") else im)
        except OSError as e:
            raise ValueError(f"Corrupt PH2 lesion mask {mask_path}: {e}") from None
    if mask.ndim == 3:  # an RGB(A) mask is accepted only when it is grey
        if mask.shape[-1] not in (3, 4) or np.any(mask[..., :3] != mask[..., :1]):
            raise ValueError(f"PH2 lesion mask {mask_path} is not a grey 0/255 mask (mode "
                             f"{im.mode}, channels differ)")
        mask = mask[..., 0]
    if mask.shape != (image.height, image.width):
        raise ValueError(f"PH2 lesion mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} "
                         f"(WxH), its image {image_path} is {image.width}x{image.height}")
    bad = np.setdiff1d(np.unique(mask), MASK_VALUES)
    if bad.size:
        raise ValueError(f"PH2 lesion mask {mask_path} holds values {bad[:8].tolist()} besides "
                         f"0 (skin) and 255 (lesion)")
    if size is not None:
        image = image.resize((size, size), Image.BILINEAR)
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.BILINEAR)) >= 128
    else:
        mask = mask == 255
    return np.asarray(image, np.uint8), mask.astype(np.uint8)[..., None]


class PH2(LocalCodePath, tfds.core.GeneratorBasedBuilder):
    """PH2 lesion segmentation from the extracted release; see the module docstring."""

    name = "ph2"  # TFDS would derive "p_h2" from the class name
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train / validation / test = 100 / 50 / 50 cases."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=semantic_features("png"),
            supervised_keys=("image", "segmentation_mask"),
            homepage=HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        cases = case_files(find_images_dir(manual_dir_of(dl_manager)))
        return {split: self._generate_examples([(i, *cases[i]) for i in ids])
                for split, ids in split_ids(cases).items()}

    def _generate_examples(self, cases):
        for case_id, image_path, mask_path in cases:
            image, mask = read_case(image_path, mask_path, self.builder_config.size)
            yield case_id, {"image": image, "segmentation_mask": mask, "image_id": case_id}

    def check_source_data(self, manual_dir: str, *, download: bool = False) -> None:
        """Raises FileNotFoundError with instructions at once when the release is missing
        (there is no download: the site asks for a form)."""
        del download
        find_images_dir(manual_dir)
