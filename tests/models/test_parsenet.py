"""ParseNet (context module, L2 normalisation, VGG-16 and ResNet variants) against a torch
transcription of the paper written here, with the flax weights copied into torch modules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from segjax.models import LOGITS, create_model
from segjax.models.layers import L2Normalize
from segjax.models.parsenet import ParseNetContextHead
from tests.models.tv_reference import nchw, nhwc, random_variables, rel_err

H, W = 37, 45  # odd: fc7 at output stride 8 is 5x6 (ceil-mode pools)
TINY = dict(backbone_width=4, fc_dim=16)
EPS = 1e-10  # the Caffe Normalize layer's


def _t(a):
    return torch.from_numpy(np.asarray(a, np.float32).copy())


def _torch_l2norm(x, scale):
    """The paper's normalisation on NCHW: x / ||x||_2 over channels per position, times scale[c]."""
    return x / torch.sqrt((x * x).sum(1, keepdim=True) + EPS) * scale.view(1, -1, 1, 1)


class TorchParseNetVGG16(tnn.Module):
    """VGG-16 (ceil-mode 2x2 pools; at output stride 8 pool4/pool5 3x3 stride 1 and conv5 at
    dilation 2, fc6 3x3 at dilation 12), the context module, a 1x1 classifier and x8 bilinear."""

    def __init__(self, params, *, context=True):
        super().__init__()
        self.p, self.context = params, context

    def conv(self, x, name, dilation=1, pad=None):
        p = self.p[name]
        k = _t(p["kernel"]).permute(3, 2, 0, 1)
        pad = dilation * (k.shape[-1] - 1) // 2 if pad is None else pad
        return F.conv2d(x, k, _t(p["bias"]), padding=pad, dilation=dilation)

    def forward(self, x):
        b = self.p["backbone"]
        for s, n in enumerate((2, 2, 3, 3, 3), start=1):
            for i in range(1, n + 1):
                w = b[f"conv{s}_{i}"]
                x = F.relu(F.conv2d(x, _t(w["kernel"]).permute(3, 2, 0, 1), _t(w["bias"]),
                                    padding=2 if s == 5 else 1, dilation=2 if s == 5 else 1))
            x = F.max_pool2d(x, 3, 1, 1) if s >= 4 else F.max_pool2d(x, 2, 2, ceil_mode=True)
        for name, dil in (("fc6", 12), ("fc7", 1)):
            w = b[name]
            k = _t(w["kernel"]).permute(3, 2, 0, 1)
            x = F.relu(F.conv2d(x, k, _t(w["bias"]), padding=dil * (k.shape[-1] // 2), dilation=dil))
        c = self.p["classifier"]
        if self.context:
            g = x.mean(dim=(2, 3), keepdim=True)
            g = _torch_l2norm(g, _t(c["global_norm"]["scale"])).expand_as(x)
            x = torch.cat([_torch_l2norm(x, _t(c["local_norm"]["scale"])), g], 1)
        s = c["score"]
        x = F.conv2d(x, _t(s["kernel"]).permute(3, 2, 0, 1), _t(s["bias"]))
        return F.interpolate(x, scale_factor=8, mode="bilinear", align_corners=False)[:, :, :H, :W]


def _with_random_scales(variables, rng):
    """Scales away from their constant init, so a swapped local/global scale shows."""
    def fill(path, leaf):
        return rng.uniform(0.5, 20.0, leaf.shape).astype(np.float32) if path[-1].key == "scale" else leaf
    return {**variables, "params": jax.tree_util.tree_map_with_path(fill, variables["params"])}


@pytest.fixture(scope="module")
def vgg_pair():
    """One tiny parsenet_vgg16, random weights, its jitted logits and input gradient (shared)."""
    rng = np.random.default_rng(27)
    model = create_model("parsenet_vgg16", num_classes=3, **TINY)
    variables = _with_random_scales(random_variables(model, (2, H, W, 3), rng), rng)

    @jax.jit
    def logits_and_grad(v, x, cot):  # one compile: the logits and d(sum(logits * cot)) / d images
        logits, vjp = jax.vjp(lambda x: model.apply(v, x)[LOGITS], x)
        return logits, vjp(cot)[0]

    return model, variables, logits_and_grad


def test_l2_normalize_is_the_formula_with_scale_init_10(np_rng):
    x = np_rng.normal(size=(2, 5, 7, 6)).astype(np.float32) * np_rng.uniform(0.01, 100, (2, 5, 7, 1))
    x[0, 0, 0] = 0.0  # an all-zero vector stays finite (eps inside the root)
    layer = L2Normalize()
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    np.testing.assert_array_equal(variables["params"]["scale"], np.full(6, 10.0, np.float32))
    scale = np_rng.uniform(0.5, 20, 6).astype(np.float32)
    v = {"params": {"scale": jnp.asarray(scale)}}
    cot = np_rng.normal(size=x.shape).astype(np.float32)
    got, vjp = jax.vjp(lambda x: layer.apply(v, x), jnp.asarray(x))
    want = x / np.sqrt((x.astype(np.float64) ** 2).sum(-1, keepdims=True) + EPS) * scale
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[0, 0, 0] == 0)
    np.testing.assert_allclose(np.sqrt((np.asarray(got[1]) ** 2 / scale ** 2).sum(-1)), 1.0, rtol=1e-5)
    xt = nchw(x).requires_grad_(True)
    _torch_l2norm(xt, _t(scale)).backward(nchw(cot))
    np.testing.assert_allclose(vjp(jnp.asarray(cot))[0], nhwc(xt.grad), rtol=1e-4, atol=1e-5)
    got16 = layer.apply(v, jnp.asarray(x, jnp.bfloat16))
    assert got16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got16, np.float32), want, rtol=2e-2, atol=2e-2)


