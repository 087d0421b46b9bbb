"""FCN-32s/16s/8s (VGG-16) and FCN-ResNet against hand-wired torch references with the same weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from segjax.models import AUX_LOGITS, LOGITS, create_model
from segjax.models.backbones.resnet import ResNet
from segjax.models.backbones.vgg import VGG16
from segjax.models.fcn import upsample
from segjax.models.heads import FCNHead
from tests.models.tv_reference import nchw, nhwc


@pytest.fixture(autouse=True)
def _fast_init_compile():
    """jax's default partitionable threefry makes compiling `init` ~8x slower on CPU (measured)."""
    with jax.threefry_partitionable(False):
        yield


H, W = 37, 45  # odd, not multiples of 32: pool3/4/5 are 5x6, 3x3, 2x2 (ceil mode)
TINY = dict(backbone_width=4, fc_dim=16)


def _tent_kernel(f: int) -> np.ndarray:
    """The FCN paper's bilinear filter of size 2f (even f), written out independently."""
    centre = f - 0.5
    t = 1 - np.abs(np.arange(2 * f) - centre) / f
    return np.outer(t, t)


class _Up(nn.Module):
    factor: int
    size: tuple
    learnable: bool

    @nn.compact
    def __call__(self, x):
        return upsample(x, self.factor, self.size, learnable=self.learnable, dtype=jnp.float32, name="up")


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_initialised_upsampling_is_bilinear_resize_in_interior(np_rng, factor):
    x = np_rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    size = (factor * 4 - 1, factor * 5 - 3)  # also crops
    want = nhwc(F.interpolate(nchw(x), scale_factor=factor, mode="bilinear", align_corners=False))
    want = want[:, : size[0], : size[1]]
    up = _Up(factor, size, learnable=True)
    variables = up.init(jax.random.key(0), jnp.asarray(x))
    got = np.asarray(up.apply(variables, jnp.asarray(x)))
    assert got.shape == want.shape
    f = factor  # the transposed conv zero-pads where bilinear resize clamps: compare the interior
    np.testing.assert_allclose(got[:, f:-f, f:-f], want[:, f:-f, f:-f], rtol=1e-5, atol=1e-5)
    assert np.abs(got[:, :f // 2] - want[:, :f // 2]).max() > 1e-2  # the border really differs
    # Fixed bilinear: equal everywhere, no parameters.
    fixed = _Up(factor, size, learnable=False)
    assert fixed.init(jax.random.key(0), jnp.asarray(x)) == {}
    np.testing.assert_allclose(fixed.apply({}, jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)


def test_init_bilinear_upscore_and_zero_skip_scores():
    model = create_model("fcn8s_vgg16", num_classes=3, **TINY)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, H, W, 3)))["params"]
    assert set(params) == {"backbone", "score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4",
                           "upscore_final"}
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, H, W, 3)))["params"]
    for name, f in (("upscore2", 2), ("upscore_pool4", 2), ("upscore_final", 8)):
        kernel = np.asarray(params[name]["kernel"])
        assert kernel.shape == (2 * f, 2 * f, 3, 3) and "bias" not in params[name]
        for c in range(3):
            np.testing.assert_allclose(kernel[:, :, c, c], _tent_kernel(f), atol=1e-7)
        assert np.count_nonzero(kernel * (1 - np.eye(3))) == 0  # per-channel
    for name in ("score_pool4", "score_pool3"):
        assert not np.any(params[name]["kernel"])
    assert np.any(params["score_fr"]["kernel"])


