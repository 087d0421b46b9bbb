"""Tiny fake source files for the real TFDS builders of the registry datasets, and a download
manager that serves them without a network.

Each `write_*` lays out files exactly where and how the TFDS 4.9.10 builder reads them (the
archives' folder names, list files, file-name patterns, image formats and sizes) and returns a
`Fake`: what the builder must produce from them. Images are drawn from their masks with one
colour per raw mask value (`Fake.colours`), so a test can check that image and mask stay aligned
through augmentation.

- oxford_iiit_pet: `images.tar.gz` (`images/<name>.jpg`) and `annotations.tar.gz`
  (`annotations/{trainval,test}.txt`, `trimaps/<name>.png` with 1 = pet, 2 = background,
  3 = border, `xmls/<name>.xml` head boxes), both plain tars under a `.tar.gz` name like the
  real ones; `Abyssinian_5` is one of the builder's `_CORRUPT_SAMPLES`, written as an RGBA PNG
  under its `.jpg` name so the builder's re-encoding path runs.
- cityscapes (`semantic_segmentation`): manual-dir zips `leftImg8bit_trainvaltest.zip`
  (`leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`, 1024x2048 RGB) and
  `gtFine_trainvaltest.zip` (`gtFine/<split>/<city>/<id>_gtFine_labelIds.png`, labelIds 0..33,
  plus the colour/instance files the builder ignores); the test split's labels are all 0
  (unlabeled), as in the released files.
- scene_parse150: `images.tar` (`images/{training,validation}/ADE_*.jpg`) and
  `annotations_instance.tar` (`annotations_instance/{training,validation}/ADE_*.png`, RGB:
  red = category 0..100, green = instance id).

`offline_downloads(archives)` patches TFDS's `DownloadManager` so that `download` maps each known
URL to its local archive and `download_and_extract` runs TFDS's own extractor on it; any other
URL, and TFDS's real downloader, raise at once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tarfile
import zipfile
from unittest import mock

import numpy as np
from PIL import Image

PET_URL = "https://thor.robots.ox.ac.uk/~vgg/data/pets"
ADE_URL = "http://sceneparsing.csail.mit.edu/data/ChallengeData2017"


@dataclasses.dataclass
class Fake:
    """What the builder must make of the fake sources.

    Attributes:
      examples: split -> {key: (image uint8 [H, W, 3] as drawn, raw mask uint8 [H, W])}; key is
        the id feature's value, or `(H, W)` for datasets without one (sizes are unique).
      colours: raw mask value -> the RGB colour its pixels were drawn with.
      archives: URL -> local archive, for `offline_downloads`.
      manual_dir: the manual download folder (None if the builder downloads).
      reencoded: keys of the examples whose image the builder re-encodes itself (pet's
        `_CORRUPT_SAMPLES`: decoded, alpha dropped, `tf.io.encode_jpeg` with its defaults).
    """

    examples: dict
    colours: dict
    archives: dict = dataclasses.field(default_factory=dict)
    manual_dir: str | None = None
    reencoded: tuple = ()


def _encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    # JPEG without chroma subsampling: the drawn colours survive but for a few grey levels.
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    Image.fromarray(array, mode).save(buf, fmt, **options)
    return buf.getvalue()


def _write_tar(path: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:  # uncompressed, also under a .tar.gz name (like pets)
        for name in sorted(files):
            entry = tarfile.TarInfo(name)
            entry.size = len(files[name])
            tar.addfile(entry, io.BytesIO(files[name]))


def _paint(mask: np.ndarray, colours: dict) -> np.ndarray:
    image = np.zeros(mask.shape + (3,), np.uint8)
    for value, colour in colours.items():
        image[mask == value] = colour
    return image


# ----------------------------------------------------------------------------- oxford_iiit_pet

# (name, class id 1..37, species 1 = cat / 2 = dog, breed id, (H, W)) as in the list files.
PET_TRAINVAL = [("Abyssinian_1", 1, 1, 1, (26, 34)), ("Abyssinian_5", 1, 1, 1, (30, 22)),
                ("beagle_2", 5, 2, 3, (24, 28)), ("yorkshire_terrier_4", 37, 2, 25, (28, 30))]
PET_TEST = [("Bengal_3", 6, 1, 2, (32, 26)), ("pug_6", 26, 2, 17, (22, 36))]
PET_COLOURS = {1: (220, 40, 40), 2: (40, 200, 40), 3: (40, 40, 220)}


def _trimap(h: int, w: int) -> np.ndarray:
    """2 (background) with a pet ellipse (1) inside a border band (3)."""
    y, x = np.mgrid[:h, :w]
    r = ((y - h / 2) / (h * 0.34)) ** 2 + ((x - w / 2) / (w * 0.34)) ** 2
    return np.where(r < 1.0, 1, np.where(r < 1.6, 3, 2)).astype(np.uint8)


def write_pet(root: str) -> Fake:
    images, annotations = {}, {}
    examples = {"train": {}, "test": {}}
    for split, rows, listing in (("train", PET_TRAINVAL, "trainval"), ("test", PET_TEST, "test")):
        lines = []
        for name, class_id, species, breed, (h, w) in rows:
            trimap = _trimap(h, w)
            image = _paint(trimap, PET_COLOURS)
            if name == "Abyssinian_5":  # a _CORRUPT_SAMPLES name: a PNG with alpha as .jpg
                rgba = np.concatenate([image, np.full((h, w, 1), 255, np.uint8)], -1)
                images[f"images/{name}.jpg"] = _encode(rgba, "PNG", "RGBA")
            else:
                images[f"images/{name}.jpg"] = _encode(image, "JPEG")
            annotations[f"annotations/trimaps/{name}.png"] = _encode(trimap, "PNG", "L")
            if split == "train" and name != "beagle_2":  # test images (and some others) lack one
                annotations[f"annotations/xmls/{name}.xml"] = (
                    f"<annotation><size><width>{w}</width><height>{h}</height></size><object>"
                    f"<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>{w - 2}</xmax><ymax>{h // 2}"
                    "</ymax></bndbox></object></annotation>").encode()
            lines.append(f"{name} {class_id} {species} {breed}\n")
            examples[split][f"{name}.jpg"] = (image, trimap)
        annotations[f"annotations/{listing}.txt"] = "".join(lines).encode()
    os.makedirs(root, exist_ok=True)
    _write_tar(os.path.join(root, "images.tar.gz"), images)
    _write_tar(os.path.join(root, "annotations.tar.gz"), annotations)
    return Fake(examples, PET_COLOURS, reencoded=("Abyssinian_5.jpg",), archives={
        f"{PET_URL}/images.tar.gz": os.path.join(root, "images.tar.gz"),
        f"{PET_URL}/annotations.tar.gz": os.path.join(root, "annotations.tar.gz")})


# ---------------------------------------------------------------------------------- cityscapes

CITYSCAPES_IDS = {"train": ["aachen_000000_000019", "bochum_000000_000313"],
                  "val": ["frankfurt_000000_000294", "lindau_000000_000019"],
                  "test": ["berlin_000000_000019"]}
CITYSCAPES_HW = (1024, 2048)
# One colour per labelId 0..33, far apart (lossless PNG: only resize blends them).
CITYSCAPES_COLOURS = {k: (int(37 * k % 256), int(255 - 7 * k), int(91 * k % 256))
                      for k in range(34)}


def _label_ids(shift: int) -> np.ndarray:
    """labelIds in 128x128 blocks cycling through all 34 ids (void ones included)."""
    h, w = CITYSCAPES_HW
    block = (np.arange(h)[:, None] // 128) * 16 + np.arange(w)[None, :] // 128
    return ((block + shift) % 34).astype(np.uint8)


def write_cityscapes(manual_dir: str) -> Fake:
    os.makedirs(manual_dir, exist_ok=True)
    examples = {}
    left = zipfile.ZipFile(os.path.join(manual_dir, "leftImg8bit_trainvaltest.zip"), "w")
    fine = zipfile.ZipFile(os.path.join(manual_dir, "gtFine_trainvaltest.zip"), "w")
    with left, fine:
        left.writestr("README", b"fake")
        fine.writestr("license.txt", b"fake")
        for n, (split, ids) in enumerate(CITYSCAPES_IDS.items()):
            tfds_split = {"val": "validation"}.get(split, split)
            examples[tfds_split] = {}
            for k, image_id in enumerate(ids):
                city = image_id.split("_")[0]
                label = (np.zeros(CITYSCAPES_HW, np.uint8) if split == "test"
                         else _label_ids(shift=5 * n + 11 * k))
                image = _paint(_label_ids(shift=5 * n + 11 * k), CITYSCAPES_COLOURS)
                left.writestr(f"leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png",
                              _encode(image, "PNG"))
                prefix = f"gtFine/{split}/{city}/{image_id}_gtFine_"
                fine.writestr(prefix + "labelIds.png", _encode(label, "PNG", "L"))
                fine.writestr(prefix + "color.png", _encode(image[:8, :8], "PNG"))
                fine.writestr(prefix + "polygons.json", b"{}")
                examples[tfds_split][image_id] = (image, label)
    return Fake(examples, CITYSCAPES_COLOURS, manual_dir=manual_dir)


# ------------------------------------------------------------------------------ scene_parse150

# Unique sizes per example: the dataset has no id feature, examples are told apart by size.
ADE_SIZES = {"training": [(22, 30), (26, 24), (20, 34)], "validation": [(24, 32), (30, 26)]}
# Red channel values drawn (0 = stuff / unlabelled -> ignore; 4 = person -> class 3; ...).
ADE_CATEGORIES = (0, 1, 4, 57, 100)
ADE_COLOURS = {0: (128, 128, 128), 1: (230, 30, 30), 4: (30, 220, 30), 57: (30, 30, 230),
               100: (230, 230, 30)}


def _instance_mask(h: int, w: int, k: int) -> np.ndarray:
    """RGB annotation: vertical bands of categories (red), instance ids (green), blue 0."""
    red = np.array(ADE_CATEGORIES, np.uint8)[(np.arange(w)[None, :] * 5 // w + k) % 5]
    red = np.broadcast_to(red, (h, w)).copy()
    red[: h // 3] = ADE_CATEGORIES[(k + 2) % 5]
    green = np.where(red > 0, 1 + (np.arange(h)[:, None] * 2 // h), 0).astype(np.uint8)
    return np.stack([red, green, np.zeros_like(red)], -1)


def write_scene_parse150(root: str) -> Fake:
    images, annotations = {}, {}
    examples = {}
    for folder, sizes in ADE_SIZES.items():
        split = {"training": "train", "validation": "test"}[folder]  # TFDS's names
        examples[split] = {}
        tag = {"training": "train", "validation": "val"}[folder]
        for k, (h, w) in enumerate(sizes):
            name = f"ADE_{tag}_{k + 1:08d}"
            annotation = _instance_mask(h, w, k)
            image = _paint(annotation[..., 0], ADE_COLOURS)
            images[f"images/{folder}/{name}.jpg"] = _encode(image, "JPEG")
            annotations[f"annotations_instance/{folder}/{name}.png"] = _encode(annotation, "PNG")
            examples[split][(h, w)] = (image, annotation[..., 0])
    os.makedirs(root, exist_ok=True)
    _write_tar(os.path.join(root, "images.tar"), images)
    _write_tar(os.path.join(root, "annotations_instance.tar"), annotations)
    return Fake(examples, ADE_COLOURS, archives={
        f"{ADE_URL}/images.tar": os.path.join(root, "images.tar"),
        f"{ADE_URL}/annotations_instance.tar": os.path.join(root, "annotations_instance.tar")})


# ------------------------------------------------------------------------------------ download


@contextlib.contextmanager
def offline_downloads(archives: dict[str, str]):
    """TFDS's `DownloadManager` serving `archives` (URL -> local file), refusing anything else.

    Yields the list of URLs the builder asked for. `download_and_extract` is TFDS's own
    `extract` of the mapped files; the real downloader (`_download`) and Kaggle/checksum
    downloads raise AssertionError at once instead of retrying a network that is not there.
    """
    from etils import epath
    from tensorflow_datasets.core.utils.lazy_imports_utils import tensorflow as tf

    requested = []

    def local(url):
        url = str(getattr(url, "url", url))
        requested.append(url)
        if url not in archives:
            raise AssertionError(f"the builder would download {url}")
        return epath.Path(archives[url])

    def download(self, url_or_urls):
        return tf.nest.map_structure(local, url_or_urls)

    def download_and_extract(self, url_or_urls):
        return self.extract(download(self, url_or_urls))

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"the builder would download {args}")

    with mock.patch.multiple("tensorflow_datasets.core.download.DownloadManager",
                             download=download, download_and_extract=download_and_extract,
                             download_kaggle_data=refuse, download_checksums=refuse,
                             _download=refuse):
        yield requested