def test_context_head_matches_torch_and_broadcasts_the_global_feature(np_rng):
    x = np_rng.normal(size=(2, 4, 5, 6)).astype(np.float32) + 1.0
    head = ParseNetContextHead(3)
    variables = head.init(jax.random.key(0), jnp.asarray(x))
    params = variables["params"]
    assert set(params) == {"local_norm", "global_norm", "score"}
    assert params["score"]["kernel"].shape == (1, 1, 12, 3)  # [local C | global C]
    scales = {k: np_rng.uniform(0.5, 20, 6).astype(np.float32) for k in ("local_norm", "global_norm")}
    params = {**params, **{k: {"scale": jnp.asarray(v)} for k, v in scales.items()}}
    got = head.apply({"params": params}, jnp.asarray(x))
    xt = nchw(x)
    g = _torch_l2norm(xt.mean((2, 3), keepdim=True), _t(scales["global_norm"])).expand_as(xt)
    feat = torch.cat([_torch_l2norm(xt, _t(scales["local_norm"])), g], 1)
    want = nhwc(F.conv2d(feat, _t(params["score"]["kernel"]).permute(3, 2, 0, 1), _t(params["score"]["bias"])))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Without context: the baseline's plain 1x1 classifier, no normalisation parameters.
    base = ParseNetContextHead(3, context=False)
    assert set(base.init(jax.random.key(0), jnp.asarray(x))["params"]) == {"score"}


def test_vgg16_logits_and_input_gradients_match_torch_reference(vgg_pair, np_rng):
    _, variables, logits_and_grad = vgg_pair
    assert set(variables["params"]) == {"backbone", "classifier"}
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    cot = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    got, grad = logits_and_grad(variables, x, cot)
    ref = TorchParseNetVGG16(jax.tree.map(np.asarray, variables["params"]))
    xt = nchw(x).requires_grad_(True)
    want = ref(xt)
    assert got.shape == (2, H, W, 3) and got.dtype == jnp.float32
    assert rel_err(got, nhwc(want.detach())) <= 1e-4
    want.backward(nchw(cot))
    assert rel_err(grad, nhwc(xt.grad)) <= 1e-4


def test_baseline_without_context_on_another_odd_size(np_rng):
    x = np_rng.normal(size=(1, 9, 17, 3)).astype(np.float32)  # fc7 2x3
    base = create_model("parsenet_vgg16", num_classes=3, context=False, **TINY)
    variables = random_variables(base, x.shape, np_rng)
    assert set(variables["params"]["classifier"]) == {"score"}
    got = jax.jit(base.apply)(variables, x)[LOGITS]
    ref = TorchParseNetVGG16(jax.tree.map(np.asarray, variables["params"]), context=False)
    with torch.no_grad():
        want = nhwc(ref(nchw(x)))[:, :9, :17]
    assert got.shape == (1, 9, 17, 3) and rel_err(got, want) <= 1e-4


def test_bfloat16_forward_is_close_to_float32(vgg_pair, np_rng):
    _, variables, logits_and_grad = vgg_pair
    bf16 = create_model("parsenet_vgg16", num_classes=3, dtype="bfloat16", **TINY)
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    out = jax.jit(bf16.apply)(variables, x)[LOGITS]
    assert out.dtype == jnp.float32 and out.shape == (2, H, W, 3) and np.isfinite(out).all()
    assert rel_err(out, logits_and_grad(variables, x, np.zeros(out.shape, np.float32))[0]) <= 5e-2


def test_resnet_variant_shapes_and_options(np_rng):
    model = create_model("parsenet_resnet18", num_classes=3, backbone_width=8, aux_loss=True)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 29, 31, 3)))
    assert set(shapes["params"]) == {"backbone", "classifier", "aux_classifier"}
    assert shapes["params"]["classifier"]["score"]["kernel"].shape == (1, 1, 128, 3)  # layer4 64 + global 64
    out = jax.eval_shape(model.apply, shapes, jnp.zeros((1, 29, 31, 3)))
    assert out[LOGITS].shape == (1, 29, 31, 3) and out["aux_logits"].shape == (1, 29, 31, 3)


def test_bad_overrides_raise():
    with pytest.raises(ValueError, match="output_stride=4"):
        create_model("parsenet_vgg16", num_classes=3, output_stride=4)
    with pytest.raises(ValueError, match="scale_init"):
        create_model("parsenet_vgg16", num_classes=3, scale_init=0.0)
    with pytest.raises(ValueError, match="atrous_rates"):
        create_model("parsenet_resnet18", num_classes=3, atrous_rates=(6,))
    with pytest.raises(ValueError, match=r"\(1, 33, 35\)"):
        create_model("parsenet_vgg16", num_classes=3, **TINY).init(jax.random.key(0), jnp.zeros((1, 33, 35)))