def _torch_fcn_reference(feats, params, final_stride, learnable):
    """FCN fusion written with torch ops on the backbone's features (NHWC numpy in/out)."""

    def score(name, x):
        k = torch.from_numpy(np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1))
        return F.conv2d(nchw(x), k, torch.from_numpy(np.asarray(params[name]["bias"])))

    def up(x, f, size, name):
        if learnable:  # segjax kernel [kh, kw, out, in] -> torch ConvTranspose2d weight [in, out, kh, kw]
            w = torch.from_numpy(np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1))
            x = F.conv_transpose2d(x, w, stride=f, padding=f // 2)
        else:
            x = F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)
        return x[:, :, : size[0], : size[1]]

    x = score("score_fr", feats["fc7"])
    if final_stride <= 16:
        x = up(x, 2, feats["pool4"].shape[1:3], "upscore2") + score("score_pool4", feats["pool4"])
    if final_stride == 8:
        x = up(x, 2, feats["pool3"].shape[1:3], "upscore_pool4") + score("score_pool3", feats["pool3"])
    return nhwc(up(x, final_stride, (H, W), "upscore_final"))


@pytest.mark.parametrize("learnable", [True, False])
@pytest.mark.parametrize("final_stride", [32, 16, 8])
def test_fusion_and_alignment_match_torch_reference(np_rng, final_stride, learnable):
    model = create_model(f"fcn{final_stride}s_vgg16", num_classes=3, learnable_upsampling=learnable, **TINY)
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    # Random values everywhere (the zero/bilinear inits would hide wiring mistakes).
    leaves, treedef = jax.tree.flatten(jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x)))
    variables = jax.tree.unflatten(treedef, [np_rng.normal(0, 0.5, l.shape).astype(np.float32) for l in leaves])
    feats = VGG16(width=4, fc_dim=16).apply({"params": variables["params"]["backbone"]}, jnp.asarray(x))
    want = _torch_fcn_reference(jax.tree.map(np.asarray, feats), variables["params"], final_stride, learnable)
    got = jax.jit(model.apply)(variables, jnp.asarray(x))[LOGITS]
    assert got.shape == (2, H, W, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_fixed_upsampling_has_no_upscore_params():
    model = create_model("fcn8s_vgg16", num_classes=3, learnable_upsampling=False, **TINY)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, H, W, 3)))["params"]
    assert not any(k.startswith("upscore") for k in params)


@pytest.mark.parametrize("depth", [50, 101])
def test_fcn_resnet_parameter_count_equals_torchvision(depth):
    tv = getattr(torchvision.models.segmentation, f"fcn_resnet{depth}")(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    want = sum(p.numel() for p in tv.parameters())
    model = create_model(f"fcn_resnet{depth}", num_classes=21, aux_loss=True)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
    assert sum(int(np.prod(l.shape)) for l in jax.tree.leaves(shapes["params"])) == want
    assert set(shapes["params"]) == {"backbone", "classifier", "aux_classifier"}


def test_fcn_resnet_heads_on_layer4_and_layer3_resized_like_torch(np_rng):
    model = create_model("fcn_resnet18", num_classes=4, aux_loss=True, backbone_width=8)
    x = jnp.asarray(np_rng.normal(size=(1, H, W, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(1), x)
    out = jax.jit(model.apply)(variables, x)
    backbone = {k: v["backbone"] for k, v in variables.items()}
    feats = jax.jit(ResNet(depth=18, output_stride=8, width=8).apply)(backbone, x)
    assert feats["layer4"].shape[1:3] == (5, 6)  # output stride 8
    for key, head, layer in ((LOGITS, "classifier", "layer4"), (AUX_LOGITS, "aux_classifier", "layer3")):
        head_vars = {k: v[head] for k, v in variables.items()}
        scores = FCNHead(4).apply(head_vars, feats[layer])
        want = nhwc(F.interpolate(nchw(np.asarray(scores)), size=(H, W), mode="bilinear", align_corners=False))
        np.testing.assert_allclose(out[key], want, rtol=1e-5, atol=1e-5)


def test_bad_final_stride_and_input_raise():
    with pytest.raises(ValueError, match="output_stride"):
        create_model("fcn8s_vgg16", num_classes=3, output_stride=16)
    model = create_model("fcn8s_vgg16", num_classes=3, **TINY)
    with pytest.raises(ValueError, match=r"\(1, 33, 33, 1\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 1)))
