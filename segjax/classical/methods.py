"""The classical methods themselves: thin, deterministic wrappers around scikit-image and OpenCV.

Every function takes an RGB image uint8 `[H, W, 3]` plus keyword inputs and returns one of
  * a bool foreground mask `[H, W]` (object vs background),
  * an int32 region map `[H, W]` (an over-segmentation: ids are arbitrary), or
  * an int32 class map `[H, W]` (the method was given classes with its boxes or seeds).
`segjax.classical.METHODS` says which is which and how each becomes a segmentation in the
dataset's label space. Parameters are fixed here (set by eye on `synthetic_shapes/clean`
training images 0-7, never on validation images; the colour edge maps of the two box-started
contours were picked there over luminance: MGAC mIoU 0.97 vs 0.75, snake 0.79 vs 0.64) so that
every run is the same; randomness (quickshift, GrabCut's k-means) is seeded. Luminance-only
methods (thresholds, Chan-Vese) stay on luminance, as they are defined for a scalar image.

Boxes are `(x0, y0, x1, y1)` with x1, y1 exclusive, in pixels. Seeds are an int32 map: 0 = no
seed, k + 1 = a seed of class k.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import color, draw, feature, filters, measure, morphology, segmentation


def gray(image: np.ndarray) -> np.ndarray:
    """Luminance in [0, 1], float64 `[H, W]` (skimage's rgb2gray weights)."""
    return color.rgb2gray(image)


def orient_to_objects(mask: np.ndarray) -> np.ndarray:
    """Picks the polarity of a two-phase result: the phase that covers less of the image border
    is the object (objects in these images lie inside it; the background surrounds them)."""
    mask = np.asarray(mask, bool)
    border = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return ~mask if border.mean() > 0.5 else mask


# --- thresholds and morphological filtering (automatic) -------------------------------------

def otsu(image: np.ndarray) -> np.ndarray:
    """Global Otsu threshold of the luminance; polarity by `orient_to_objects`."""
    g = gray(image)
    return orient_to_objects(g > filters.threshold_otsu(g))


def adaptive_threshold(image: np.ndarray, *, block_fraction: float = 0.3,
                       offset: float = -0.02) -> np.ndarray:
    """Local (adaptive) threshold: luminance against its Gaussian-weighted neighbourhood mean
    (`threshold_local`, odd block ~30% of the image side); polarity by `orient_to_objects`."""
    g = gray(image)
    block = int(block_fraction * min(g.shape)) // 2 * 2 + 1
    return orient_to_objects(g > filters.threshold_local(g, block, method="gaussian", offset=offset))


def otsu_morphology(image: np.ndarray, *, radius_fraction: float = 0.02) -> np.ndarray:
    """Otsu, then morphological filtering: opening and closing with a disk (radius 2% of the
    side), holes and specks smaller than 1% of the image removed."""
    mask = otsu(image)
    fp = morphology.disk(max(1, round(radius_fraction * min(mask.shape))))
    mask = morphology.closing(morphology.opening(mask, fp), fp)
    small = max(1, int(0.01 * mask.size))
    mask = morphology.remove_small_objects(mask, max_size=small)
    return morphology.remove_small_holes(mask, max_size=small)


# --- watershed ------------------------------------------------------------------------------

def watershed_gradient(image: np.ndarray, *, h: float = 0.04) -> np.ndarray:
    """Watershed of the Sobel gradient of the (lightly smoothed) luminance, flooded from its
    h-minima (regional minima deeper than `h`): an over-segmentation (region map)."""
    grad = filters.sobel(filters.gaussian(gray(image), sigma=1.0))
    markers = measure.label(morphology.h_minima(grad, h))
    return segmentation.watershed(grad, markers).astype(np.int32)


def watershed_distance(image: np.ndarray) -> np.ndarray:
    """Otsu foreground split into objects by a watershed of its distance transform, one marker
    per distance peak (at least 15% of the side apart): region map, 0 = background."""
    mask = otsu_morphology(image)
    dist = ndi.distance_transform_edt(mask)
    peaks = feature.peak_local_max(dist, min_distance=max(2, int(0.15 * min(mask.shape))),
                                   labels=measure.label(mask), exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-dist, markers, mask=mask).astype(np.int32)


# --- superpixels ----------------------------------------------------------------------------

def slic(image: np.ndarray, *, n_segments: int = 150, compactness: float = 10.0) -> np.ndarray:
    """SLIC superpixels (k-means in Lab + position): region map."""
    return segmentation.slic(image, n_segments=n_segments, compactness=compactness,
                             start_label=1, channel_axis=-1).astype(np.int32)


def felzenszwalb(image: np.ndarray, *, scale: float = 100.0, sigma: float = 0.5,
                 min_size: int = 20) -> np.ndarray:
    """Felzenszwalb-Huttenlocher graph-based segmentation: region map."""
    return segmentation.felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size,
                                     channel_axis=-1).astype(np.int32)


def quickshift(image: np.ndarray, *, kernel_size: float = 3, max_dist: float = 6,
               ratio: float = 0.5, seed: int = 0) -> np.ndarray:
    """Quickshift mode seeking in (Lab colour, position): region map."""
    return segmentation.quickshift(image, kernel_size=kernel_size, max_dist=max_dist,
                                   ratio=ratio, rng=seed, channel_axis=-1).astype(np.int32)


# --- active contours ------------------------------------------------------------------------

