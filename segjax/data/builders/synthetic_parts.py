"""`synthetic_parts`: part-labelled point clouds generated from a seed, no download (ShapeNet-part's format).

Each example is one object assembled from geometric primitives, each primitive one part:

  airplane  body (an ellipsoid fuselage), wing (a thin box across it), tail (a vertical fin and a
            horizontal stabiliser, two thin boxes at the rear)
  lamp      base (a flat cylinder), pole (a thin cylinder standing on it), shade (an open cone over the
            pole's top)
  mug       body (a cylinder open at the top), handle (the outer half of a torus on its side)
  table     top (a box), leg (four cylinders under it)

A cylinder standing on another primitive has no cap where it stands, so no point lies on two parts.

Categories are in alphabetical order, as ShapeNet-part's `synsetoffset2category.txt`, and part ids are
global with a contiguous range per category, as ShapeNet-part numbers them (airplane 0-2, lamp 3-5,
mug 6-7, table 8-9: `CATEGORY_PARTS`). P points are sampled on the primitives' surfaces, uniformly by
area (the count per primitive is multinomial in the areas, then uniform on each surface; an ellipsoid
and a torus by rejection on their area element). Points of a primitive inside another (the wing's
middle in the fuselage, the pole's top in the shade) are kept with their own label. The object, built
with the y axis up like ShapeNet's, is then scaled per axis by U(0.8, 1.2), rotated about the up axis
by U(0, 2 pi), jittered by N(0, JITTER^2) clipped at 2 JITTER per coordinate, and normalised as
ShapeNet-part's loaders do (centroid subtracted, divided by the largest norm: inside the unit sphere).

Features: `points` float32 `[P, 3]`, `part` int32 `[P]` (global part id), `category` int32, `id`.
Example `i` of a split is a pure function of `(config.seed, split, i)`
(`synthetic_shapes.example_rng`) and of category `i mod 4`, so the splits are balanced.

Configs: `default` (1024 points, 512 train / 128 validation objects) and `tiny` (64 points, 8 / 4).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders._common import GeneratedSplits, LocalCodePath, example_id
from segjax.data.builders.synthetic_shapes import example_rng

VERSION = "1.0.0"  # bump whenever generated values change: prepared data of old versions is stale
CATEGORIES = ("airplane", "lamp", "mug", "table")
CATEGORY_NAMES = CATEGORIES  # the name every point-cloud builder exports (segjax.tasks.pointcloud)
CATEGORY_PARTS = {"airplane": ("body", "wing", "tail"), "lamp": ("base", "pole", "shade"),
                  "mug": ("body", "handle"), "table": ("top", "leg")}
PART_NAMES = tuple(f"{c}/{p}" for c in CATEGORIES for p in CATEGORY_PARTS[c])  # global ids 0..9
PART_CATEGORY = np.array([CATEGORIES.index(n.split("/")[0]) for n in PART_NAMES], np.int32)  # [K]
JITTER = 0.005  # per-coordinate jitter sigma, in object units before normalisation (clipped at 2 sigma)


def part_id(category: str, part: str) -> int:
    """Global id of `part` of `category` (e.g. `part_id("table", "leg") == 9`)."""
    return PART_NAMES.index(f"{category}/{part}")


@dataclasses.dataclass(eq=False)
class SyntheticPartsConfig(tfds.core.BuilderConfig):
    """`num_points` per object; `num_train` / `num_validation` objects; `seed`."""

    version: str = VERSION
    num_points: int = 1024
    num_train: int = 512
    num_validation: int = 128
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.num_points, int) and self.num_points >= 16):
            raise ValueError(f"num_points must be an int >= 16, got {self.num_points!r}")


BUILDER_CONFIGS = [
    SyntheticPartsConfig(name="default", description="1024 points; 512 train / 128 validation objects."),
    SyntheticPartsConfig(name="tiny", description="64 points; 8 train / 4 validation objects: for tests.",
                         num_points=64, num_train=8, num_validation=4),
]


# Primitives: (kind, parameters, part id). Up is y (axis 1). All lengths in object units.
def _box(centre, half, part):
    return ("box", {"centre": np.asarray(centre, float), "half": np.asarray(half, float)}, part)


def _cylinder(centre, radius, half_height, part, top=True, bottom=True):
    return ("cylinder", {"centre": np.asarray(centre, float), "radius": radius, "half_height": half_height,
                         "top": top, "bottom": bottom}, part)


def area(kind: str, p: dict) -> float:
    """Surface area of a primitive (the ellipsoid's by Thomsen's formula, within about 1%)."""
    if kind == "box":
        a, b, c = 2 * p["half"]
        return 2 * (a * b + b * c + a * c)
    if kind == "cylinder":
        r = p["radius"]
        return 2 * np.pi * r * 2 * p["half_height"] + np.pi * r * r * (p["top"] + p["bottom"])
    if kind == "cone":
        return np.pi * p["radius"] * np.hypot(p["radius"], p["height"])
    if kind == "torus":
        return (p["u_range"][1] - p["u_range"][0]) * p["minor"] * 2 * np.pi * p["major"]
    if kind == "ellipsoid":
        a, b, c, q = *p["semi_axes"], 1.6075
        return 4 * np.pi * ((a**q * b**q + a**q * c**q + b**q * c**q) / 3) ** (1 / q)
    raise ValueError(f"unknown primitive {kind!r}")


def _disc(rng, n, radius):
    rho, theta = radius * np.sqrt(rng.uniform(size=n)), rng.uniform(0, 2 * np.pi, n)
    return rho * np.cos(theta), rho * np.sin(theta)


def sample(rng: np.random.Generator, kind: str, p: dict, n: int) -> np.ndarray:
    """`n` points `[n, 3]` uniform (by area) on the primitive's surface."""
    if kind == "box":
        half = p["half"]
        faces = np.array([half[1] * half[2], half[0] * half[2], half[0] * half[1]])
        axis = rng.choice(3, size=n, p=faces / faces.sum())
        q = rng.uniform(-1, 1, (n, 3)) * half
        q[np.arange(n), axis] = np.where(rng.uniform(size=n) < 0.5, -1, 1) * half[axis]
        return p["centre"] + q
    if kind == "cylinder":
        r, hh = p["radius"], p["half_height"]
        weights = np.array([2 * np.pi * r * 2 * hh, np.pi * r * r * p["top"], np.pi * r * r * p["bottom"]])
        where = rng.choice(3, size=n, p=weights / weights.sum())
        theta = rng.uniform(0, 2 * np.pi, n)
        x, z, y = r * np.cos(theta), r * np.sin(theta), rng.uniform(-hh, hh, n)
        dx, dz = _disc(rng, n, r)
        cap = where > 0
        x, z, y = np.where(cap, dx, x), np.where(cap, dz, z), np.where(where == 1, hh, np.where(where == 2, -hh, y))
        return p["centre"] + np.stack([x, y, z], -1)
    if kind == "cone":  # apex up, open base: the distance from the apex, as a fraction, is sqrt(U)
        s, theta = np.sqrt(rng.uniform(size=n)), rng.uniform(0, 2 * np.pi, n)
        rho = p["radius"] * s
        return p["centre"] + np.stack([rho * np.cos(theta), p["height"] * (1 - s), rho * np.sin(theta)], -1)
    if kind == "torus":  # in the x-y plane; the tube angle v has density (R + r cos v) / (2 pi R)
        big, small = p["major"], p["minor"]
        v = np.empty(0)
        while v.size < n:
            cand = rng.uniform(0, 2 * np.pi, 2 * n)
            v = np.concatenate([v, cand[rng.uniform(size=2 * n) * (big + small) < big + small * np.cos(cand)]])
        v, u = v[:n], rng.uniform(*p["u_range"], n)
        ring = big + small * np.cos(v)
        return p["centre"] + np.stack([ring * np.cos(u), ring * np.sin(u), small * np.sin(v)], -1)
    if kind == "ellipsoid":  # a sphere point p kept with probability |p / a| / max(1 / a)
        axes = p["semi_axes"]
        out = np.empty((0, 3))
        while len(out) < n:
            q = rng.normal(size=(2 * n, 3))
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            keep = rng.uniform(size=2 * n) * np.max(1 / axes) < np.linalg.norm(q / axes, axis=1)
            out = np.concatenate([out, q[keep] * axes])
        return p["centre"] + out[:n]
    raise ValueError(f"unknown primitive {kind!r}")


