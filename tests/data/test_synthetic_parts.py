"""synthetic_parts: every point's label is the primitive it lies on (membership recomputed here from each
primitive's implicit surface equation), the stored points are the object's scaled, rotated, jittered and
normalised surface points, sampling is uniform by area (closed-form fractions), examples are pure
functions of (seed, split, index), and the TFDS build stores what `generate` returns."""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from segjax.data import get_dataset_info
from segjax.data.builders import synthetic_parts as sp

CONFIG = dataclasses.replace(sp.BUILDER_CONFIGS[1], num_points=400)  # `tiny` with more points


def _surface_residual(kind, p, x):
    """|f(x)| for the primitive's implicit surface f = 0 (written from the geometry, not the sampler)."""
    d = x - p["centre"]
    if kind == "box":
        return np.abs(np.max(np.abs(d) - p["half"], axis=1))
    if kind == "cylinder":  # axis y: the side, and each cap it has (a leg has none where it meets the top)
        rho, hh = np.hypot(d[:, 0], d[:, 2]), p["half_height"]
        pieces = [np.abs(rho - p["radius"]) + np.maximum(np.abs(d[:, 1]) - hh, 0)]
        pieces += [np.abs(d[:, 1] - sign * hh) + np.maximum(rho - p["radius"], 0)
                   for sign, present in ((1, p["top"]), (-1, p["bottom"])) if present]
        return np.min(pieces, axis=0)
    if kind == "cone":  # apex at centre + height * y, base circle of `radius` at the centre's height
        frac = 1 - d[:, 1] / p["height"]  # 0 at the apex, 1 at the base
        off_range = np.maximum(np.maximum(-frac, frac - 1), 0)
        return np.abs(np.hypot(d[:, 0], d[:, 2]) - p["radius"] * frac) + off_range
    if kind == "torus":  # in the x-y plane
        return np.abs(np.hypot(np.hypot(d[:, 0], d[:, 1]) - p["major"], d[:, 2]) - p["minor"])
    if kind == "ellipsoid":
        return np.abs(np.linalg.norm(d / p["semi_axes"], axis=1) - 1)
    raise AssertionError(kind)


@pytest.mark.parametrize("index", range(8))  # two objects of each category
def test_labels_are_the_primitive_each_point_lies_on(index):
    ex = sp.generate(CONFIG, "train", index)
    category = sp.CATEGORIES[index % 4]
    assert int(ex["category"]) == index % 4
    residual = np.stack([_surface_residual(kind, p, ex["object_points"]) for kind, p, _ in ex["primitives"]], 1)
    nearest = residual.argmin(1)
    assert np.all(residual.min(1) < 1e-9)
    part_of = np.array([part for _, _, part in ex["primitives"]])
    np.testing.assert_array_equal(ex["part"], part_of[nearest])
    # Every part of the category is present, and only its parts, in its global id range.
    names = sorted(sp.PART_NAMES[k] for k in np.unique(ex["part"]))
    assert names == sorted(f"{category}/{name}" for name in sp.CATEGORY_PARTS[category])
    assert np.all(sp.PART_CATEGORY[ex["part"]] == index % 4)


def test_points_are_the_transformed_object_normalised_to_the_unit_sphere():
    ex = sp.generate(CONFIG, "validation", 3)
    c, s = np.cos(ex["angle"]), np.sin(ex["angle"])
    x, y, z = (ex["object_points"] * ex["scale"]).T
    moved = np.stack([c * x + s * z, y, -s * x + c * z], 1) + ex["jitter"]  # rotation about the up axis y
    centred = moved - moved.mean(0)
    want = centred / np.linalg.norm(centred, axis=1).max()
    np.testing.assert_allclose(ex["points"], want, atol=1e-6)
    assert ex["points"].dtype == np.float32 and ex["points"].shape == (400, 3)
    np.testing.assert_allclose(ex["points"].mean(0), 0, atol=1e-6)
    assert abs(np.linalg.norm(ex["points"], axis=1).max() - 1) < 1e-6
    assert np.all(np.abs(ex["jitter"]) <= 2 * sp.JITTER) and 0.8 <= ex["scale"].min() <= ex["scale"].max() <= 1.2


