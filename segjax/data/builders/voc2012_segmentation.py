"""`voc2012_segmentation`: PASCAL VOC 2012 semantic segmentation, plus SBD's `train_aug`.

Splits: `train` (1,464) and `val` (1,449) from `ImageSets/Segmentation/{train,val}.txt`, and
`train_aug` (10,582) = VOC train + SBD train + SBD val - VOC val. Features: `image` (the original
JPEG bytes), `segmentation_mask` uint8 `[H, W, 1]` class ids 0..20 with 255 on object boundaries
and "difficult" regions, and `image_id` (e.g. `2007_000032`).

`train_aug` masks: an id with a VOC annotation (VOC train) keeps it (with its 255 band); the
others come from SBD `cls/<id>.mat` (struct `GTcls`, field `Segmentation`), which has no 255
band -- every pixel is labelled, boundary pixels with their object's class. Mixed this way the
band covers about 14% of `train_aug` images; losses simply ignore it where present.

Every image is decoded once while building: a missing, corrupt or non-RGB JPEG, a mask whose size
differs from its image, a mask value outside 0..20 (and 255 for VOC), a split list that names an
id twice, an image or mask header claiming more than `_common.MAX_IMAGE_PIXELS` (10^8) pixels, or
an SBD `.mat` file inflating to more than `MAX_MAT_BYTES` (4 x 10^8) stops the build with the file
name (and the id). Sizes are compared from the headers before any
pixel is decoded. Nothing is skipped.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders._common import (MAX_IMAGE_PIXELS, LocalCodePath, manual_dir_of,
                                          open_image, semantic_features)

VOC_URL = "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC_TAR, VOC_SIZE = "VOCtrainval_11-May-2012.tar", 1999639040
VOC_SHA256 = "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb"
SBD_URL = ("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
           "semantic_contours/benchmark.tgz")
SBD_TGZ = "benchmark.tgz"
SBD_SHA256 = "6a5a2918d5c73ce032fdeba876574d150d9d04113ab87540a1304cbcc715be53"
NUM_CLASSES, IGNORE = 21, 255

INSTRUCTIONS = f"""\
PASCAL VOC 2012 + SBD are not prepared yet. Put these two files (or their extracted trees)
into the manual directory <manual_dir>:
  1. {VOC_TAR}  (2.0 GB)  from {VOC_URL}
     or the extracted tree <manual_dir>/VOCdevkit/VOC2012/{{JPEGImages,SegmentationClass,...}}
  2. {SBD_TGZ}  (1.4 GB)  from {SBD_URL}
     or the extracted tree <manual_dir>/benchmark_RELEASE/dataset/{{img,cls,train.txt,val.txt}}
then build with
  python -m segjax.data prepare voc2012 --data_dir=DATA_DIR --manual_dir=MANUAL_DIR
(on a machine with network access, add --download to fetch both: 3.4 GB)."""


def _find_tree(root: str, candidates: tuple, marker: str) -> str | None:
    for rel in candidates:
        path = os.path.join(root, *rel)
        if os.path.isdir(os.path.join(path, marker)):
            return path
    return None


def find_sources(manual_dir: str) -> dict:
    """Locates the VOC and SBD data under `manual_dir`: returns
    `{"voc": ("dir"|"tar", path), "sbd": ("dir"|"tgz", path)}`; raises FileNotFoundError with
    instructions when either is missing."""
    voc = _find_tree(manual_dir, (("VOCdevkit", "VOC2012"), ("VOC2012",), ()), "JPEGImages")
    sbd = _find_tree(manual_dir, (("benchmark_RELEASE", "dataset"), ("dataset",), ()), "cls")
    found = {"voc": ("dir", voc) if voc else None, "sbd": ("dir", sbd) if sbd else None}
    if found["voc"] is None and os.path.isfile(os.path.join(manual_dir, VOC_TAR)):
        found["voc"] = ("tar", os.path.join(manual_dir, VOC_TAR))
    if found["sbd"] is None and os.path.isfile(os.path.join(manual_dir, SBD_TGZ)):
        found["sbd"] = ("tgz", os.path.join(manual_dir, SBD_TGZ))
    missing = [k for k, v in found.items() if v is None]
    if missing:
        what = " and ".join(m.upper() for m in missing)
        raise FileNotFoundError(f"Missing {what} data in {manual_dir!r}.\n"
                                + INSTRUCTIONS.replace("<manual_dir>", manual_dir, 1))
    return found


def read_ids(path: str) -> list[str]:
    """Image ids, one per line, from an `ImageSets`/SBD list file; raises naming the file (and
    the id) when it is missing, empty, not text, or lists an id twice."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing split list file {path}")
    try:
        with open(path, encoding="utf-8") as f:
            ids = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"Split list file {path} is not UTF-8 text: {e}") from None
    if not ids:
        raise ValueError(f"Split list file {path} is empty")
    seen = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"Split list file {path} lists image id {i!r} twice")
        if os.sep in i or i in (".", ".."):
            raise ValueError(f"Split list file {path} lists {i!r}, not an image id")
        seen.add(i)
    return ids


