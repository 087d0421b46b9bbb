"""SegNet and DeconvNet against torch re-implementations with the same weights (max_unpool2d switches)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax.models import LOGITS, create_model
from segjax.models.backbones.vgg import VGG16
from segjax.models.deconvnet import unpool
from tests.models.tv_reference import nchw, nhwc


@pytest.fixture(autouse=True)
def _fast_init_compile():
    """jax's default partitionable threefry makes compiling `init` ~8x slower on CPU (measured)."""
    with jax.threefry_partitionable(False):
        yield


WIDTH, FC = 4, 8
H, W = 19, 23  # 19 -> 10 -> 5 -> 3 -> 2 -> 1 and 23 -> 12 -> 6 -> 3 -> 2 -> 1: odd sizes at every stage
STAGES = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))
SEGNET_DECODER = {5: (8, 8, 8), 4: (8, 8, 4), 3: (4, 4, 2), 2: (2, 1), 1: (1,)}


def _random_variables(model, np_rng):
    """Random params and positive-variance BN statistics with the shapes `model.init` would give."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, H, W, 3)))
    params = jax.tree.map(lambda s: jnp.asarray(np_rng.normal(0, 0.3, s.shape), jnp.float32), shapes["params"])
    stats = jax.tree.map(lambda s: jnp.asarray(np_rng.uniform(0.5, 1.5, s.shape), jnp.float32), shapes["batch_stats"])
    return {"params": params, "batch_stats": stats}


def _to_torch(tree, requires_grad=False):
    return jax.tree.map(lambda a: torch.tensor(np.asarray(a), requires_grad=requires_grad), tree)


class _TorchRef:
    """Functional torch SegNet/DeconvNet on segjax-named weights (NCHW tensors)."""

    def __init__(self, p, stats, train):
        self.p, self.stats, self.train = p, stats, train

    def bn_relu(self, x, name):
        p, s = self.p[name], self.stats[name]
        return F.relu(F.batch_norm(x, s["mean"], s["var"], p["scale"], p["bias"], training=self.train, eps=1e-5))

    def conv(self, x, p, pad):
        return F.conv2d(x, p["kernel"].permute(3, 2, 0, 1), p["bias"], padding=pad)

    def deconv(self, x, p, pad):  # segjax [kh, kw, out, in] -> torch ConvTranspose2d weight [in, out, kh, kw]
        return F.conv_transpose2d(x, p["kernel"].permute(3, 2, 0, 1), p["bias"], padding=pad)

    def encode(self, x, fc):
        enc, self.feats = self.p["encoder"], {}
        for s, (n, _) in enumerate(STAGES, start=1):
            for i in range(1, n + 1):
                x = self.conv(x, enc[f"conv{s}_{i}"], 1)
                p, st = enc[f"bn{s}_{i}"], self.stats["encoder"][f"bn{s}_{i}"]
                x = F.relu(F.batch_norm(x, st["mean"], st["var"], p["scale"], p["bias"], training=self.train, eps=1e-5))
            self.feats[s] = x
            x, self.feats[f"idx{s}"] = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
        if fc:
            x = F.relu(self.conv(x, enc["fc6"], 3))
            x = F.relu(self.conv(x, enc["fc7"], 0))
        return x

    def unpool(self, x, s, mode):
        size = self.feats[s].shape[2:]
        if mode == "max":
            return F.max_unpool2d(x, self.feats[f"idx{s}"], 2, 2, output_size=size)
        if mode == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")[:, :, : size[0], : size[1]]
        z = x.new_zeros(*x.shape[:2], 2 * x.shape[2], 2 * x.shape[3])
        z[:, :, ::2, ::2] = x
        return z[:, :, : size[0], : size[1]]

    def segnet(self, x, mode):
        x = self.encode(x, fc=False)
        for s in (5, 4, 3, 2, 1):
            x = self.unpool(x, s, mode)
            n = len(SEGNET_DECODER[s])
            for i in range(n):
                k = n + (s == 1) - i
                x = self.bn_relu(self.conv(x, self.p[f"conv{s}_{k}_D"], 1), f"bn{s}_{k}_D")
        return self.conv(x, self.p["classifier"], 1)

    def deconvnet(self, x, mode):
        x = self.encode(x, fc=True)
        x = self.bn_relu(self.deconv(x, self.p["deconv6"], 3), "debn6")
        for s in (5, 4, 3, 2, 1):
            x = self.unpool(x, s, mode)
            for i in range(1, len(SEGNET_DECODER[s]) + (s == 1) + 1):
                x = self.bn_relu(self.deconv(x, self.p[f"deconv{s}_{i}"], 1), f"debn{s}_{i}")
        return self.conv(x, self.p["score"], 0)


@pytest.mark.parametrize("name, unpooling", [("segnet", "max"), ("segnet", "nearest"), ("segnet", "bed_of_nails"),
                                             ("deconvnet", "max"), ("deconvnet", "nearest")])
def test_eval_forward_matches_torch(np_rng, name, unpooling):
    extra = {"fc_dim": FC} if name == "deconvnet" else {}
    model = create_model(name, num_classes=3, width=WIDTH, unpooling=unpooling, **extra)
    variables = _random_variables(model, np_rng)
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    got = jax.jit(model.apply)(variables, jnp.asarray(x))[LOGITS]
    ref = _TorchRef(_to_torch(variables["params"]), _to_torch(variables["batch_stats"]), train=False)
    with torch.no_grad():
        want = nhwc(getattr(ref, name)(nchw(x), unpooling))
    assert got.shape == (2, H, W, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_segnet_train_gradients_and_batch_stats_match_torch(np_rng):
    model = create_model("segnet", num_classes=3, width=WIDTH)
    variables = _random_variables(model, np_rng)
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    cot = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)

    @jax.jit
    def loss_fn(params, x):
        out, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                               mutable=["batch_stats"])
        return jnp.sum(out[LOGITS] * cot), upd

    (loss, upd), (g_params, g_x) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        variables["params"], jnp.asarray(x))
    tp, ts = _to_torch(variables["params"], requires_grad=True), _to_torch(variables["batch_stats"])
    xt = nchw(x).requires_grad_(True)
    want = (_TorchRef(tp, ts, train=True).segnet(xt, "max") * nchw(cot)).sum()
    want.backward()
    np.testing.assert_allclose(loss, want.item(), rtol=1e-4)
    np.testing.assert_allclose(g_x, nhwc(xt.grad), rtol=1e-3, atol=1e-3 * np.abs(nhwc(xt.grad)).max())
    for path in (("encoder", "conv1_1"), ("encoder", "conv5_3"), ("conv5_3_D",), ("conv1_2_D",), ("classifier",)):
        g, t = g_params, tp
        for k in path:
            g, t = g[k], t[k]
        want_g = t["kernel"].grad.numpy()
        np.testing.assert_allclose(g["kernel"], want_g, rtol=1e-3, atol=1e-3 * np.abs(want_g).max(), err_msg=str(path))
    for path in (("encoder", "bn1_1"), ("bn5_3_D",), ("bn1_2_D",)):
        u, t = upd["batch_stats"], ts
        for k in path:
            u, t = u[k], t[k]
        for stat in ("mean", "var"):
            np.testing.assert_allclose(u[stat], t[stat].numpy(), rtol=1e-4, atol=1e-5)


def test_unpool_puts_values_at_encoder_argmax(np_rng):
    """`unpool` of the pooled maps equals torch's max_unpool2d with ceil-mode max_pool2d indices."""
    encoder = VGG16(width=2, include_fc=False, batch_norm=True, keep_pool_indices=True)
    x = jnp.asarray(np_rng.normal(size=(1, H, W, 3)), jnp.float32)
    feats = jax.jit(encoder.apply)(_random_variables(encoder, np_rng), x)
    for s in (1, 3, 5):
        conv = np.asarray(feats[f"conv{s}"])
        pooled, idx = F.max_pool2d(nchw(conv), 2, 2, ceil_mode=True, return_indices=True)
        np.testing.assert_array_equal(feats[f"pool{s}"], nhwc(pooled))
        values = np_rng.normal(size=feats[f"pool{s}"].shape).astype(np.float32)  # decoder activations
        want = nhwc(F.max_unpool2d(nchw(values), idx, 2, 2, output_size=conv.shape[1:3]))
        got = unpool(jnp.asarray(values), feats, s, "max")
        np.testing.assert_array_equal(got, want)
        assert np.count_nonzero(want) == values.size  # one value per window, at its argmax


@pytest.mark.parametrize("name", ["segnet", "deconvnet"])
def test_bad_unpooling_and_input_raise(name):
    with pytest.raises(ValueError, match="unpooling='bilinear'"):
        create_model(name, num_classes=2, width=2, unpooling="bilinear")
    with pytest.raises(ValueError, match=r"\(8, 8, 3\)"):
        create_model(name, num_classes=2, width=2).init(jax.random.key(0), jnp.zeros((8, 8, 3)))
