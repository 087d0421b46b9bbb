"""Property-based tests of the data readers (issue 29): generated COCO files and VOC + SBD trees,
valid or with one fault drawn from a list of real-world mistakes.

Property: reading a split either yields EXACTLY the valid content -- one example per image, in
order, whose class and instance maps equal pycocotools' masks painted by the documented rule
(COCO) or the masks the generator wrote (VOC) -- or stops with ValueError/FileNotFoundError whose
message names the offending file and id. The builders' example code runs in-process
(`coco_instances.index_split` + `read_example`, `voc2012_segmentation.split_examples` +
`read_example`, what `_generate_examples` calls) on 8..16 px images: no TFDS build per example.
"""
import contextlib
import io
import json
import math
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from segjax.data.builders import coco_instances, voc2012_segmentation
from tests.data import fake_voc
from tests.data.test_coco_instances import expected_maps

# Valid worlds get the profile's examples; each fault is its own test case with a third of them,
# at least 5 (ci: 8 per fault; hunt: 333).
PER_FAULT = settings(max_examples=max(5, settings().max_examples // 3))

COCO_FAULTS = ["nan", "inf", "outside", "few_points", "string_coord",
               "dup_image", "dup_ann", "unknown_image", "unknown_category", "rle_size", "rle_sum",
               "rle_negative", "rle_garbage", "bbox", "area", "declared_size", "declared_nan",
               "truncated", "missing_file", "iscrowd"]


def _rle_counts(mask):
    """COCO's uncompressed RLE of a bool mask (column-major runs, starting with zeros)."""
    flat = mask.T.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, edges, flat.size]).tolist()
    return ([0] + runs) if flat[0] else runs


@st.composite
def coco_worlds(draw):
    """(images, annotations, categories, fault target, non-finite value) of a tiny COCO
    split: 1..3 images of 8..16 px, 0..3 annotations each (polygons, uncompressed or
    compressed RLE, crowd or not), so empty and crowd-only images occur."""
    cats = draw(st.lists(st.integers(1, 254), min_size=1, max_size=3, unique=True))
    n = draw(st.integers(1, 3))
    image_ids = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    images, anns, next_id = [], [], draw(st.integers(1, 10**6))
    for k, image_id in enumerate(image_ids):
        h, w = draw(st.integers(8, 16)), draw(st.integers(8, 16))
        fmt = draw(st.sampled_from(["png", "jpg"]))
        images.append({"id": image_id, "file_name": f"im{k}.{fmt}", "height": h, "width": w})
        for _ in range(draw(st.integers(0, 3))):  # empty and crowd-only images included
            kind = draw(st.sampled_from(["polygon", "rle", "rle_compressed"]))
            if kind == "polygon":
                segm = [draw(st.lists(st.tuples(st.floats(0, w), st.floats(0, h)), min_size=3,
                                      max_size=6).map(lambda pts: [c for p in pts for c in p]))
                        for _ in range(draw(st.integers(1, 2)))]
            else:
                mask = rng.uniform(size=(h, w)) < rng.uniform(0.1, 0.9)
                segm = {"size": [h, w], "counts": _rle_counts(mask)}
                if kind == "rle_compressed":
                    from pycocotools import mask as mask_utils
                    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                    segm = {"size": [h, w], "counts": rle["counts"].decode()}
            anns.append({"id": next_id, "image_id": image_id, "iscrowd": int(draw(st.booleans())
                                                                             and kind != "polygon"),
                         "category_id": draw(st.sampled_from(cats)), "segmentation": segm,
                         "area": 1.0, "bbox": [0.0, 0.0, 1.0, 1.0]})
            next_id += 1
    target = draw(st.integers(0, 10**6))  # which image / annotation the fault hits (modulo)
    value = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return images, anns, cats, target, value