def primitives(rng: np.random.Generator, category: str) -> list:
    """The random primitives `(kind, parameters, part id)` of one object of `category`."""
    u = rng.uniform
    if category == "airplane":
        length, radius = u(0.8, 1.0), u(0.1, 0.14)
        fin_height, rear = u(0.12, 0.2), -0.8 * length
        return [("ellipsoid", {"centre": np.zeros(3), "semi_axes": np.array([length, radius, radius])},
                 part_id("airplane", "body")),
                _box([u(-0.15, 0.1), 0, 0], [u(0.12, 0.2), 0.015, u(0.7, 1.0)], part_id("airplane", "wing")),
                _box([rear, 0.5 * radius + fin_height, 0], [0.08, fin_height, 0.01], part_id("airplane", "tail")),
                _box([rear, 0, 0], [0.07, 0.01, u(0.25, 0.35)], part_id("airplane", "tail"))]
    if category == "lamp":
        base_half, height, shade = u(0.02, 0.04), u(0.8, 1.2), u(0.25, 0.4)
        return [_cylinder([0, base_half, 0], u(0.2, 0.35), base_half, part_id("lamp", "base")),
                _cylinder([0, 2 * base_half + height / 2, 0], u(0.02, 0.04), height / 2, part_id("lamp", "pole"),
                          bottom=False),
                ("cone", {"centre": np.array([0, 2 * base_half + height - 0.5 * shade, 0]), "radius": u(0.25, 0.4),
                          "height": shade}, part_id("lamp", "shade"))]
    if category == "mug":
        radius, half = u(0.3, 0.4), u(0.35, 0.5)
        return [_cylinder([0, half, 0], radius, half, part_id("mug", "body"), top=False),
                ("torus", {"centre": np.array([radius, half, 0]), "major": u(0.5, 0.7) * half, "minor": u(0.03, 0.05),
                           "u_range": (-np.pi / 2, np.pi / 2)}, part_id("mug", "handle"))]
    if category == "table":
        height, w, d, t, leg = u(0.6, 0.9), u(0.6, 1.0), u(0.4, 0.7), u(0.03, 0.06), u(0.03, 0.06)
        legs = [_cylinder([sx * (w - 2 * leg), (height - t) / 2, sz * (d - 2 * leg)], leg, (height - t) / 2,
                          part_id("table", "leg"), top=False) for sx in (-1, 1) for sz in (-1, 1)]
        return [_box([0, height, 0], [w, t, d], part_id("table", "top"))] + legs
    raise ValueError(f"unknown category {category!r}; known: {CATEGORIES}")


