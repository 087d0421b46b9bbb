"""DACS's strong augmentation against a torch transcription, written here, of what vikolss/DACS's
`transformsgpu.colorJitter` / `gaussian_blur` compute through kornia 0.4.1 (kornia is not a
dependency): `rgb_to_hsv` / `hsv_to_rgb` in kornia's gather form, `adjust_brightness`
(additive, clamped), `adjust_contrast` (multiplicative, clamped), `adjust_saturation`,
`adjust_hue` (fmod 2 pi), applied in a given order; `GaussianBlur2d` as the outer product of two
normalised 1-D Gaussians applied by `filter2D` (reflection padding, then a depthwise conv2d), and
DACS's kernel-size expression. Fresh random images (with grey pixels and ties of the maximum,
where the HSV branches matter), float64 torch against float32 JAX. Their composition in the DACS
step (jitter, then blur, each where drawn) is checked in tests/tasks/test_uda.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax.style import dacs_augment as da

PI = math.pi


def torch_rgb_to_hsv(x):
    """kornia 0.4.1 rgb_to_hsv, [N, 3, H, W]: the hue of the first maximal channel."""
    maxc, max_index = x.max(1)
    delta = maxc - x.min(1)[0]
    s = delta / (maxc + 1e-31)
    delta = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = torch.unbind(maxc[:, None] - x, 1)
    h = torch.stack([bc - gc, 2.0 * delta + rc - bc, 4.0 * delta + gc - rc], 1)
    h = torch.gather(h, 1, max_index[:, None])[:, 0] / delta
    return torch.stack([2 * PI * ((h / 6.0) % 1.0), s, maxc], 1)


def torch_hsv_to_rgb(x):
    """kornia 0.4.1 hsv_to_rgb: each channel gathered from the six sectors' (r, g, b)."""
    h, s, v = x[:, 0] / (2 * PI), x[:, 1], x[:, 2]
    hi = torch.floor(h * 6) % 6
    f = ((h * 6) % 6) - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = hi.long()
    table = torch.stack((v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q), 1)
    return torch.gather(table, 1, torch.stack([hi, hi + 6, hi + 12], 1))


def torch_jitter(x, b, c, s, h, order):
    """kornia's apply_color_jitter for one image [1, 3, H, W] in [0, 1]."""
    def saturation(x):
        hsv = torch_rgb_to_hsv(x)
        return torch_hsv_to_rgb(torch.cat([hsv[:, :1], (hsv[:, 1:2] * s).clamp(0, 1), hsv[:, 2:]], 1))

    def hue(x):
        hsv = torch_rgb_to_hsv(x)
        return torch_hsv_to_rgb(torch.cat([torch.fmod(hsv[:, :1] + h * 2 * PI, 2 * PI), hsv[:, 1:]], 1))

    fns = [lambda x: (x + (b - 1)).clamp(0, 1), lambda x: (x * c).clamp(0, 1), saturation, hue]
    for i in order:
        x = fns[i](x)
    return x