def test_sampling_is_uniform_by_area():
    rng, n = np.random.default_rng(0), 40000
    half = np.array([0.5, 0.2, 0.1])
    box = sp.sample(rng, "box", {"centre": np.zeros(3), "half": half}, n)
    faces = np.array([half[1] * half[2], half[0] * half[2], half[0] * half[1]])
    on_face = np.isclose(np.abs(box), half).argmax(1)  # which pair of faces a point is on
    np.testing.assert_allclose(np.bincount(on_face, minlength=3) / n, faces / faces.sum(), atol=0.01)
    big, small = 0.3, 0.1  # torus: the outer half of the tube (cos v > 0) holds (pi R + 2 r) / (2 pi R)
    torus = sp.sample(rng, "torus", {"centre": np.zeros(3), "major": big, "minor": small,
                                     "u_range": (-np.pi, np.pi)}, n)
    outer = np.mean(np.hypot(torus[:, 0], torus[:, 1]) > big)
    assert abs(outer - (np.pi * big + 2 * small) / (2 * np.pi * big)) < 0.01
    # Sphere (an ellipsoid with equal axes): Archimedes, a band's area is proportional to its height.
    sphere = sp.sample(rng, "ellipsoid", {"centre": np.zeros(3), "semi_axes": np.ones(3)}, n)
    assert abs(np.mean(sphere[:, 1] > 0.5) - 0.25) < 0.01
    # Spheroid: area of the part with |x| < a / 2 against numerical integration of the area element.
    axes = np.array([2.0, 1.0, 1.0])
    spheroid = sp.sample(rng, "ellipsoid", {"centre": np.zeros(3), "semi_axes": axes}, n)
    t = np.linspace(-1, 1, 200001)  # x = 2 t; ring radius sqrt(1 - t^2); dA = 2 pi r sqrt(dx^2 + dr^2)
    r = np.sqrt(np.clip(1 - t**2, 1e-12, None))
    element = 2 * np.pi * r * np.sqrt(4 + (t / r) ** 2)
    mid = np.abs(t) < 0.5
    assert abs(np.mean(np.abs(spheroid[:, 0]) < 1.0) - element[mid].sum() / element.sum()) < 0.01
    assert abs(sp.area("ellipsoid", {"semi_axes": axes}) - np.trapezoid(element, t)) < 0.01 * np.trapezoid(element, t)


def test_examples_are_pure_functions_of_seed_split_and_index():
    a, b = sp.generate(CONFIG, "train", 5), sp.generate(CONFIG, "train", 5)
    np.testing.assert_array_equal(a["points"], b["points"])
    np.testing.assert_array_equal(a["part"], b["part"])
    other_split = sp.generate(CONFIG, "validation", 5)
    other_seed = sp.generate(dataclasses.replace(CONFIG, seed=1), "train", 5)
    for other in (other_split, other_seed):
        assert other["category"] == a["category"] and not np.allclose(other["points"], a["points"])


def test_build_stores_generate_and_registry_entry(tmp_path):
    info = get_dataset_info("synthetic_parts/tiny")
    assert info.num_classes == 10 and info.class_names[9] == "table/leg" and sp.part_id("table", "leg") == 9
    builder = tfds.builder(info.tfds_name, data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert {info.image_key, info.label_key, info.id_key, "category"} <= set(builder.info.features)
    assert builder.info.splits["train"].num_examples == 8 and builder.info.splits["validation"].num_examples == 4
    stored = {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split="validation"))}
    config = sp.BUILDER_CONFIGS[1]
    for index in range(4):
        want, got = sp.generate(config, "validation", index), stored[f"validation_{index:06d}"]
        np.testing.assert_array_equal(got["points"], want["points"])
        np.testing.assert_array_equal(got["part"], want["part"])
        assert got["category"] == want["category"] and got["points"].shape == (64, 3)
