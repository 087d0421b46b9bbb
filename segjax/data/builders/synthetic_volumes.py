"""`synthetic_volumes`: a volumetric (3-D) segmentation dataset generated from a seed, no download.

Each example is one MR-like volume `image` float32 `[D, H, W, 1]` (default 32 x 48 x 48 voxels of
1 mm) showing an "organ" -- a smooth, lumpy ellipsoid -- that contains 1-4 "lesions" of two
kinds. Classes: 0 background, 1 organ, 2 lesion A (small bright, nearly spherical), 3 lesion B
(darker than the organ, elongated, mottled). `label` uint8 `[D, H, W]`, `spacing` float32 `[3]`
(mm along D, H, W: z, y, x) and `id` are stored with it. Example `i` of a split is a pure
function of `(config.seed, split, i)` (`synthetic_shapes.example_rng`), so any subset
regenerates identically; each difficulty factor draws from its own stream, so switching a factor
on changes only what the factor changes.

Difficulty configs (`synthetic_volumes/<name>`):
  `clean`        the scene alone (default).
  `noise`        Rician noise, the magnitude of complex Gaussian noise (Gudbjartsson & Patz
                 1995, MRM 34:910): |s + n1 + i n2|, n1, n2 ~ N(0, NOISE_SIGMA^2).
  `bias`         a smooth multiplicative bias field exp(p(x, y, z)), p a random polynomial of
                 order BIAS_ORDER in coordinates scaled to [-1, 1], as MR intensity
                 inhomogeneity is modelled (Van Leemput et al. 1999, IEEE TMI 18:885; TorchIO's
                 RandomBiasField).
  `anisotropic`  thick slices: every SLICE_THICKNESS fine slices are averaged into one (partial
                 volume), the label is the middle fine slice's; spacing (3, 1, 1) mm, D / 3
                 slices.
  `all`          the three together (slices averaged, then bias, then noise).
  `tiny`         clean, 16 x 24 x 24, 6 train / 3 validation volumes: for fast tests.
Labels are the same in `clean`, `noise` and `bias` (only the image changes).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from scipy import ndimage

from segjax.data.builders._common import GeneratedSplits, LocalCodePath, example_id
from segjax.data.builders.synthetic_shapes import example_rng

CLASS_NAMES = ("background", "organ", "lesion_a", "lesion_b")
NUM_CLASSES = len(CLASS_NAMES)
FACTORS = ("noise", "bias", "anisotropic")
VERSION = "1.0.0"  # bump whenever generated values change: prepared data of old versions is stale
NOISE_SIGMA = 0.05  # Rician noise level, on the clean image's 0..1 scale (organ ~0.55)
BIAS_ORDER = 3  # degree of the bias field's polynomial
BIAS_COEFFICIENT = 0.3  # its coefficients ~ U(-c, c) / (total degree)
SLICE_THICKNESS = 3  # fine (1 mm) slices per thick slice under `anisotropic`
# Mean intensity of each class on the clean image (each jittered per volume by +-0.04).
_INTENSITY = (0.15, 0.55, 0.9, 0.3)


@dataclasses.dataclass(eq=False)
class SyntheticVolumesConfig(tfds.core.BuilderConfig):
    """Generation parameters. `shape` is `(D, H, W)` in voxels of 1 mm before `anisotropic`
    (which keeps `D // SLICE_THICKNESS` thick slices); `factors` names from `FACTORS`."""

    version: str = VERSION
    shape: tuple = (32, 48, 48)
    num_train: int = 48
    num_validation: int = 12
    seed: int = 0
    factors: tuple = ()

    def __post_init__(self):
        unknown = set(self.factors) - set(FACTORS)
        if unknown:
            raise ValueError(f"factors: unknown {sorted(unknown)}; known: {FACTORS}")
        if len(self.shape) != 3 or min(self.shape) < 12:
            raise ValueError(f"shape must be (D, H, W) with every size >= 12 voxels, got "
                             f"{self.shape}")


def _config(name: str, description: str, **kwargs) -> SyntheticVolumesConfig:
    return SyntheticVolumesConfig(name=name, description=description, **kwargs)


BUILDER_CONFIGS = [
    _config("clean", "No difficulty factor: an organ with lesions, sharp and noise-free."),
    _config("noise", f"Rician noise, sigma {NOISE_SIGMA} (organ intensity ~0.55).",
            factors=("noise",)),
    _config("bias", f"Multiplicative bias field exp(polynomial of order {BIAS_ORDER}).",
            factors=("bias",)),
    _config("anisotropic", f"Thick slices: spacing ({SLICE_THICKNESS}, 1, 1) mm, partial volume.",
            factors=("anisotropic",)),
    _config("all", "Thick slices, bias field and Rician noise together.", factors=FACTORS),
    _config("tiny", "Clean, 16x24x24, 6 train / 3 validation volumes: for fast tests.",
            shape=(16, 24, 24), num_train=6, num_validation=3),
]



def _texture(rng: np.random.Generator, grid: np.ndarray, waves: int, freq: tuple) -> np.ndarray:
    """A smooth random field over `grid` (`[3, D, H, W]` coordinates scaled to [0, 1]) in [-1, 1]:
    a sum of `waves` plane waves of random direction, phase and frequency in `freq` (cycles)."""
    field = np.zeros(grid.shape[1:])
    for _ in range(waves):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        phase, f = rng.uniform(0, 2 * np.pi), rng.uniform(*freq)
        field += np.sin(2 * np.pi * f * np.tensordot(direction, grid, 1) + phase)
    return field / waves


def _blob(rng: np.random.Generator, points: np.ndarray, centre, semi_axes, lumps: float
          ) -> np.ndarray:
    """Boolean mask of a randomly rotated ellipsoid (centre and semi-axes in mm, `points`
    `[3, D, H, W]` in mm) whose surface is bent by three smooth angular waves of relative
    amplitude up to `lumps`."""
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q = np.tensordot(rotation, points - np.reshape(centre, (3, 1, 1, 1)), 1)
    q = q / np.reshape(semi_axes, (3, 1, 1, 1))
    radius = np.sqrt((q ** 2).sum(0))
    unit = q / np.maximum(radius, 1e-9)
    surface = np.ones_like(radius)
    for _ in range(3):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        surface += rng.uniform(0, lumps) * np.sin(
            np.pi * rng.uniform(1.0, 2.0) * np.tensordot(direction, unit, 1)
            + rng.uniform(0, 2 * np.pi))
    return radius < surface


def _scene(rng: np.random.Generator, shape: tuple) -> tuple:
    """The clean scene on the 1 mm grid: (image float64 `[D, H, W]`, label uint8, organ mask)."""
    size = np.array(shape, float)
    points = np.mgrid[tuple(slice(0, s) for s in shape)] + 0.5  # voxel centres, mm
    grid = points / np.reshape(size, (3, 1, 1, 1))
    organ = _blob(rng, points, size / 2 + rng.uniform(-0.08, 0.08, 3) * size,
                  size * rng.uniform(0.28, 0.38, 3), lumps=0.12)
    label = organ.astype(np.uint8)
    depth = ndimage.distance_transform_edt(organ)  # mm from the organ's surface
    num_a, num_b = rng.integers(0, 3, size=2)  # 0-2 of each kind, at least one lesion in all
    kinds = [2] * max(int(num_a), 1 - int(num_b > 0)) + [3] * int(num_b)
    for cls in kinds:
        radius = rng.uniform(2.5, 4.5) if cls == 2 else rng.uniform(3.0, 5.5)
        radius = min(radius, max(depth.max() - 1.0, 1.0))
        inside = np.argwhere(depth >= radius)
        centre = inside[rng.integers(len(inside))] + 0.5
        elongation = (rng.uniform(0.85, 1.15, 3) if cls == 2
                      else np.array([1.6, 1.0, 0.7]) * rng.uniform(0.9, 1.1, 3))
        lesion = _blob(rng, points, centre, radius * elongation, lumps=0.1 if cls == 2 else 0.2)
        label[lesion & organ] = cls
    image = np.zeros(shape)
    for cls in range(NUM_CLASSES):
        level = _INTENSITY[cls] + rng.uniform(-0.04, 0.04)
        texture = (0.12 * _texture(rng, grid, 3, (4.0, 8.0)) if cls == 3
                   else 0.04 * _texture(rng, grid, 3, (1.0, 3.0)))
        image = np.where(label == cls, level + texture, image)
    return image, label, organ


def bias_field(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """exp(p) on a `(D, H, W)` grid, p = sum of c_ijk z^i y^j x^k over 0 < i + j + k <=
    BIAS_ORDER, coordinates of the voxel centres scaled to [-1, 1], c ~ U(-c0, c0) / (i + j + k),
    c0 = BIAS_COEFFICIENT."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 2 * s + 1)[1::2] for s in shape], indexing="ij")
    poly = np.zeros(shape)
    for i in range(BIAS_ORDER + 1):
        for j in range(BIAS_ORDER + 1 - i):
            for k in range(BIAS_ORDER + 1 - i - j):
                if i + j + k:
                    coefficient = rng.uniform(-BIAS_COEFFICIENT, BIAS_COEFFICIENT) / (i + j + k)
                    poly += coefficient * z ** i * y ** j * x ** k
    return np.exp(poly)


