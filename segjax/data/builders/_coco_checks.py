"""The checks `coco_instances` runs on a COCO JSON before anything reaches pycocotools.

pycocotools' C code trusts its input: a NaN polygon coordinate becomes a garbage integer and its
rasteriser allocates without bound (a build was killed at 21.7 GB); an RLE whose counts sum to
more than H x W is decoded past the end of the mask's buffer. So every id, coordinate and count
is checked here, and every error names the JSON file and the image or annotation id.

Bounds (generous for real data, small enough that a build stays within a few GB):
  * MAX_POLYGON_POINTS points per annotation (all its polygons together);
  * MAX_POLYGON_BOUNDARY pixels of boundary per annotation: pycocotools traces each polygon
    edge on a 5x finer grid and keeps about 40 bytes per boundary pixel (measured), so 10^7
    pixels is at most about 0.4 GB; the boundary is sum over edges of max(|dx|, |dy|);
  * an RLE's counts must sum to exactly H x W and hold at most H x W + 1 runs (a compressed
    string at most 7 characters per run);
  * image sizes as `_common.MAX_IMAGE_PIXELS`.
"""
from __future__ import annotations

import math

import numpy as np

from segjax.data.builders._common import check_pixel_count

MAX_POLYGON_POINTS = 100_000
MAX_POLYGON_BOUNDARY = 10**7