def _apply_coco_fault(images, anns, cats, fault, target, value, image_dir, js):
    """Damages the world in place; returns the strings the error must contain, or None."""
    img = images[target % len(images)]
    h, w = img["height"], img["width"]

    def new_ann(segm):  # a fresh annotation on `img` carrying the fault
        ann = {"id": max([a["id"] for a in anns], default=0) + 1, "image_id": img["id"],
               "category_id": cats[0], "iscrowd": 0, "segmentation": segm}
        anns.append(ann)
        return ann

    square = [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]]
    full = {"size": [h, w], "counts": [h * w]}
    if fault == "none":
        return None
    if fault in ("nan", "inf", "outside", "few_points", "string_coord"):
        bad = {"nan": value, "inf": value, "outside": w + 1.5 + target % 7,
               "few_points": None, "string_coord": "3"}[fault]
        poly = list(square[0])
        if bad is None:
            poly = poly[:4]
        else:
            poly[(target % 4) * 2] = bad
        return [js, f"annotation id {new_ann([poly])['id']}"]
    if fault == "rle_size":
        return [js, f"annotation id {new_ann({'size': [h + 1, w], 'counts': [(h + 1) * w]})['id']}"]
    if fault == "rle_sum":
        return [js, f"annotation id {new_ann({'size': [h, w], 'counts': [h * w + 1]})['id']}"]
    if fault == "rle_negative":
        ann = new_ann({"size": [h, w], "counts": [3, -1, h * w - 2]})
        return [js, f"annotation id {ann['id']}"]
    if fault == "rle_garbage":
        return [js, f"annotation id {new_ann({'size': [h, w], 'counts': 'zz'})['id']}"]
    if fault in ("bbox", "area", "iscrowd"):
        ann = new_ann(square)
        if fault == "bbox":
            ann["bbox"] = [0, 0, value, 1] if target % 2 else [0, 0, -2, 1]
        elif fault == "area":
            ann["area"] = value if target % 2 else -1.0
        else:
            ann["iscrowd"] = "1"  # a string: truthy, was painted as crowd
        return [js, f"annotation id {ann['id']}"]
    if fault == "dup_ann":
        ann = new_ann(full)
        other = anns[target % len(anns)]
        ann["id"] = other["id"]
        return [js, f"duplicate annotation id {ann['id']}"] if ann is not other else None
    if fault == "unknown_image":
        ann = new_ann(full)
        ann["image_id"] = max(i["id"] for i in images) + 1
        return [js, f"annotation id {ann['id']}"]
    if fault == "unknown_category":
        ann = new_ann(full)
        ann["category_id"] = next(c for c in range(1, 256) if c not in cats)
        return [js, f"annotation id {ann['id']}"]
    if fault == "dup_image":
        if len(images) < 2:
            return None
        other = images[(target + 1) % len(images)]
        other["id"] = img["id"]
        return [js, f"duplicate image id {img['id']}"]
    if fault == "declared_size":
        img["height"] = h + 1 + target % 3
        return [os.path.join(image_dir, img["file_name"]), f"image id {img['id']}"]
    if fault == "declared_nan":
        img["width"] = value
        return [js, f"image id {img['id']}"]
    path = os.path.join(image_dir, img["file_name"])
    if fault == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        return [path]
    if fault == "missing_file":
        os.remove(path)
        return [path]
    raise AssertionError(fault)


def _write_images(images, image_dir, seed):
    rng = np.random.default_rng(seed)
    for img in images:
        pixels = rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(image_dir, img["file_name"]))


@given(world=coco_worlds())
def test_coco_valid_split_is_read_exactly(world):
    _check_coco("none", world)


@pytest.mark.parametrize("fault", COCO_FAULTS)
@PER_FAULT
@given(world=coco_worlds())
def test_coco_split_with_a_fault_fails_by_name(fault, world):
    _check_coco(fault, world)


def _check_coco(fault, world):
    images, anns, cats, target, value = world
    config = coco_instances.CocoInstancesConfig(name="t")
    with tempfile.TemporaryDirectory() as root:
        image_dir, js = os.path.join(root, "val"), os.path.join(root, "val.json")
        os.makedirs(image_dir)
        _write_images(images, image_dir, target)
        wanted = _apply_coco_fault(images, anns, cats, fault, target, value, image_dir, js)
        with open(js, "w") as f:  # Python's json writes NaN / Infinity, as some exporters do
            json.dump({"images": images, "annotations": anns,
                       "categories": [{"id": c, "name": f"c{c}"} for c in cats]}, f)

        def read():
            return [coco_instances.read_example(*e, tolerance=1.0, where=js)
                    for e in coco_instances.index_split(js, image_dir, config)]
        if wanted is not None:
            with pytest.raises((ValueError, FileNotFoundError)) as e:
                read()
            for text in wanted:
                assert text in str(e.value), (fault, text, str(e.value))
            return
        examples = read()
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
            expected = expected_maps(js)
    assert [k for k, _ in examples] == [img["id"] for img in images]
    for (key, ex), img in zip(examples, images):
        label, inst, fname, _ = expected[key]
        assert ex["image_id"] == key and ex["file_name"] == img["file_name"] == fname
        assert label.shape == (img["height"], img["width"])
        np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], label)
        np.testing.assert_array_equal(ex["instance_mask"][..., 0], inst)
        things = [a for a in anns if a["image_id"] == key and not a["iscrowd"]]
        assert inst.max(initial=0) <= len(things)