def generate(config: SyntheticVolumesConfig, split: str, index: int) -> dict:
    """Example `index` of `split`: `image` float32 `[D, H, W, 1]`, `label` uint8 `[D, H, W]`,
    `spacing` float32 `[3]` (mm along D, H, W), plus metadata the dataset does not store:
    `clean_image` (the scene before bias and noise, after slice averaging) and `organ` (bool
    `[D, H, W]`, the organ's extent under its lesions, on the output grid)."""
    factors = set(config.factors)
    image, label, organ = _scene(example_rng(config.seed, split, index), tuple(config.shape))
    spacing = np.ones(3, np.float32)
    if "anisotropic" in factors:
        t = SLICE_THICKNESS
        depth = config.shape[0] // t
        image = image[: depth * t].reshape((depth, t) + image.shape[1:]).mean(1)
        label, organ = label[t // 2: depth * t: t], organ[t // 2: depth * t: t]
        spacing[0] = t
    clean_image = image
    if "bias" in factors:
        image = image * bias_field(example_rng(config.seed, split, index, "bias"), image.shape)
    if "noise" in factors:
        rng = example_rng(config.seed, split, index, "noise")
        real, imaginary = rng.normal(0.0, NOISE_SIGMA, size=(2,) + image.shape)
        image = np.hypot(image + real, imaginary)
    return {"image": image[..., None].astype(np.float32), "label": label,
            "spacing": spacing, "clean_image": clean_image.astype(np.float32), "organ": organ}


class SyntheticVolumes(LocalCodePath, GeneratedSplits, tfds.core.GeneratorBasedBuilder):
    """An organ with lesions in an MR-like volume; see the module docstring."""

    VERSION = tfds.core.Version(VERSION)  # the module constant
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(None, None, None, 1), dtype=np.float32,
                                              encoding="zlib"),
                "label": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8,
                                              encoding="zlib"),
                "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                "id": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
        )

    def _example(self, split: str, index: int) -> dict:
        ex = generate(self.builder_config, split, index)
        return {"image": ex["image"], "label": ex["label"], "spacing": ex["spacing"],
                "id": example_id(split, index)}