def read_image_size(path: str) -> tuple[int, int]:
    """Fully decodes an RGB JPEG and returns its `(height, width)`; raises naming the file if
    it is missing (FileNotFoundError), corrupt, truncated, not RGB or its header claims more
    than `MAX_IMAGE_PIXELS` (ValueError, before any pixel is decoded)."""
    with open_image(path) as im:
        mode, (width, height) = im.mode, im.size
        if mode != "RGB":
            raise ValueError(f"Image file {path} is {mode}, expected RGB")
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"Corrupt or unreadable image file {path}: {e}") from None
    return height, width


def _check_mask(mask: np.ndarray, path: str, image_hw: tuple, allowed_ignore: bool) -> np.ndarray:
    if mask.shape != image_hw:
        raise ValueError(f"Mask {path} has size {mask.shape}, its image has size {image_hw}")
    bad = (mask >= NUM_CLASSES) & ~((mask == IGNORE) & allowed_ignore)
    if bad.any():
        raise ValueError(f"Mask {path} has values {sorted(set(np.unique(mask[bad]).tolist()))} "
                         f"outside [0, {NUM_CLASSES})" + (" and 255" if allowed_ignore else ""))
    return mask.astype(np.uint8)[..., None]


def read_voc_mask(path: str, image_hw: tuple) -> np.ndarray:
    """Class ids uint8 `[H, W, 1]` from a VOC palette PNG (the palette indices, not colours);
    its header's size is compared with the image's before any pixel is decoded."""
    with open_image(path, "mask file") as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"Mask {path} has mode {im.mode}, expected a palette PNG")
        if (im.size[1], im.size[0]) != tuple(image_hw):
            raise ValueError(f"Mask {path} has size {(im.size[1], im.size[0])}, its image has "
                             f"size {tuple(image_hw)}")
        try:
            im.load()
            mask = np.asarray(im)
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"Corrupt or unreadable mask file {path}: {e}") from None
    return _check_mask(mask, path, image_hw, allowed_ignore=True)


# The most bytes an SBD `.mat` file may hold once inflated: its uint8 class map at the image
# bound plus its boundaries (sparse) and headers. MATLAB compresses each variable with zlib,
# which inflates up to ~1000x: a 1 MB file can hold 1 GB of zeros, which scipy inflates whole.
MAX_MAT_BYTES = 4 * MAX_IMAGE_PIXELS


def mat_inflated_size(path: str, limit: int | None = None, what: str = "SBD file") -> int:
    """Bytes of a MATLAB v5 file's data elements once inflated, counted by streaming each
    compressed element through zlib in 1 MB pieces (nothing kept); raises ValueError naming the
    file as soon as the count passes `limit` (None: MAX_MAT_BYTES), or when the file is not a
    MATLAB v5 file."""
    import struct
    import zlib

    limit = MAX_MAT_BYTES if limit is None else limit
    total = 0
    with open(path, "rb") as f:
        header = f.read(128)
        if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
            raise ValueError(f"Unreadable {what} {path}: not a MATLAB v5 .mat file")
        order = "<" if header[126:128] == b"IM" else ">"
        while True:
            tag = f.read(8)
            if len(tag) < 8:
                break
            kind, nbytes = struct.unpack(order + "II", tag)
            if kind != 15:  # not miCOMPRESSED: stored as is, 8-byte aligned
                total += nbytes
                f.seek(nbytes + (-nbytes) % 8, os.SEEK_CUR)
            else:
                inflate, left = zlib.decompressobj(), nbytes
                while left > 0:
                    piece = f.read(min(left, 1 << 20))
                    if not piece:
                        break
                    left -= len(piece)
                    data = inflate.decompress(piece, 1 << 20)
                    while data:
                        total += len(data)
                        if total > limit:
                            break
                        data = inflate.decompress(inflate.unconsumed_tail, 1 << 20)
                    if total > limit:
                        break
            if total > limit:
                raise ValueError(f"{what} {path} inflates to more than {limit:,} bytes (the "
                                 f"bound for a class map of at most {MAX_IMAGE_PIXELS:,} "
                                 "pixels)")
    return total