# --- VOC + SBD ----------------------------------------------------------------------------------

VOC_FAULTS = ["mask_size", "mask_value", "truncated_jpeg",
              "truncated_png", "grey_jpeg", "rgb_mask", "duplicate_id", "missing_image",
              "missing_mask", "empty_list", "sbd_mask_size", "sbd_mask_value",
              "truncated_sbd_jpeg"]


@st.composite
def voc_worlds(draw):
    """(VOC train ids, VOC val ids, SBD train ids, SBD val ids, sizes, seed, fault target)."""
    pool = [f"20{y:02d}_{k:06d}" for y in (8, 9, 10) for k in range(1, 5)]
    ids = draw(st.lists(st.sampled_from(pool), min_size=3, max_size=8, unique=True))
    n_train = draw(st.integers(1, len(ids) - 2))
    n_val = draw(st.integers(1, len(ids) - n_train - 1))
    train, val, rest = ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:]
    sbd = rest + draw(st.lists(st.sampled_from(train + val), min_size=1, max_size=2,
                                unique=True))
    cut = draw(st.integers(1, len(sbd) - 1))  # both SBD lists hold ids (the "empty_list" fault)
    sizes = {i: (draw(st.integers(8, 16)), draw(st.integers(8, 16))) for i in ids}
    return (train, val, sbd[:cut], sbd[cut:], sizes, draw(st.integers(0, 2**32 - 1)),
            draw(st.integers(0, 10**6)))


def _write_voc(root, train, val, sbd_train, sbd_val, sizes, rng):
    voc_dir = os.path.join(root, "VOCdevkit", "VOC2012")
    sbd_dir = os.path.join(root, "benchmark_RELEASE", "dataset")
    written = {"voc": {}, "sbd": {}}
    for i in train + val:
        fake_voc.write_jpeg(os.path.join(voc_dir, "JPEGImages", f"{i}.jpg"), rng, sizes[i])
        mask = rng.integers(0, 21, sizes[i]).astype(np.uint8)
        mask[rng.uniform(size=sizes[i]) < 0.1] = 255
        fake_voc.write_palette_png(os.path.join(voc_dir, "SegmentationClass", f"{i}.png"), mask)
        written["voc"][i] = mask
    for i in sbd_train + sbd_val:
        fake_voc.write_jpeg(os.path.join(sbd_dir, "img", f"{i}.jpg"), rng, sizes[i])
        mask = rng.integers(0, 21, sizes[i]).astype(np.uint8)
        fake_voc.write_sbd_mat(os.path.join(sbd_dir, "cls", f"{i}.mat"), mask)
        written["sbd"][i] = mask
    lists = {os.path.join(voc_dir, "ImageSets", "Segmentation", "train.txt"): train,
             os.path.join(voc_dir, "ImageSets", "Segmentation", "val.txt"): val,
             os.path.join(sbd_dir, "train.txt"): sbd_train,
             os.path.join(sbd_dir, "val.txt"): sbd_val}
    for path, ids in lists.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    return voc_dir, sbd_dir, written, lists