def rotation_about_up(angle: float) -> np.ndarray:
    """The 3x3 rotation by `angle` about the y axis (points are rows: `p @ R.T`)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def generate(config: SyntheticPartsConfig, split: str, index: int) -> dict:
    """Example `index` of `split`: `points` float32 `[P, 3]`, `part` int32 `[P]`, `category` int32, plus
    what the dataset does not store: `object_points` float64 `[P, 3]` (the sampled surface points in
    the object's frame, before scaling, rotation and jitter), `primitives`, `source` int `[P]` (the
    index of each point's primitive), `scale` `[3]`, `angle`, `jitter` `[P, 3]`, `centroid` `[3]` and
    `radius`: points = ((object_points * scale) @ R(angle).T + jitter - centroid) / radius."""
    rng = example_rng(config.seed, split, index)
    category = index % len(CATEGORIES)
    prims = primitives(rng, CATEGORIES[category])
    areas = np.array([area(kind, p) for kind, p, _ in prims])
    counts = rng.multinomial(config.num_points, areas / areas.sum())
    object_points = np.concatenate([sample(rng, kind, p, n) for (kind, p, _), n in zip(prims, counts)])
    source = np.repeat(np.arange(len(prims)), counts)
    part = np.array([prims[s][2] for s in source], np.int32)
    scale, angle = rng.uniform(0.8, 1.2, 3), rng.uniform(0, 2 * np.pi)
    jitter = np.clip(rng.normal(0, JITTER, object_points.shape), -2 * JITTER, 2 * JITTER)
    points = (object_points * scale) @ rotation_about_up(angle).T + jitter
    centroid = points.mean(0)
    radius = np.linalg.norm(points - centroid, axis=1).max()
    return {"points": ((points - centroid) / radius).astype(np.float32), "part": part,
            "category": np.int32(category), "object_points": object_points, "primitives": prims,
            "source": source, "scale": scale, "angle": angle, "jitter": jitter, "centroid": centroid,
            "radius": radius}


class SyntheticParts(LocalCodePath, GeneratedSplits, tfds.core.GeneratorBasedBuilder):
    """Part-labelled point clouds of primitive objects; see the module docstring."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "points": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
                "part": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "category": tfds.features.Tensor(shape=(), dtype=np.int32),
                "id": tfds.features.Text(),
            }),
            supervised_keys=("points", "part"),
        )

    def _example(self, split: str, index: int) -> dict:
        ex = generate(self.builder_config, split, index)
        return {"points": ex["points"], "part": ex["part"], "category": ex["category"],
                "id": example_id(split, index)}
