"""Memory bounds of the data readers (issue 29): a pathological input fails by name instead of
growing without bound.

The files here only CLAIM large sizes (a PNG IHDR or JPEG SOF0 header patched by hand, a JSON
entry, a polygon's coordinates); no test allocates the pixels. pycocotools is replaced by a
tripwire wherever an input must be refused before it reaches the rasteriser.
"""
import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from segjax.data.builders import _coco_checks, coco_instances, voc2012_segmentation
from segjax.data.builders._common import MAX_IMAGE_PIXELS, open_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(path, width, height, palette=False):
    """A ~100-byte PNG whose IHDR says `width` x `height` (RGB, or palette with a PLTE chunk);
    its IDAT holds a few bytes, so decoding would fail -- after allocating the pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3 if palette else 2, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr)
    if palette:
        body += _chunk(b"PLTE", bytes(range(48)))
    body += _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + body)
    return path


def jpeg_claiming(path, width, height):
    """A real 8x8 JPEG whose SOF0 header is patched to say `width` x `height`."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path


@pytest.fixture
def no_pycocotools(monkeypatch):
    from pycocotools import mask as mask_utils

    def tripwire(*args, **kwargs):
        raise AssertionError("the segmentation reached pycocotools unchecked")
    for name in ("frPyObjects", "merge", "decode"):
        monkeypatch.setattr(mask_utils, name, tripwire)


# 10^5 x 10^5 (30 GB as RGB; PIL's own bomb check fires), 12,000 x 12,000 (1.44e8 pixels:
# under PIL's error limit, over segjax's 1e8), a 200,000,000 x 1 strip; JPEG sizes are 16-bit.
CLAIMS = [("png", 100_000, 100_000), ("png", 12_000, 12_000), ("png", 200_000_000, 1),
          ("jpeg", 60_000, 60_000), ("jpeg", 12_000, 12_000), ("jpeg", 65_535, 2_000)]


@pytest.mark.parametrize("kind, width, height", CLAIMS)
def test_image_headers_claiming_too_many_pixels_are_refused_unread(tmp_path, kind, width,
                                                                   height):
    path = str(tmp_path / "claims.img")
    (png_claiming if kind == "png" else jpeg_claiming)(path, width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for read in (lambda: voc2012_segmentation.read_image_size(path),
                     lambda: coco_instances.read_image(path, {"id": 4, "file_name": "x"}),
                     lambda: open_image(path)):
            with pytest.raises(ValueError, match="claims") as e:
                read()
            assert path in str(e.value), str(e.value)
    assert width * height > MAX_IMAGE_PIXELS


def test_voc_mask_claiming_another_size_is_refused_before_decoding(tmp_path):
    mask = png_claiming(str(tmp_path / "m.png"), 50_000, 50_000, palette=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ValueError, match="claims") as e:
            voc2012_segmentation.read_voc_mask(mask, (9, 9))
    assert mask in str(e.value)
    mask = png_claiming(str(tmp_path / "n.png"), 9_000, 9_000, palette=True)  # within bounds
    # Within the bound but not its image's size: refused from the header, not decoded (the
    # old reader decoded it first and failed on the truncated data).
    with pytest.raises(ValueError, match=r"size \(9000, 9000\), its image has size \(9, 11\)"):
        voc2012_segmentation.read_voc_mask(mask, (9, 11))


def test_coco_declared_size_is_bounded_at_json_level(tmp_path):
    data = {"images": [{"id": 3, "file_name": "x.png", "height": 100_000, "width": 100_000}],
            "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    with pytest.raises(ValueError, match="claims 100000x100000") as e:
        coco_instances.index_annotations(data, "x.json", str(tmp_path), {1: "a"})
    assert "x.json: image id 3" in str(e.value)
    data["images"][0].update(height=float("nan"))
    with pytest.raises(ValueError, match="x.json: image id 3 declares height, width nan"):
        coco_instances.index_annotations(data, "x.json", str(tmp_path), {1: "a"})


def _ann(segm):
    return {"id": 9, "image_id": 1, "category_id": 1, "segmentation": segm}


def test_polygon_with_a_million_vertices_is_refused(no_pycocotools):
    xs = np.linspace(0, 15, 10**6)
    poly = np.stack([xs, 8 + 4 * np.sin(xs * 50)], -1).ravel().tolist()  # inside a 16x16 image
    with pytest.raises(ValueError, match="1,000,000 polygon points, more than the 100,000") as e:
        coco_instances.decode_segmentation(_ann([poly]), (16, 16), tolerance=1.0,
                                           where="x.json")
    assert "x.json: annotation id 9" in str(e.value)
    # The bound is per annotation: two polygons of 60,000 points each are refused too.
    half = poly[:120_000]
    with pytest.raises(ValueError, match="120,000 polygon points"):
        coco_instances.check_segmentation(_ann([half, half]), None, tolerance=1.0, where="x")


def test_polygon_boundary_is_bounded(no_pycocotools):
    """pycocotools keeps ~40 bytes per traced boundary pixel: a zigzag of 2,000 points across
    a 10,000-pixel image traces 2e7 pixels (0.8 GB) and is refused; 400 points (4e6) pass."""
    def zigzag(n):
        xs = np.linspace(0, 10_000, n)
        ys = np.where(np.arange(n) % 2, 0.0, 10_000.0)
        return np.stack([xs, ys], -1).ravel().tolist()

    with pytest.raises(ValueError, match="px of boundary, more than the 10,000,000"):
        coco_instances.check_segmentation(_ann([zigzag(2000)]), (10_000, 10_000),
                                          tolerance=1.0, where="x.json")
    kind, polys = coco_instances.check_segmentation(_ann([zigzag(400)]), (10_000, 10_000),
                                                    tolerance=1.0, where="x.json")
    assert kind == "polygons" and len(polys[0]) == 800


def test_rle_length_is_bounded_by_the_image_area(no_pycocotools):
    counts = [0, 1] * 50 + [0]  # 101 runs summing to 50 in a 5x10 image: more runs than pixels
    with pytest.raises(ValueError, match="RLE of 101 runs, more than its 5x10 image"):
        coco_instances.check_segmentation(_ann({"size": [5, 10], "counts": counts}), (5, 10),
                                          tolerance=1.0, where="x.json")
    with pytest.raises(ValueError, match="compressed RLE of 358 characters"):
        coco_instances.check_segmentation(_ann({"size": [5, 10], "counts": "1" * 358}), None,
                                          tolerance=1.0, where="x.json")
    with pytest.raises(ValueError, match="claims 100000x100000"):  # its own size, JSON level
        coco_instances.check_segmentation(_ann({"size": [10**5, 10**5], "counts": [10**10]}),
                                          None, tolerance=1.0, where="x.json")


def test_compressed_counts_transcription_equals_pycocotools(np_rng):
    """`_coco_checks.compressed_counts` against pycocotools' own encoder: the runs of random
    masks (column-major, from zeros) written by `mask.encode` decode to the true runs."""
    from pycocotools import mask as mask_utils
    for _ in range(30):
        h, w = np_rng.integers(1, 40, 2)
        m = (np_rng.uniform(size=(h, w)) < np_rng.uniform(0, 1)).astype(np.uint8)
        if np_rng.uniform() < 0.3:  # long runs: multi-character values and negative deltas
            m[:] = 0
            m[: np_rng.integers(0, h + 1)] = 1
        flat = m.T.ravel()
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.r_[0, edges, flat.size]).tolist()
        runs = ([0] + runs) if flat[0] else runs
        string = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
        assert _coco_checks.compressed_counts(string, "x") == runs


def test_bounds_are_stated_in_the_docs():
    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "data.md")).read()
    for bound in ("10^8", "100,000", "10^7"):
        assert bound in text, bound
    assert MAX_IMAGE_PIXELS == 10**8 and _coco_checks.MAX_POLYGON_POINTS == 100_000
    assert _coco_checks.MAX_POLYGON_BOUNDARY == 10**7