def read_sbd_mask(path: str, image_hw: tuple) -> np.ndarray:
    """Class ids uint8 `[H, W, 1]` from an SBD `cls/*.mat` file (`GTcls.Segmentation`); its
    inflated size is bounded (`mat_inflated_size`) before scipy reads it."""
    import scipy.io

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing SBD file {path}")
    mat_inflated_size(path)
    try:
        mask = np.asarray(scipy.io.loadmat(path)["GTcls"]["Segmentation"][0, 0])
    except Exception as e:  # scipy raises several types for damaged .mat files
        raise ValueError(f"Unreadable SBD file {path}: {e!r}") from None
    return _check_mask(mask, path, image_hw, allowed_ignore=False)


def split_examples(voc_dir: str, sbd_dir: str) -> dict:
    """`{split: [(image_id, image_path, mask_path, kind)]}` with `kind` in `voc`/`sbd`."""
    sets = os.path.join(voc_dir, "ImageSets", "Segmentation")
    train, val = (read_ids(os.path.join(sets, f"{s}.txt")) for s in ("train", "val"))

    def voc(i):
        return (i, os.path.join(voc_dir, "JPEGImages", f"{i}.jpg"),
                os.path.join(voc_dir, "SegmentationClass", f"{i}.png"), "voc")

    def sbd(i):
        return (i, os.path.join(sbd_dir, "img", f"{i}.jpg"),
                os.path.join(sbd_dir, "cls", f"{i}.mat"), "sbd")

    sbd_ids = read_ids(os.path.join(sbd_dir, "train.txt")) + read_ids(
        os.path.join(sbd_dir, "val.txt"))
    in_train, in_val = set(train), set(val)
    extra = sorted(set(sbd_ids) - in_train - in_val)
    return {"train": [voc(i) for i in train], "val": [voc(i) for i in val],
            "train_aug": [voc(i) for i in train] + [sbd(i) for i in extra]}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_example(image_id: str, image_path: str, mask_path: str, kind: str) -> tuple[str, dict]:
    """(key, features) of one entry of `split_examples`: the image decoded and checked, its
    VOC or SBD mask read and checked against it."""
    hw = read_image_size(image_path)
    mask = read_voc_mask(mask_path, hw) if kind == "voc" else read_sbd_mask(mask_path, hw)
    return image_id, {"image": image_path, "segmentation_mask": mask, "image_id": image_id}


class Voc2012Segmentation(LocalCodePath, tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 segmentation with the SBD-augmented `train_aug` split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train, val, train_aug."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        return {VOC_URL: tfds.core.download.checksums.UrlInfo(
            size=VOC_SIZE, checksum=VOC_SHA256, filename=VOC_TAR)}

    def __init__(self, *, download: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._allow_download = download

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=semantic_features(),
            supervised_keys=("image", "segmentation_mask"),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        )

    def _split_generators(self, dl_manager):
        manual_dir = manual_dir_of(dl_manager)
        try:
            sources = find_sources(manual_dir)
        except FileNotFoundError:
            if not self._allow_download:
                raise
            paths = dl_manager.download({"voc": VOC_URL, "sbd": SBD_URL})
            if _sha256(os.fspath(paths["sbd"])) != SBD_SHA256:
                raise ValueError(f"{paths['sbd']}: SHA-256 differs from {SBD_SHA256}")
            sources = {"voc": ("tar", os.fspath(paths["voc"])),
                       "sbd": ("tgz", os.fspath(paths["sbd"]))}
        roots = {}
        for key, (kind, path) in sources.items():
            if kind == "dir":
                roots[key] = path
            else:
                extracted = os.fspath(dl_manager.extract(path))
                marker = "JPEGImages" if key == "voc" else "cls"
                roots[key] = _find_tree(extracted, (("VOCdevkit", "VOC2012"),
                                                    ("benchmark_RELEASE", "dataset")), marker)
                if roots[key] is None:
                    raise ValueError(f"{path} does not contain the expected {key.upper()} tree")
        splits = split_examples(roots["voc"], roots["sbd"])
        return {name: self._generate_examples(examples) for name, examples in splits.items()}

    def _generate_examples(self, examples):
        for example in examples:
            yield read_example(*example)

    def check_source_data(self, manual_dir: str, *, download: bool = False) -> None:
        """Raises FileNotFoundError with instructions at once if the raw data is missing and
        `download` is False (TFDS would otherwise retry a download for minutes)."""
        self._allow_download = self._allow_download or download
        if not self._allow_download:
            find_sources(manual_dir)