def torch_dacs_blur(x, sigma):
    """transformsgpu.gaussian_blur's kernel size and kornia's GaussianBlur2d, [N, C, H, W]."""
    def size(n):
        return int(np.floor(np.ceil(0.1 * n) - 0.5 + np.ceil(0.1 * n) % 2))

    def gauss(k):
        t = torch.arange(k, dtype=torch.float64) - k // 2
        g = torch.exp(-t ** 2 / (2 * sigma ** 2))
        return g / g.sum()

    ky, kx = size(x.shape[2]), size(x.shape[3])
    kernel = gauss(ky)[:, None] @ gauss(kx)[None, :]
    padded = F.pad(x, [kx // 2, kx // 2, ky // 2, ky // 2], mode="reflect")
    return F.conv2d(padded, kernel.expand(x.shape[1], 1, ky, kx), groups=x.shape[1])


def images(rng, n, h, w):
    """Random [0, 1] images with grey pixels and exact ties of the maximum channel."""
    x = rng.uniform(0, 1, (n, h, w, 3))
    x[:, 0, :] = x[:, 0, :, :1]  # a grey row
    x[:, 1, :, 1] = x[:, 1, :, 0]  # red == green
    x[:, 2, :, 2] = x[:, 2, :, 1]  # green == blue
    x[:, 3, :3] = 0.0  # black
    return x.astype(np.float32)


def nchw(x):
    return torch.tensor(np.asarray(x, np.float64)).permute(0, 3, 1, 2)


def test_hsv_round_trip_matches_kornias(np_rng):
    x = images(np_rng, 2, 6, 7)
    hsv = np.asarray(jax.jit(da.rgb_to_hsv)(x))
    np.testing.assert_allclose(hsv, torch_rgb_to_hsv(nchw(x)).permute(0, 2, 3, 1).numpy(), atol=2e-5)
    back = np.asarray(jax.jit(da.hsv_to_rgb)(hsv))
    np.testing.assert_allclose(back, torch_hsv_to_rgb(nchw(hsv)).permute(0, 2, 3, 1).numpy(), atol=2e-5)
    np.testing.assert_allclose(back, x, atol=2e-5)


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)])
def test_color_jitter_matches_kornia_in_every_order(np_rng, order):
    x = images(np_rng, 1, 8, 9)
    b, c, s, h = np_rng.uniform(0.75, 1.25, 3).tolist() + [float(np_rng.uniform(-0.25, 0.25))]
    params = {"brightness": b, "contrast": c, "saturation": s, "hue": h, "order": jnp.asarray(order)}
    got = jax.jit(da.color_jitter)(x[0], params)
    want = torch_jitter(nchw(x), b, c, s, h, order)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, atol=5e-5)
    assert np.abs(want - x[0]).max() > 0.05  # it changed the image


@pytest.mark.parametrize("h, w", [(32, 45), (64, 9), (5, 23)])
def test_blur_matches_kornias_gaussian_blur2d_with_dacs_kernel_size(np_rng, h, w):
    x = np_rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    sigma = float(np_rng.uniform(0.15, 1.15))
    got = jax.jit(da.gaussian_blur)(x, sigma)
    want = torch_dacs_blur(nchw(x[None]), sigma)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_kernel_size_is_dacs_expression():
    for n, k in ((512, 51), (1024, 103), (64, 7), (32, 3), (5, 1), (20, 1), (21, 3)):
        assert da.blur_kernel_size(n) == k


def test_parameters_follow_dacs_distributions():
    p = jax.jit(jax.vmap(da.draw_strong_params))(jax.random.split(jax.random.key(0), 4000))
    assert abs(float(jnp.mean(p["jitter"])) - 0.8) < 0.03 and abs(float(jnp.mean(p["blur"])) - 0.5) < 0.03
    for name, lo, hi in (("brightness", 0.75, 1.25), ("contrast", 0.75, 1.25), ("saturation", 0.75, 1.25),
                         ("hue", -0.25, 0.25), ("sigma", 0.15, 1.15)):
        v = np.asarray(p[name])
        assert lo <= v.min() < lo + 0.01 and hi - 0.01 < v.max() <= hi, name
        assert abs(v.mean() - (lo + hi) / 2) < 0.02 * (hi - lo) * 4, name
    assert (np.sort(np.asarray(p["order"]), 1) == np.arange(4)).all()
    assert len({tuple(o) for o in np.asarray(p["order"]).tolist()}) == 24  # every order occurs
    assert np.corrcoef(np.asarray(p["brightness"]), np.asarray(p["contrast"]))[0, 1] < 0.05


def test_a_batch_instead_of_an_image_is_refused_by_name():
    with pytest.raises(ValueError, match="image"):
        da.strong_augment(jnp.zeros((2, 8, 8, 3)), {})  # checked before the parameters are read