def integer(value) -> int | None:
    """`value` as an int when it is a JSON integer (or a float with an integer value), else
    None (booleans, strings, NaN, fractions...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_images(data: dict, path: str) -> dict[int, dict]:
    """`{image id: entry}` of a COCO JSON's `images`, in order; raises ValueError naming `path`
    and the id on a missing or non-integer id, a duplicate id, a missing `file_name`, or a
    declared `height`/`width` that is not a positive integer or claims too many pixels."""
    if not isinstance(data["images"], list):
        raise ValueError(f"{path}: `images` is not a list")
    images = {}
    for k, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: images[{k}] is not an object")
        image_id = integer(entry.get("id"))
        if image_id is None:
            raise ValueError(f"{path}: images[{k}] has id {entry.get('id')!r}, not an integer")
        if image_id in images:
            raise ValueError(f"{path}: duplicate image id {image_id} (images "
                             f"{images[image_id]['file_name']!r} and {entry.get('file_name')!r})")
        name = entry.get("file_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: image id {image_id} has file_name {name!r}")
        declared = [entry.get(key) for key in ("height", "width") if key in entry]
        if declared:
            sizes = [integer(v) for v in declared]
            if len(declared) != 2 or any(s is None or s < 1 for s in sizes):
                raise ValueError(f"{path}: image id {image_id} declares height, width "
                                 f"{entry.get('height')!r}, {entry.get('width')!r}; both must "
                                 "be positive integers")
            check_pixel_count(*sizes, f"{path}: image id {image_id}")
        images[image_id] = entry
    return images


def check_annotation(ann, k: int, path: str, images: dict, known: dict,
                     seen: set) -> tuple[int, int]:
    """(annotation id, image id) of `annotations[k]`, with its fields checked; raises ValueError
    naming `path` and the annotation id on a missing, non-integer or duplicate id, an image id
    not in `images`, a category id not in `known`, `iscrowd` other than 0/1, or a `bbox`/`area`
    (when given) that is not finite and non-negative in size. Adds the id to `seen`."""
    if not isinstance(ann, dict):
        raise ValueError(f"{path}: annotations[{k}] is not an object")
    aid = integer(ann.get("id"))
    if aid is None:
        raise ValueError(f"{path}: annotations[{k}] has id {ann.get('id')!r}, not an integer")
    if aid in seen:
        raise ValueError(f"{path}: duplicate annotation id {aid}")
    seen.add(aid)
    image_id = integer(ann.get("image_id"))
    if image_id is None or image_id not in images:
        raise ValueError(f"{path}: annotation id {aid} points at image id "
                         f"{ann.get('image_id')!r}, which is not in the file's images")
    category = integer(ann.get("category_id"))
    if category is None or category not in known:
        raise ValueError(f"{path}: annotation id {aid} (image id {image_id}) has unknown "
                         f"category id {ann.get('category_id')!r}; known: {sorted(known)}")
    if ann.get("iscrowd", 0) not in (0, 1):  # True/False compare equal to 1/0
        raise ValueError(f"{path}: annotation id {aid} has iscrowd {ann['iscrowd']!r}, not 0 "
                         "or 1")
    if "bbox" in ann:
        box = ann["bbox"]
        if (not isinstance(box, list) or len(box) != 4 or not all(map(_number, box))
                or not all(map(math.isfinite, box)) or box[2] < 0 or box[3] < 0):
            raise ValueError(f"{path}: annotation id {aid} has bbox {box!r}; expected "
                             "[x, y, width, height], finite, width and height >= 0")
    if "area" in ann:
        area = ann["area"]
        if not _number(area) or not math.isfinite(area) or area < 0:
            raise ValueError(f"{path}: annotation id {aid} has area {area!r}; expected a "
                             "finite number >= 0")
    return aid, image_id


def polygons(segm: list, hw: tuple[int, int] | None, tolerance: float, where: str) -> list:
    """The polygons of one annotation (`where` names the file and annotation id), checked:
    each a flat list of 3 or more finite x, y pairs within `tolerance` px of the image (not
    checked when `hw` is None: size unknown yet), at most MAX_POLYGON_POINTS points and
    MAX_POLYGON_BOUNDARY boundary pixels in all. Returns them as lists of floats."""
    if not segm:
        raise ValueError(f"{where} has an empty polygon list")
    total = sum(len(p) if isinstance(p, list) else 0 for p in segm) // 2
    if total > MAX_POLYGON_POINTS:
        raise ValueError(f"{where} has {total:,} polygon points, more than the "
                         f"{MAX_POLYGON_POINTS:,} allowed per annotation")
    out, boundary = [], 0.0
    for poly in segm:
        if not isinstance(poly, list) or not all(map(_number, poly)):
            raise ValueError(f"{where} has a polygon that is not a flat list of numbers")
        pts = np.asarray(poly, np.float64)
        if pts.size < 6 or pts.size % 2:
            raise ValueError(f"{where} has a polygon with {pts.size} coordinates; a polygon "
                             "needs x, y pairs of 3 or more points")
        if not np.isfinite(pts).all():
            raise ValueError(f"{where} has a polygon with non-finite coordinates "
                             f"{sorted(set(pts[~np.isfinite(pts)].tolist()))}")
        xs, ys = pts[0::2], pts[1::2]
        h, w = hw or (np.inf, np.inf)
        if (xs.min() < -tolerance or ys.min() < -tolerance or xs.max() > w + tolerance
                or ys.max() > h + tolerance):
            raise ValueError(
                f"{where} has a polygon outside its {h}x{w} (HxW) image "
                f"(x in [{xs.min():g}, {xs.max():g}], y in [{ys.min():g}, {ys.max():g}], "
                f"tolerance {tolerance:g} px)")
        boundary += float(np.maximum(np.abs(xs - np.roll(xs, 1)),
                                     np.abs(ys - np.roll(ys, 1))).sum())
        out.append(pts.tolist())
    if boundary > MAX_POLYGON_BOUNDARY:
        raise ValueError(f"{where} has polygons with {boundary:,.0f} px of boundary, more than "
                         f"the {MAX_POLYGON_BOUNDARY:,} allowed per annotation")
    return out


def compressed_runs(counts: str, where: str):
    """Yields the run lengths of a compressed COCO RLE string: pycocotools' `rleFrString`,
    written out in Python so that a malformed string fails by name instead of being read past
    its end. Keeps two runs in memory, so a caller can stop early."""
    data = counts.encode("utf-8")
    if any(not 48 <= b < 112 for b in data):
        raise ValueError(f"{where} has a compressed RLE with characters outside '0'..'o'")
    prev2 = prev1 = 0  # the runs two and one back (the deltas are against the one two back)
    m, x, k = 0, 0, 0
    for b in data:
        c = b - 48
        x |= (c & 0x1F) << (5 * k)
        k += 1
        if c & 0x20:  # more characters of this value
            if k == 7:
                break
            continue
        if c & 0x10:
            x -= 1 << (5 * k)  # sign extension, as `x |= -1 << 5*k`
        if m > 2:
            x += prev2
        yield x
        prev2, prev1, m, x, k = prev1, x, m + 1, 0, 0
    if k:
        raise ValueError(f"{where} has a compressed RLE that ends inside a run length or holds "
                         "one of more than 7 characters")


def compressed_counts(counts: str, where: str) -> list[int]:
    """All run lengths of a compressed COCO RLE string (`compressed_runs`)."""
    return list(compressed_runs(counts, where))


def rle(segm: dict, hw: tuple[int, int] | None, where: str) -> dict:
    """An RLE segmentation checked against its image size `hw`: `size` equal to it, counts
    non-negative integers summing to exactly H x W (at most H x W + 1 of them); with `hw` None
    (the image's size unknown yet) only the types, signs and the length against its own `size`.
    Returns the RLE as pycocotools takes it (`{"size", "counts"}`, compressed counts as
    bytes)."""
    size = segm["size"]
    own = [integer(s) for s in size] if isinstance(size, list) else None
    if own is None or len(own) != 2 or any(s is None or s < 1 for s in own):
        raise ValueError(f"{where} has an RLE of size {size!r}, not [height, width]")
    check_pixel_count(*own, f"{where}: its RLE")
    h, w = hw or own
    if own != [h, w]:
        raise ValueError(f"{where} has an RLE of size {size!r} (HxW), its image is {h}x{w}")
    counts = segm["counts"]
    if isinstance(counts, list):
        if len(counts) > h * w + 1:
            raise ValueError(f"{where} has an RLE of {len(counts):,} runs, more than its "
                             f"{h}x{w} image can hold")
        runs = [integer(c) for c in counts]
        if any(r is None or r < 0 for r in runs):
            raise ValueError(f"{where} has an RLE whose counts are not all integers >= 0")
    elif isinstance(counts, str):
        if len(counts) > 7 * (h * w + 1):
            raise ValueError(f"{where} has a compressed RLE of {len(counts):,} characters, "
                             f"more than its {h}x{w} image can hold")
        total, limit = 0, (h * w if hw is not None else None)
        for r in compressed_runs(counts, where):  # without a list of up to H x W runs
            if r < 0:
                raise ValueError(f"{where} has a compressed RLE with negative run lengths")
            total += r
            if limit is not None and total > limit:
                raise ValueError(f"{where} has an RLE whose counts sum to more than its {h}x{w} "
                                 f"image's {h * w:,} pixels")
        runs = [total]
    else:
        raise ValueError(f"{where} has RLE counts of type {type(counts).__name__}, neither a "
                         "list nor a string")
    if hw is not None and sum(runs) != h * w:
        raise ValueError(f"{where} has an RLE whose counts sum to {sum(runs):,}, its {h}x{w} "
                         f"image has {h * w:,} pixels")
    if isinstance(counts, list):
        return {"size": [h, w], "counts": runs}
    return {"size": [h, w], "counts": counts.encode()}
