"""`synthetic_shapes`: a segmentation dataset generated from a seed, no download needed.

Each image (default 128x128) shows 1-4 filled shapes -- circle, square, triangle, star, cross --
over a smooth random texture. Labels are class ids `[H, W, 1]` uint8 (0 = background) and the
instance ids `[H, W, 1]` uint16 (0 = none, 1..n in drawing order). Example `i` of a split is a
pure function of `(config.seed, split, i)`, so any subset regenerates identically.

Builder configs switch on the difficulty factors one at a time (`illumination`, `occlusion`,
`overlap`, `shape_variation`, `imbalance`, `noise`, `label_noise`), all together (`all`), or none
(`clean`, the default). In every config but `shape_only` each class has its own hue (jittered), so
the default is learnable by a small model in a few hundred steps; `shape_only` draws random
colours, leaving shape as the only cue. `tiny` (48x48, 32+16 images) is for fast tests.
"""
from __future__ import annotations

import dataclasses
import io
import zlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from segjax.data.builders._common import LocalCodePath

CLASS_NAMES = ("background", "circle", "square", "triangle", "star", "cross")
NUM_CLASSES = len(CLASS_NAMES)
FACTORS = ("illumination", "occlusion", "overlap", "shape_variation", "imbalance", "noise",
           "label_noise")
# Hue (degrees) of each foreground class when colours follow the class.
_CLASS_HUES = (0.0, 120.0, 230.0, 55.0, 300.0)
# Object class frequencies under `imbalance` (circle ... cross); uniform otherwise.
IMBALANCED_CLASS_PROBS = (0.62, 0.22, 0.09, 0.05, 0.02)


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
    """Generation parameters. `factors` is a tuple of names from `FACTORS`.

    Sizes are in pixels; `num_train`/`num_validation` are example counts.
    """

    image_size: int = 128
    num_train: int = 2000
    num_validation: int = 250
    seed: int = 0
    factors: tuple = ()
    colour_by_class: bool = True
    min_objects: int = 1
    max_objects: int = 4

    def __post_init__(self):
        unknown = set(self.factors) - set(FACTORS)
        if unknown:
            raise ValueError(f"factors: unknown {sorted(unknown)}; known: {FACTORS}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 pixels, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got "
                             f"{self.min_objects}, {self.max_objects}")


def _config(name: str, description: str, **kwargs) -> SyntheticShapesConfig:
    return SyntheticShapesConfig(name=name, version="1.0.0", description=description, **kwargs)


BUILDER_CONFIGS = [
    _config("clean", "No difficulty factor: distinct shapes, uniform light, no overlap."),
    _config("illumination", "Non-uniform illumination: smooth gain field 0.35-1.35.",
            factors=("illumination",)),
    _config("occlusion", "Partial occlusion: bars of clutter cover parts of objects.",
            factors=("occlusion",)),
    _config("overlap", "Overlapping objects: later objects are drawn over earlier ones.",
            factors=("overlap",)),
    _config("shape_variation", "Shape inconsistency: aspect ratio and vertex jitter per object.",
            factors=("shape_variation",)),
    _config("imbalance", f"Class imbalance: object classes drawn with {IMBALANCED_CLASS_PROBS}.",
            factors=("imbalance",)),
    _config("noise", "Gaussian (sigma 12) plus 1% salt-and-pepper noise.", factors=("noise",)),
    _config("label_noise", "Variance in ground truth: jittered/scaled label polygons and 8% "
            "of objects labelled with a wrong class.", factors=("label_noise",)),
    _config("all", "All difficulty factors together.", factors=FACTORS),
    _config("shape_only", "Clean, but random object colours: shape is the only cue.",
            colour_by_class=False),
    _config("tiny", "Clean, 48x48, 32 train / 16 validation images: for fast tests.",
            image_size=48, num_train=32, num_validation=16, max_objects=2),
]

_SPLITS = {"train": "num_train", "validation": "num_validation"}


def example_rng(seed: int, split: str, index: int, stream: str = "scene") -> np.random.Generator:
    """The generator of example `index` of `split`: independent of every other example.

    Each difficulty factor draws from its own `stream`, so switching a factor on leaves the rest
    of the scene (objects, colours, placement) unchanged -- configs differ only in the factor.
    """
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index,
                                  zlib.crc32(stream.encode())])


