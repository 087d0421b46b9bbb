"""DACS's strong augmentation of the mixed images (Tranheden et al., WACV 2021, "DACS: Domain
Adaptation via Cross-domain Mixed Sampling": colour jitter and Gaussian blur), as vikolss/DACS
`trainUDA.py:strongTransform` applies it after ClassMix, with `utils/transformsgpu.py`'s
`colorJitter` and `gaussian_blur` through kornia (unpinned in its requirements; the functions
below are kornia 0.4.1's, October 2020):

1. colour jitter with probability 0.8 (`colorJitter > 0.2`, a U(0, 1) draw), on the image
   scaled to [0, 1]: kornia's `ColorJitter(brightness=s, contrast=s, saturation=s, hue=s)`,
   s = 0.25: factors b, c, sat ~ U(0.75, 1.25), hue h ~ U(-0.25, 0.25), applied in a random
   order (a permutation of the four) as kornia's `apply_color_jitter`:
   brightness x + (b - 1) and contrast x * c, each clipped to [0, 1] (kornia's additive
   brightness and purely multiplicative contrast, not torchvision's blends); saturation
   S * sat clipped to [0, 1] and hue H + 2 pi h (`fmod` 2 pi) in kornia's HSV (hue in
   radians);
2. Gaussian blur with probability 0.5 (`blur > 0.5`), sigma ~ U(0.15, 1.15) on both axes, an
   odd kernel of about a tenth of the image on each axis (`blur_kernel_size`), reflection at the
   borders (kornia's `GaussianBlur2d`, `filter2D`). The blur is linear with weights summing to
   1, so it gives the same on 0..255 as on DACS's mean-subtracted values.

kornia 0.3 and 0.4.0, current when DACS was written, have the same functions but for a bug in
`hsv_to_rgb` (it assigns the sectors' colours in place, one sector after another, so a channel
just set to exactly 1.0 in sector 0 is overwritten by sector 1's value: saturated reds come out
wrong), fixed in 0.4.1; this is the fixed conversion. DACS's flip is off in its configuration (`"flip": false`) and is not done here. Differences: DACS
draws the jitter and blur decisions once per iteration for its batch of two; here every example
draws its own (with its own key, so the batch's augmentation does not depend on how it is split
over devices). DACS's images are BGR while kornia's HSV assumes RGB; segjax's are RGB, so
saturation and hue act on the colours kornia's formulas mean.

`draw_strong_params(key)` draws one example's parameters, `strong_augment(image, params)`
applies them to one [H, W, 3] image in 0..255.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from segjax.ops._args import check_rank

JITTER_STRENGTH = 0.25  # transformsgpu.colorJitter's s
JITTER_PROB = 0.8  # colorJitter > 0.2
BLUR_PROB = 0.5  # blur > 0.5
BLUR_SIGMA = (0.15, 1.15)  # np.random.uniform(0.15, 1.15)
TWO_PI = 2.0 * math.pi


def rgb_to_hsv(image: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] -> [..., 3] (hue in [0, 2 pi) radians, saturation, value), as
    kornia's `rgb_to_hsv` (hue of the first maximal channel: red, green, blue; grey: hue 0)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    maxc, minc = jnp.max(image, -1), jnp.min(image, -1)
    delta = maxc - minc
    s = jnp.where(maxc == 0, 0.0, delta / jnp.where(maxc == 0, 1.0, maxc))
    d = jnp.where(delta == 0, 1.0, delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = jnp.where(r == maxc, bc - gc, jnp.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(minc == maxc, 0.0, h)
    return jnp.stack([TWO_PI * jnp.mod(h / 6.0, 1.0), s, maxc], -1)


def hsv_to_rgb(image: jax.Array) -> jax.Array:
    """[..., 3] (hue in radians, saturation, value) -> [..., 3] RGB, as kornia's `hsv_to_rgb`."""
    h, s, v = image[..., 0] / TWO_PI, image[..., 1], image[..., 2]
    sector = jnp.mod(jnp.floor(h * 6.0), 6.0)
    f = jnp.mod(h * 6.0, 6.0) - sector
    p, q, t = v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s)
    choices = jnp.stack([jnp.stack(c, -1) for c in (
        (v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return jnp.take_along_axis(choices, sector.astype(jnp.int32)[None, ..., None], 0)[0]


def _brightness(x, p):
    return jnp.clip(x + (p["brightness"] - 1.0), 0.0, 1.0)


def _contrast(x, p):
    return jnp.clip(x * p["contrast"], 0.0, 1.0)


def _saturation(x, p):
    hsv = rgb_to_hsv(x)
    return hsv_to_rgb(hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * p["saturation"], 0.0, 1.0)))


def _hue(x, p):
    hsv = rgb_to_hsv(x)
    return hsv_to_rgb(hsv.at[..., 0].set(jnp.fmod(hsv[..., 0] + TWO_PI * p["hue"], TWO_PI)))


def color_jitter(image: jax.Array, params: dict) -> jax.Array:
    """kornia's `apply_color_jitter` on one image [H, W, 3] in [0, 1]: the four adjustments
    (0 brightness, 1 contrast, 2 saturation, 3 hue) in the order `params["order"]` ([4] int)."""
    fns = [lambda x, f=f: f(x, params) for f in (_brightness, _contrast, _saturation, _hue)]
    for i in range(4):
        image = lax.switch(params["order"][i], fns, image)
    return image


def blur_kernel_size(n: int) -> int:
    """DACS's kernel size for a side of n pixels: c = ceil(n / 10) if odd, else c - 1."""
    c = math.ceil(0.1 * n)
    return int(math.floor(c - 0.5 + c % 2))


def _gaussian_1d(size: int, sigma: jax.Array) -> jax.Array:
    x = jnp.arange(size, dtype=jnp.float32) - size // 2
    g = jnp.exp(-jnp.square(x) / (2.0 * jnp.square(sigma)))
    return g / jnp.sum(g)


def gaussian_blur(image: jax.Array, sigma: jax.Array) -> jax.Array:
    """kornia's `GaussianBlur2d((ky, kx), (sigma, sigma))` with reflection at the borders on one
    image [H, W, C]; ky = blur_kernel_size(H), kx = blur_kernel_size(W); computed as two 1-D
    passes (the kernel is their outer product)."""
    check_rank(image, 3, "image", "H, W, C")
    channels = image.shape[-1]
    x = image[None]
    for axis, size in ((1, blur_kernel_size(image.shape[0])), (2, blur_kernel_size(image.shape[1]))):
        if size == 1:
            continue
        pad = [(0, 0)] * 4
        pad[axis] = (size // 2, size // 2)
        shape = (size, 1, 1, channels) if axis == 1 else (1, size, 1, channels)
        kernel = jnp.broadcast_to(_gaussian_1d(size, sigma).reshape(shape[:2] + (1, 1)), shape)
        x = lax.conv_general_dilated(jnp.pad(x, pad, mode="reflect"), kernel.astype(x.dtype),
                                     (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=channels, precision=lax.Precision.HIGHEST)
    return x[0]


def draw_strong_params(key: jax.Array) -> dict:
    """One example's parameters: `jitter` / `blur` (bool: applied or not), `brightness`,
    `contrast`, `saturation` (U(0.75, 1.25)), `hue` (U(-0.25, 0.25), in turns), `order` ([4],
    a uniformly random permutation: the ranks of four uniforms) and `sigma` (U(0.15, 1.15)).
    One draw of 11 uniforms (a single threefry call: fast to compile)."""
    u = jax.random.uniform(key, (11,))
    s, (lo, hi) = JITTER_STRENGTH, BLUR_SIGMA
    factors = 1.0 - s + 2.0 * s * u[1:4]
    return {"jitter": u[0] < JITTER_PROB, "brightness": factors[0], "contrast": factors[1],
            "saturation": factors[2], "hue": -s + 2.0 * s * u[4], "order": jnp.argsort(u[5:9]),
            "blur": u[9] < BLUR_PROB, "sigma": lo + (hi - lo) * u[10]}


def strong_augment(image: jax.Array, params: dict) -> jax.Array:
    """DACS's colour jitter then Gaussian blur (module docstring) of one image [H, W, 3] in
    0..255, each where `params` (`draw_strong_params`) says so; returns [H, W, 3] in 0..255."""
    check_rank(image, 3, "image", "H, W, 3")
    jittered = color_jitter(image / 255.0, params) * 255.0
    image = jnp.where(params["jitter"], jittered, image)
    return jnp.where(params["blur"], gaussian_blur(image, params["sigma"]), image)