def chan_vese(image: np.ndarray, *, max_num_iter: int = 100) -> np.ndarray:
    """Chan-Vese two-phase level set on the luminance; polarity by `orient_to_objects`."""
    g = gray(image)
    return orient_to_objects(segmentation.chan_vese(g, mu=0.25, max_num_iter=max_num_iter, dt=0.5))


def morph_chan_vese(image: np.ndarray, *, num_iter: int = 50) -> np.ndarray:
    """Morphological Chan-Vese (ACWE) from a checkerboard; polarity by `orient_to_objects`."""
    g = gray(image)
    return orient_to_objects(segmentation.morphological_chan_vese(g, num_iter, smoothing=1) > 0)


def _each_box(shape, boxes, classes, fit) -> np.ndarray:
    """Class map from one binary fit per box, painted in box order (later boxes on top)."""
    out = np.zeros(shape, np.int32)
    for box, cls in zip(boxes, classes):
        out[fit(box)] = cls
    return out


def _grow(box, pad, shape):
    x0, y0, x1, y1 = box
    return max(0, x0 - pad), max(0, y0 - pad), min(shape[1], x1 + pad), min(shape[0], y1 + pad)


def colour_edge_indicator(image: np.ndarray, *, sigma: float = 1.0,
                          alpha: float = 1.0) -> np.ndarray:
    """Edge-stopping function g = 1 / sqrt(1 + alpha |grad|) of the colour gradient: the
    Sobel magnitude over the three CIE-Lab channels of the Gaussian-smoothed image. Near 1 in
    flat regions, small on edges (as skimage's `inverse_gaussian_gradient`, but over colour:
    on luminance alone, a magenta object on grey has almost no edge)."""
    lab = color.rgb2lab(image)
    magnitude = np.sqrt(sum(filters.sobel(filters.gaussian(lab[..., c], sigma)) ** 2
                            for c in range(3)))
    return 1.0 / np.sqrt(1.0 + alpha * magnitude)


def morph_geodesic(image: np.ndarray, *, boxes, box_classes, num_iter: int = 120) -> np.ndarray:
    """Morphological geodesic active contour (balloon -1: shrinks) on the colour edge indicator,
    started from each box grown by 2 px: class map (each box's class)."""
    gimage = colour_edge_indicator(image)

    def fit(box):
        x0, y0, x1, y1 = _grow(box, 2, gimage.shape)
        init = np.zeros(gimage.shape, np.int8)
        init[y0:y1, x0:x1] = 1
        return segmentation.morphological_geodesic_active_contour(
            gimage, num_iter, init_level_set=init, smoothing=1, balloon=-1, threshold="auto") > 0

    return _each_box(gimage.shape, boxes, box_classes, fit)


def snake(image: np.ndarray, *, boxes, box_classes, num_points: int = 120) -> np.ndarray:
    """The snake `active_contour` (edge energy of each RGB channel of the Gaussian-smoothed image),
    started from the circle through the corners of each box grown by 2 px; the final polygon
    filled: class map (each box's class)."""
    g = filters.gaussian(image / 255.0, 2.0, channel_axis=-1)
    t = np.linspace(0, 2 * np.pi, num_points, endpoint=False)

    def fit(box):
        x0, y0, x1, y1 = _grow(box, 2, g.shape)
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        r = 0.5 * np.hypot(y1 - y0, x1 - x0)
        init = np.stack([cy + r * np.sin(t), cx + r * np.cos(t)], 1)  # (row, col)
        contour = segmentation.active_contour(g, init, alpha=0.015, beta=10.0, gamma=0.001,
                                              w_edge=1.0, w_line=0.0, max_num_iter=600)
        return draw.polygon2mask(g.shape[:2], contour)

    return _each_box(g.shape[:2], boxes, box_classes, fit)


# --- seeds and boxes as user input ----------------------------------------------------------

def random_walker(image: np.ndarray, *, seeds) -> np.ndarray:
    """Random walker (Grady 2006) on the RGB image from labelled seeds: class map, seed k+1 ->
    class k for every unseeded pixel."""
    data = image.astype(np.float64) / 255.0
    # Consecutive seed labels in, mapped back after (skimage numbers its output consecutively).
    values, consecutive = np.unique(np.asarray(seeds, np.int32), return_inverse=True)
    if values[0] != 0:
        values, consecutive = np.concatenate([[0], values]), consecutive + 1
    labels = segmentation.random_walker(data, consecutive.reshape(np.shape(seeds)), beta=130,
                                        mode="bf", channel_axis=-1)
    return (values[labels] - 1).astype(np.int32)


def grabcut(image: np.ndarray, *, boxes, box_classes, iterations: int = 5,
            seed: int = 0) -> np.ndarray:
    """OpenCV GrabCut (iterated graph cut with colour GMMs) from each box: class map (each box's
    class). Needs the `classical` extra (opencv-python-headless)."""
    import cv2  # optional dependency

    bgr = np.ascontiguousarray(image[..., ::-1])

    def fit(box):
        x0, y0, x1, y1 = _grow(box, 2, image.shape[:2])
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.setRNGSeed(seed)  # GrabCut's GMM initialisation runs k-means with OpenCV's RNG
        cv2.grabCut(bgr, mask, (x0, y0, x1 - x0, y1 - y0), np.zeros((1, 65)), np.zeros((1, 65)),
                    iterations, cv2.GC_INIT_WITH_RECT)
        return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)

    return _each_box(image.shape[:2], boxes, box_classes, fit)