def _unit_polygon(cls: int, rng: np.random.Generator, irregular: bool) -> np.ndarray:
    """Vertices `[n, 2]` of class `cls` around the origin, circumradius about 1."""
    if cls == 1:  # circle
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], -1) * 0.95
    elif cls == 2:  # square
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.78
    elif cls == 3:  # triangle
        t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], -1) * 1.1
    elif cls == 4:  # five-pointed star
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.15, 0.48)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], -1)
    elif cls == 5:  # plus-shaped cross
        a, w = 1.0, 0.34
        pts = np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a],
                        [-w, w], [-a, w], [-a, -w], [-w, -w]], float)
    else:
        raise ValueError(f"cls must be in 1..{NUM_CLASSES - 1}, got {cls}")
    if irregular:  # shape inconsistency: anisotropic scale and per-vertex jitter
        pts = pts * rng.uniform(0.65, 1.0, size=2)
        pts = pts * rng.uniform(0.88, 1.12, size=(len(pts), 1))
    return pts


def _place(pts: np.ndarray, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    return rot * radius + np.array([cx, cy])


def _fill(poly: np.ndarray, size: int) -> np.ndarray:
    """Boolean mask `[size, size]` of the pixels inside `poly` (pixel centres at +0.5)."""
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in (poly - 0.5)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _texture(rng: np.random.Generator, size: int, waves: int = 3) -> np.ndarray:
    """A smooth random field `[size, size]` in [-1, 1] (sum of oriented sinusoids)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    field = np.zeros((size, size))
    for _ in range(waves):
        freq, theta, phase = rng.uniform(1.5, 7.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        field += np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    return field / waves


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One colour, hue in degrees, s and v in [0, 1] -> RGB floats in [0, 255]."""
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return (np.array(rgb) + (v - c)) * 255.0


def generate(config: SyntheticShapesConfig, split: str, index: int) -> dict:
    """Example `index` of `split`: `image` uint8 `[S, S, 3]`, `label` uint8 `[S, S, 1]`,
    `instances` uint16 `[S, S, 1]`, plus metadata that the dataset does not store:
    `classes` (class per instance), `visible_fraction` (visible/full area per instance) and
    `clean_label` (the label before `label_noise`)."""
    rng = example_rng(config.seed, split, index)
    size, factors = config.image_size, set(config.factors)
    factor_rng = {f: example_rng(config.seed, split, index, f) for f in FACTORS}
    # Background: a low-saturation colour with a gentle texture.
    bg = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.6))
    image = bg + 28.0 * _texture(rng, size)[..., None] * rng.uniform(0.5, 1.0, size=3)
    label = np.zeros((size, size), np.uint8)
    clean_label = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint16)

    probs = IMBALANCED_CLASS_PROBS if "imbalance" in factors else (1 / (NUM_CLASSES - 1),) * 5
    cumulative = np.cumsum(probs)
    num_objects = rng.integers(config.min_objects, config.max_objects + 1)
    placed, classes, areas = [], [], []  # placed: (cx, cy, r)
    for _ in range(num_objects):
        cls = 1 + min(int(np.searchsorted(cumulative, rng.uniform(), side="right")),
                      NUM_CLASSES - 2)
        radius = rng.uniform(0.1, 0.2) * size
        for _attempt in range(30):  # find a free spot (or, under `overlap`, a partly taken one)
            if "overlap" in factors and placed:
                ox, oy, orad = placed[rng.integers(len(placed))]
                d, phi = rng.uniform(0.6, 1.1) * (orad + radius), rng.uniform(0, 2 * np.pi)
                cx, cy = ox + d * np.cos(phi), oy + d * np.sin(phi)
            else:
                cx, cy = rng.uniform(radius, size - radius, size=2)
            inside = radius <= cx <= size - radius and radius <= cy <= size - radius
            free = all(np.hypot(cx - x, cy - y) > r + radius + 2 for x, y, r in placed)
            if inside and (free or "overlap" in factors):
                break
        else:
            continue  # no room: fewer objects in this image
        angle = rng.uniform(0, 2 * np.pi)
        unit = _unit_polygon(cls, factor_rng["shape_variation"], "shape_variation" in factors)
        poly = _place(unit, cx, cy, radius, angle)
        mask = _fill(poly, size)
        hue = _CLASS_HUES[cls - 1] + rng.uniform(-12, 12) if config.colour_by_class \
            else rng.uniform(0, 360)
        colour = _hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
        shade = 1.0 + 0.12 * _texture(rng, size, waves=2)[..., None]
        image = np.where(mask[..., None], colour * shade, image)
        label_cls, label_mask = cls, mask
        if "label_noise" in factors:  # an annotator's polygon: scaled, jittered, sometimes wrong
            lrng = factor_rng["label_noise"]
            noisy = _place(unit * lrng.uniform(0.88, 1.12)
                           + lrng.normal(0, 0.06, size=unit.shape), cx, cy, radius, angle)
            label_mask = _fill(noisy, size)
            if lrng.uniform() < 0.08:
                label_cls = int(lrng.choice([c for c in range(1, NUM_CLASSES) if c != cls]))
        clean_label[mask] = cls
        label[label_mask] = label_cls
        instances[label_mask] = len(placed) + 1
        placed.append((cx, cy, radius))
        classes.append(cls)
        areas.append(mask.sum())

    if "occlusion" in factors:  # clutter bars across objects, labelled background
        rng = factor_rng["occlusion"]
        clutter = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.2), rng.uniform(0.2, 0.5))
        for cx, cy, r in placed:
            width, angle = rng.uniform(0.35, 0.6) * r, rng.uniform(0, np.pi)
            offset = rng.uniform(-0.5, 0.5) * r
            ux, uy = np.cos(angle), np.sin(angle)  # along the bar; (-uy, ux) across it
            bx, by = cx - uy * offset, cy + ux * offset
            half = 1.6 * r
            bar = np.array([[bx - ux * half - uy * width / 2, by - uy * half + ux * width / 2],
                            [bx + ux * half - uy * width / 2, by + uy * half + ux * width / 2],
                            [bx + ux * half + uy * width / 2, by + uy * half - ux * width / 2],
                            [bx - ux * half + uy * width / 2, by - uy * half - ux * width / 2]])
            mask = _fill(bar, size)
            image = np.where(mask[..., None], clutter, image)
            label[mask], clean_label[mask], instances[mask] = 0, 0, 0

    if "illumination" in factors:  # smooth gain: a linear ramp plus a vignette
        rng = factor_rng["illumination"]
        yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
        theta = rng.uniform(0, 2 * np.pi)
        ramp = xx * np.cos(theta) + yy * np.sin(theta)
        gain = 0.85 + rng.uniform(0.5, 0.7) * ramp - rng.uniform(0.3, 0.8) * (xx ** 2 + yy ** 2)
        image = image * np.clip(gain, 0.35, 1.35)[..., None]
    if "noise" in factors:
        rng = factor_rng["noise"]
        image = image + rng.normal(0, 12.0, size=image.shape)
        salt = rng.uniform(size=(size, size))
        image[salt < 0.005], image[salt > 0.995] = 0.0, 255.0

    visible = [float((instances == k + 1).sum() / a) if "label_noise" not in factors
               else float(((instances == k + 1) & (clean_label == c)).sum() / a)
               for k, (a, c) in enumerate(zip(areas, classes))]
    return {
        "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
        "label": label[..., None],
        "instances": instances[..., None],
        "classes": np.array(classes, np.int32),
        "visible_fraction": np.array(visible),
        "clean_label": clean_label[..., None],
    }


class SyntheticShapes(LocalCodePath, tfds.core.GeneratorBasedBuilder):
    """Shapes over textured backgrounds; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "segmentation_mask": tfds.features.Image(shape=(None, None, 1),
                                                         encoding_format="png"),
                # A zlib Tensor, not a uint16 PNG: TFDS decodes uint16 PNGs only with OpenCV.
                "instance_mask": tfds.features.Tensor(shape=(None, None, 1), dtype=np.uint16,
                                                      encoding="zlib"),
                "image_id": tfds.features.Text(),
            }),
            supervised_keys=("image", "segmentation_mask"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split, getattr(self.builder_config, attr))
                for split, attr in _SPLITS.items()}

    def _generate_examples(self, split: str, count: int):
        for index in range(count):
            ex = generate(self.builder_config, split, index)
            yield index, {"image": _png(ex["image"]),
                          "segmentation_mask": _png(ex["label"][..., 0]),
                          "instance_mask": ex["instances"], "image_id": f"{split}_{index:06d}"}


def _png(array: np.ndarray) -> bytes:
    """Fast lossless PNG (zlib level 1: ~8x faster than TFDS's default encoder here)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
