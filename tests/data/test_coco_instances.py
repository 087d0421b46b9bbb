"""coco_instances built from a tiny COCO-format tree the tests write.

References: pycocotools' own COCO API (`COCO.annToMask`, which decodes through `annToRLE`)
painted with the documented rule (crowd first as ignore, then non-crowd annotations in order);
torchvision's COCO_V1 category list for the 91 class names.
"""
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segjax.data import eval_batches, get_dataset_info, num_examples, prepare
from segjax.data.datasets import coco_instances_info
from segjax.data.records import _builder
from segjax.tasks.instance import instance_targets

PAD = (32, 32)


def _blob(rng, h, w):
    """A random filled ellipse, bool [h, w]."""
    canvas = Image.new("L", (w, h), 0)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    rx, ry = rng.uniform(0.15, 0.3) * w, rng.uniform(0.15, 0.3) * h
    ImageDraw.Draw(canvas).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    return np.asarray(canvas, bool)


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE of a bool mask: column-major run lengths starting with zeros."""
    flat = mask.T.ravel().astype(np.int64)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def _compressed_rle(mask):
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def _poly(rng, h, w, n=5):
    """A random convex-ish polygon inside the image, flat [x0, y0, x1, y1, ...]."""
    cx, cy, r = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h, 0.3 * min(h, w)
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    xs = np.clip(cx + r * np.cos(t), 0, w)
    ys = np.clip(cy + r * np.sin(t), 0, h)
    return np.round(np.stack([xs, ys], -1).ravel(), 2).tolist()


def write_tree(root, rng, *, layout="custom", cats=((3, "cat"), (7, "dog"))):
    """Writes a COCO-format tree; returns {split: json path}.

    Validation: 4 images (PNG RGB x2, greyscale JPEG, PNG without annotations) with polygons
    (one with two parts), uncompressed and compressed RLE, an overlapping pair and two crowd
    regions; train: 2 images.
    """
    (c1, _), (c2, _) = cats[0], cats[1]
    names = {"custom": (("train", "annotations/instances_train.json", "train"),
                        ("validation", "annotations/instances_val.json", "val")),
             "coco2017": (("train", "annotations/instances_train2017.json", "train2017"),
                          ("validation", "annotations/instances_val2017.json", "val2017"))}
    paths, ann_id = {}, 100
    for split, rel_json, rel_dir in names[layout]:
        os.makedirs(os.path.join(root, rel_dir), exist_ok=True)
        os.makedirs(os.path.dirname(os.path.join(root, rel_json)), exist_ok=True)
        specs = ([(20, 24, "a.png"), (18, 30, "b.png"), (16, 16, "c.jpg"), (22, 20, "d.png")]
                 if split == "validation" else [(20, 20, "t0.png"), (16, 24, "t1.png")])
        images, anns = [], []
        for k, (h, w, fname) in enumerate(specs):
            image_id = 10 * (k + 1) + (0 if split == "validation" else 1000)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            if fname.endswith(".jpg"):
                Image.fromarray(pixels[..., 0], "L").save(os.path.join(root, rel_dir, fname))
            else:
                Image.fromarray(pixels).save(os.path.join(root, rel_dir, fname))
            images.append({"id": image_id, "file_name": fname, "height": h, "width": w})

            def add(segm, cat, crowd=0):
                nonlocal ann_id
                ann_id += 1
                anns.append({"id": ann_id, "image_id": image_id, "category_id": cat,
                             "segmentation": segm, "iscrowd": crowd, "area": 1.0,
                             "bbox": [0, 0, 1, 1]})
            if fname == "d.png":
                continue  # an image without annotations
            add([_poly(rng, h, w)], c1)
            add([_poly(rng, h, w, 6)], c2)  # overlaps the first: drawn over it
            if fname == "a.png":
                add(_uncompressed_rle(_blob(rng, h, w)), c1, crowd=1)
                add([[0, 0, 4, 0, 4, 5, 0, 5], [w - 5, h - 4, w, h - 4, w, h]], c2)  # 2 parts
            if fname == "b.png":
                add(_compressed_rle(_blob(rng, h, w)), c2)
                add(_compressed_rle(_blob(rng, h, w)), c1, crowd=1)
            if fname == "c.jpg":
                add(_uncompressed_rle(_blob(rng, h, w)), c1)
        data = {"images": images, "annotations": anns,
                "categories": [{"id": i, "name": n, "supercategory": "x"} for i, n in cats]}
        paths[split] = os.path.join(root, rel_json)
        with open(paths[split], "w") as f:
            json.dump(data, f)
    return paths


def expected_maps(json_path):
    """{image id: (class map, instance map, file name, [(ann, visible mask)])} via pycocotools."""
    from pycocotools.coco import COCO
    coco = COCO(json_path)
    out = {}
    for image_id, entry in coco.imgs.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        label = np.zeros((entry["height"], entry["width"]), np.int32)
        inst = np.zeros_like(label)
        for ann in anns:
            if ann["iscrowd"]:
                label[coco.annToMask(ann) > 0] = 255
        things = [a for a in anns if not a["iscrowd"]]
        for k, ann in enumerate(things, start=1):
            m = coco.annToMask(ann) > 0
            label[m], inst[m] = ann["category_id"], k
        out[image_id] = (label, inst, entry["file_name"],
                         [(a, inst == k, coco.annToMask(a) > 0) for k, a in enumerate(things, 1)])
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    base = tmp_path_factory.mktemp("coco")
    paths = write_tree(str(base / "export"), np.random.default_rng(3))
    info = coco_instances_info(str(base / "export"))
    prepare(info, str(base / "tfds"))
    return info, str(base / "tfds"), paths


def test_info_from_the_json(tree):
    info, _, _ = tree
    assert info.num_classes == 8 and info.ignore_label == 255
    assert info.class_names[3] == "cat" and info.class_names[7] == "dog"
    assert info.class_names[0] == "background" and info.class_names[5] == "N/A"
    assert (info.train_split, info.eval_split) == ("train", "validation")


def test_eval_batches_equal_pycocotools_and_targets_recover_annotations(tree):
    info, data_dir, paths = tree
    assert num_examples(info, "train", data_dir) == 2
    expected = expected_maps(paths["validation"])
    source = _builder(info, data_dir).as_data_source("validation")
    seen, recovered, whole, crowd_pixels, empty_rows = set(), 0, 0, 0, 0
    for batch in eval_batches(info, split="validation", batch_size=3, pad_to=PAD,
                              data_dir=data_dir, with_instances=True):
        # Every row, the image without annotations (d.png) and padding rows included.
        targets = instance_targets(batch["label"], batch["instance"], max_instances=6,
                                   ignore_label=255)
        for row in np.flatnonzero(~batch["valid"]):  # padding rows: no target at all
            assert int(targets["num_instances"][row]) == 0
        for row in np.flatnonzero(batch["valid"]):
            record = source[int(batch["index"][row])]
            label, inst, fname, things = expected[int(record["image_id"])]
            assert record["file_name"].decode() == fname
            h, w = label.shape
            assert (batch["height"][row], batch["width"][row]) == (h, w)
            np.testing.assert_array_equal(batch["label"][row, :h, :w], label, err_msg=fname)
            np.testing.assert_array_equal(batch["instance"][row, :h, :w], inst, err_msg=fname)
            for pad in (np.s_[row, h:], np.s_[row, :, w:]):  # padding: ignore, no instance
                assert (batch["label"][pad] == 255).all() and (batch["instance"][pad] == 0).all()
            crowd_pixels += int((label == 255).sum())
            # Targets: one per non-crowd annotation with visible pixels, class and visible mask;
            # an annotation nothing overlaps keeps its whole pycocotools mask.
            visible = [(a, v, full) for a, v, full in things if v.any()]
            seen.add(fname)
            t = row
            assert int(targets["num_instances"][t]) == len(visible), fname
            n = len(visible)  # the slots past the instances are zero: class 0, no box, no mask
            assert (targets["classes"][t, n:] == 0).all() and not targets["masks"][t, n:].any()
            assert not targets["boxes"][t, n:].any()
            empty_rows += n == 0
            for k, (ann, vis, full) in enumerate(visible):
                assert targets["classes"][t, k] == ann["category_id"]
                got = targets["masks"][t, k] > 0.5
                np.testing.assert_array_equal(got[:h, :w], vis)
                assert not got[h:].any() and not got[:, w:].any()
                cols, rows_ = np.flatnonzero(vis.any(0)), np.flatnonzero(vis.any(1))
                np.testing.assert_array_equal(  # the mask's extent, pixel edges x1 y1 x2 y2
                    targets["boxes"][t, k], [cols[0], rows_[0], cols[-1] + 1, rows_[-1] + 1])
                others = [f for a, _, f in things if a is not ann]
                if not any((full & f).any() for f in others) and not (full & (label == 255)).any():
                    np.testing.assert_array_equal(got[:h, :w], full)
                    whole += 1
                recovered += 1
    assert seen == {"a.png", "b.png", "c.jpg", "d.png"}
    assert recovered >= 6 and whole >= 1 and crowd_pixels > 0, (recovered, whole)
    assert empty_rows >= 1  # d.png went through the COCO -> targets path with no instance


def test_images_stored_exactly(tree):
    info, data_dir, paths = tree
    source = _builder(info, data_dir).as_data_source("validation")
    root = os.path.dirname(os.path.dirname(paths["validation"]))
    for i in range(len(source)):
        ex = source[i]
        fname = ex["file_name"].decode()
        want = np.asarray(Image.open(os.path.join(root, "val", fname)).convert("RGB"))
        if fname.endswith(".png"):
            np.testing.assert_array_equal(ex["image"], want)
        else:  # the original JPEG bytes, decoded by TensorFlow instead of PIL
            assert ex["image"].shape == want.shape
            assert np.abs(ex["image"].astype(int) - want).max() <= 2


def test_coco2017_registry_entry(tmp_path):
    """The `coco2017` layout under the manual directory, original COCO ids, 91 classes named
    as torchvision's COCO_V1 weights."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
    info = get_dataset_info("coco2017")
    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert info.num_classes == 91 and len(names) == 91
    assert info.class_names[1:] == tuple(names[1:])
    manual = str(tmp_path / "manual")
    paths = write_tree(manual, np.random.default_rng(5), layout="coco2017",
                       cats=((1, "person"), (90, "toothbrush")))
    prepare("coco2017", str(tmp_path / "tfds"), manual_dir=manual)
    assert num_examples("coco2017", "validation", str(tmp_path / "tfds")) == 4
    expected = expected_maps(paths["train"])
    source = _builder(info, str(tmp_path / "tfds")).as_data_source("train")
    for i in range(len(source)):
        label, inst = expected[int(source[i]["image_id"])][:2]
        np.testing.assert_array_equal(source[i]["segmentation_mask"][..., 0], label)
        np.testing.assert_array_equal(source[i]["instance_mask"][..., 0], inst)