def mat_inflating_to(path, nbytes):
    """A MATLAB v5 file whose one compressed element inflates to `nbytes` zero bytes, written
    through zlib in 1 MB pieces (the zeros are never held)."""
    z, out = zlib.compressobj(9), []
    for start in range(0, nbytes, 1 << 20):
        out.append(z.compress(bytes(min(1 << 20, nbytes - start))))
    body = b"".join(out) + z.flush()
    header = b"MATLAB 5.0 MAT-file, crafted".ljust(116) + bytes(8) + b"\x00\x01IM"
    with open(path, "wb") as f:
        f.write(header + struct.pack("<II", 15, len(body)) + body)
    return path


def test_sbd_mat_inflating_past_the_bound_is_refused_by_streaming(tmp_path, monkeypatch):
    """MATLAB zlib-compresses each variable; scipy inflates it whole. The inflated size is
    counted first, in pieces: the bound (4e8 bytes) is lowered to 2 MB here to keep it quick."""
    import scipy.io
    monkeypatch.setattr(voc2012_segmentation, "MAX_MAT_BYTES", 2 << 20)
    bomb = mat_inflating_to(str(tmp_path / "bomb.mat"), 3 << 20)  # ~3 kB on disk
    assert os.path.getsize(bomb) < 10_000
    with pytest.raises(ValueError, match="inflates to more than 2,097,152 bytes") as e:
        voc2012_segmentation.read_sbd_mask(bomb, (9, 9))
    assert bomb in str(e.value)
    assert voc2012_segmentation.mat_inflated_size(
        mat_inflating_to(str(tmp_path / "ok.mat"), 1 << 20)) == 1 << 20
    # A real compressed SBD-style file (as MATLAB writes them) within the bound reads exactly.
    mask = (np.arange(99) % 21).astype(np.uint8).reshape(9, 11)
    ok = str(tmp_path / "real.mat")
    scipy.io.savemat(ok, {"GTcls": {"Segmentation": mask, "Boundaries": np.zeros((1, 1)),
                                    "CategoriesPresent": np.unique(mask)}}, do_compression=True)
    np.testing.assert_array_equal(voc2012_segmentation.read_sbd_mask(ok, (9, 11))[..., 0], mask)
    with pytest.raises(ValueError, match="not a MATLAB v5"):
        voc2012_segmentation.read_sbd_mask(png_claiming(str(tmp_path / "x.mat"), 9, 9), (9, 9))