def _apply_voc_fault(fault, target, voc_dir, sbd_dir, written, lists, train, val, sbd_only, rng):
    """Damages the tree; returns the strings the error must contain, or None."""
    voc_ids = train + val
    i = voc_ids[target % len(voc_ids)]
    image = os.path.join(voc_dir, "JPEGImages", f"{i}.jpg")
    mask_path = os.path.join(voc_dir, "SegmentationClass", f"{i}.png")
    mask = written["voc"][i]
    if fault == "none":
        return None
    if fault == "mask_size":
        fake_voc.write_palette_png(mask_path, mask[: -1 - target % 3])
        return [mask_path]
    if fault == "mask_value":
        bad = mask.copy()
        bad.flat[target % bad.size] = 21 + target % 234  # 21..254: neither a class nor ignore
        fake_voc.write_palette_png(mask_path, bad)
        return [mask_path, f"[{21 + target % 234}]"]
    if fault in ("truncated_jpeg", "truncated_png"):
        path = image if fault == "truncated_jpeg" else mask_path
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) * (1 + target % 3) // 4)
        return [path]
    if fault == "grey_jpeg":
        Image.fromarray(mask).save(image)
        return [image, "expected RGB"]
    if fault == "rgb_mask":
        Image.fromarray(np.repeat(mask[..., None], 3, -1)).save(mask_path)
        return [mask_path, "palette"]
    if fault == "duplicate_id":
        path = list(lists)[target % 4]
        if not lists[path]:
            return None
        dup = lists[path][target % len(lists[path])]
        with open(path, "a") as f:
            f.write(f"{dup}\n")
        return [path, f"'{dup}' twice"]
    if fault in ("missing_image", "missing_mask"):
        path = image if fault == "missing_image" else mask_path
        os.remove(path)
        return [path]
    if fault == "empty_list":
        path = list(lists)[target % 4]
        open(path, "w").close()
        return [path, "empty"]
    # SBD faults hit only an id that train_aug reads from SBD; none: nothing to damage.
    if not sbd_only:
        return None
    j = sbd_only[target % len(sbd_only)]
    mat = os.path.join(sbd_dir, "cls", f"{j}.mat")
    if fault == "sbd_mask_size":
        fake_voc.write_sbd_mat(mat, written["sbd"][j][:, 1:])
        return [mat, "size"]
    if fault == "sbd_mask_value":
        bad = written["sbd"][j].copy()
        bad.flat[target % bad.size] = 255  # SBD maps have no ignore value
        fake_voc.write_sbd_mat(mat, bad)
        return [mat, "[255]"]
    if fault == "truncated_sbd_jpeg":
        path = os.path.join(sbd_dir, "img", f"{j}.jpg")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        return [path]
    raise AssertionError(fault)


@given(world=voc_worlds())
def test_voc_valid_splits_are_read_exactly(world):
    _check_voc("none", world)


@pytest.mark.parametrize("fault", VOC_FAULTS)
@PER_FAULT
@given(world=voc_worlds())
def test_voc_splits_with_a_fault_fail_by_name(fault, world):
    _check_voc(fault, world)


def _check_voc(fault, world):
    train, val, sbd_train, sbd_val, sizes, seed, target = world
    rng = np.random.default_rng(seed)
    # train_aug's definition, independently: VOC train + (SBD train | SBD val) - VOC train - val.
    sbd_only = sorted(set(sbd_train + sbd_val) - set(train) - set(val))
    want = {"train": {i: ("voc", i) for i in train}, "val": {i: ("voc", i) for i in val},
            "train_aug": {**{i: ("voc", i) for i in train}, **{i: ("sbd", i) for i in sbd_only}}}
    with tempfile.TemporaryDirectory() as root:
        voc_dir, sbd_dir, written, lists = _write_voc(root, train, val, sbd_train, sbd_val,
                                                      sizes, rng)
        wanted = _apply_voc_fault(fault, target, voc_dir, sbd_dir, written, lists, train, val,
                                  sbd_only, rng)

        def read():
            return {split: [voc2012_segmentation.read_example(*e) for e in examples]
                    for split, examples in voc2012_segmentation.split_examples(
                        voc_dir, sbd_dir).items()}
        if wanted is not None:
            with pytest.raises((ValueError, FileNotFoundError)) as e:
                read()
            for text in wanted:
                assert text in str(e.value), (fault, text, str(e.value))
            return
        got = read()
    assert set(got) == set(want)
    for split, examples in got.items():
        keys = [k for k, _ in examples]
        assert len(keys) == len(set(keys)) and set(keys) == set(want[split]), split
        for key, ex in examples:
            source, i = want[split][key]
            np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], written[source][i])
            assert ex["image_id"] == key and os.path.basename(ex["image"]) == f"{key}.jpg"
            assert ("SegmentationClass" not in ex["image"]) and (
                ("benchmark_RELEASE" in ex["image"]) == (source == "sbd"))