def test_generic_entry_reads_the_env_var(tree, monkeypatch):
    info, _, paths = tree
    monkeypatch.delenv("SEGJAX_COCO_ROOT", raising=False)
    with pytest.raises(ValueError, match="SEGJAX_COCO_ROOT"):
        get_dataset_info("coco_instances")
    monkeypatch.setenv("SEGJAX_COCO_ROOT", os.path.dirname(os.path.dirname(paths["train"])))
    env_info = get_dataset_info("coco_instances")
    assert env_info.tfds_name == info.tfds_name and env_info.class_names == info.class_names


# --- failures: each stops the build naming the file and the annotation id --------------------

def _edit(path, fn):
    with open(path) as f:
        data = json.load(f)
    fn(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _ann(data, fname):
    """The first non-crowd annotation of image `fname` and that image's entry."""
    entry = next(e for e in data["images"] if e["file_name"] == fname)
    return next(a for a in data["annotations"]
                if a["image_id"] == entry["id"] and not a["iscrowd"]), entry


def _missing_json(root, paths):
    os.remove(paths["validation"])
    return [paths["validation"]]


def _missing_image_id(root, paths):
    ids = []

    def fn(data):
        ann, _ = _ann(data, "b.png")
        ann["image_id"] = 999
        ids.append(f"annotation id {ann['id']}")
    _edit(paths["validation"], fn)
    return [paths["validation"], ids[0], "999"]


def _missing_image_file(root, paths):
    os.remove(os.path.join(root, "val", "b.png"))
    with open(paths["validation"]) as f:
        ann, _ = _ann(json.load(f), "b.png")
    return [os.path.join(root, "val", "b.png"), f"annotation id {ann['id']}"]


def _polygon_outside(root, paths):
    ids = []

    def fn(data):
        ann, entry = _ann(data, "a.png")
        ann["segmentation"][0][0] = entry["width"] + 2.5  # 2.5 px beyond the right edge
        ids.append(f"annotation id {ann['id']}")
    _edit(paths["validation"], fn)
    return [paths["validation"], ids[0], "outside"]


def _unknown_category(root, paths):
    ids = []

    def fn(data):
        ann, _ = _ann(data, "c.jpg")
        ann["category_id"] = 5
        ids.append(f"annotation id {ann['id']}")
    _edit(paths["validation"], fn)
    return [paths["validation"], ids[0], "unknown category id 5"]


def _rle_size_mismatch(root, paths):
    ids = []

    def fn(data):
        entry = next(e for e in data["images"] if e["file_name"] == "b.png")
        ann = next(a for a in data["annotations"] if a["image_id"] == entry["id"]
                   and isinstance(a["segmentation"], dict))
        ann["segmentation"]["size"] = [entry["height"] + 1, entry["width"]]
        ids.append(f"annotation id {ann['id']}")
    _edit(paths["validation"], fn)
    return [paths["validation"], ids[0], "RLE of size"]


def _image_size_mismatch(root, paths):
    _edit(paths["validation"], lambda d: d["images"][0].update(height=d["images"][0]["height"] + 3))
    return [os.path.join(root, "val", "a.png"), "image id 10"]


@pytest.mark.parametrize("damage, error", [
    (_missing_json, FileNotFoundError), (_missing_image_id, ValueError),
    (_missing_image_file, FileNotFoundError), (_polygon_outside, ValueError),
    (_unknown_category, ValueError), (_rle_size_mismatch, ValueError),
    (_image_size_mismatch, ValueError)])
def test_bad_input_stops_the_build_naming_file_and_annotation(tmp_path, damage, error):
    root = str(tmp_path / "export")
    paths = write_tree(root, np.random.default_rng(3))
    info = coco_instances_info(root)  # categories are read from the (intact) train JSON
    wanted = damage(root, paths)
    with pytest.raises(error) as e:
        prepare(info, str(tmp_path / "tfds"))
    for text in wanted:
        assert text in str(e.value), (text, str(e.value))


def test_polygon_within_tolerance_builds(tmp_path):
    """A point 0.8 px outside (annotation tools round outwards) is accepted and clipped by
    pycocotools' rasteriser, like every COCO loader."""
    root = str(tmp_path / "export")
    paths = write_tree(root, np.random.default_rng(3))

    def fn(data):
        ann, entry = _ann(data, "a.png")
        ann["segmentation"][0][0] = entry["width"] + 0.8
    _edit(paths["validation"], fn)
    info = coco_instances_info(root)
    prepare(info, str(tmp_path / "tfds"))
    assert num_examples(info, "validation", str(tmp_path / "tfds")) == 4


# --- issue 29: ids, non-finite numbers and RLE counts are checked before pycocotools ----------

def _tiny_tree(root, images, anns, cats=((1, "a"),)):
    """Writes ROOT/{train,val}/ with an 8x8 black PNG per entry's file_name, the validation
    JSON with `images` and `anns` and a train JSON of the first image alone; returns the
    validation JSON's path."""
    for split in ("train", "val"):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for entry in images:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
                os.path.join(root, split, entry["file_name"]))
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, content in (("train", ([images[0]], [])), ("val", (images, anns))):
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump({"images": content[0], "annotations": content[1],
                       "categories": [{"id": i, "name": n} for i, n in cats]}, f)
    return os.path.join(root, "annotations", "instances_val.json")


def _square(aid, image_id, cat=1):
    return {"id": aid, "image_id": image_id, "category_id": cat, "iscrowd": 0,
            "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]], "area": 16.0, "bbox": [0, 0, 4, 4]}


def _image(image_id, name):
    return {"id": image_id, "file_name": name, "height": 8, "width": 8}


@pytest.mark.parametrize("images, anns, text", [
    # The finding: y.png's entry overwrote x.png's, the build exited 0 with one image and x.png's
    # square painted onto y.png.
    ([_image(1, "x.png"), _image(1, "y.png")], [_square(5, 1)], "duplicate image id 1"),
    ([_image(1, "x.png"), _image(2, "y.png")], [_square(5, 1), _square(5, 2)],
     "duplicate annotation id 5"),
    ([_image(1, "x.png")], [_square(5, 3)], "annotation id 5 points at image id 3"),
    ([_image(1, "x.png")], [_square(5, 1, cat=2)], "annotation id 5 (image id 1) has unknown "
                                                     "category id 2"),
])
def test_duplicate_or_unknown_ids_stop_the_build(tmp_path, images, anns, text):
    js = _tiny_tree(str(tmp_path / "export"), images, anns)
    with pytest.raises(ValueError) as e:
        prepare(coco_instances_info(str(tmp_path / "export")), str(tmp_path / "tfds"))
    assert js in str(e.value) and text in str(e.value), str(e.value)


@pytest.fixture
def no_pycocotools(monkeypatch):
    """pycocotools' rasteriser and decoder replaced by a tripwire: a malformed segmentation that
    reached them would allocate without bound (NaN polygons) or write past the mask (RLE)."""
    from pycocotools import mask as mask_utils

    def tripwire(*args, **kwargs):
        raise AssertionError("the segmentation reached pycocotools unchecked")
    for name in ("frPyObjects", "merge", "decode"):
        monkeypatch.setattr(mask_utils, name, tripwire)


BAD_SEGMENTATIONS = [
    ([[0, 0, 4, 0, float("nan"), 4]], "non-finite"),  # the finding: NaN passed every comparison
    ([[0, 0, float("inf"), 0, 4, 4]], "non-finite"),
    ([[0, 0, 4, 0, 4, -float("inf")]], "non-finite"),
    ([[0, 0, 4, 0, "4", 4]], "not a flat list of numbers"),
    ({"size": [8, 8], "counts": [10, -2, 56]}, "integers >= 0"),
    ({"size": [8, 8], "counts": [10, 2.5, 51.5]}, "integers >= 0"),
    ({"size": [8, 8], "counts": [10, 4, 60]}, "sum to 74"),  # past the end of the mask
    ({"size": [8, 8], "counts": [10, 4, 40]}, "sum to 54"),
    ({"size": [8, 8], "counts": "0\x7f"}, "outside '0'..'o'"),
    ({"size": [8, 8], "counts": "Z"}, "ends inside a run length"),  # continuation bit, no more
    ({"size": [8, 8], "counts": "222L"}, "negative run lengths"),  # runs 2, 2, 2, 2 - 4
    ({"size": [8, 8], "counts": "V2"}, "sum to more than"),  # one run of 70 pixels
    ({"size": [8, float("nan")], "counts": [64]}, "not [height, width]"),
]


@pytest.mark.parametrize("segm, text", BAD_SEGMENTATIONS)
def test_malformed_segmentation_is_refused_before_pycocotools(no_pycocotools, segm, text):
    from segjax.data.builders.coco_instances import decode_segmentation
    ann = {"id": 7, "image_id": 1, "category_id": 1, "segmentation": segm}
    with pytest.raises(ValueError) as e:
        decode_segmentation(ann, (8, 8), tolerance=1.0, where="x.json")
    assert "x.json: annotation id 7" in str(e.value) and text in str(e.value), str(e.value)


@pytest.mark.parametrize("field, value, text", [
    ("segmentation", [[0, 0, 4, 0, float("nan"), 4]], "non-finite"),
    ("bbox", [0, 0, float("nan"), 4], "bbox"), ("bbox", [0, 0, -1, 4], "bbox"),
    ("bbox", [0, 0, 4], "bbox"), ("area", float("inf"), "area"), ("area", -3.0, "area"),
    ("iscrowd", "0", "iscrowd"), ("id", 5.5, "annotations[0] has id 5.5"),
])
def test_non_finite_or_negative_numbers_stop_the_build(tmp_path, no_pycocotools, field, value,
                                                       text):
    """Python's json writes and reads NaN and Infinity, so a COCO file can hold them."""
    ann = _square(5, 1)
    ann[field] = value
    js = _tiny_tree(str(tmp_path / "export"), [_image(1, "x.png")], [ann])
    with pytest.raises(ValueError) as e:
        prepare(coco_instances_info(str(tmp_path / "export")), str(tmp_path / "tfds"))
    assert js in str(e.value) and text in str(e.value), str(e.value)
    if field != "id":
        assert "annotation id 5" in str(e.value)
