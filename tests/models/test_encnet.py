"""EncNet (the Encoding layer, the Context Encoding Module, the head, the SE-loss through the
semantic task) against a torch transcription of the paper written here (explicit residuals
r_ik = x_i - c_k, torch's own BatchNorm1d/Linear/Conv2d), with the flax weights copied in."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from segjax.losses import class_presence
from segjax.models import AUX_LOGITS, LOGITS, create_model
from segjax.models.encnet import ContextEncoding, EncHead, Encoding
from segjax.models.outputs import SE_LOGITS
from segjax.tasks import semantic
from segjax.tasks.base import StepContext
from segjax.tasks.semantic import SemanticTask
from tests.models.tv_reference import nchw, nhwc, random_variables, rel_err

C, D, K, NC = 10, 6, 4, 3  # head input channels, encoded channels, codewords, classes
H, W = 33, 35  # layer4 5x5 at output stride 8
TINY = dict(backbone_width=4, head_channels=D, num_codes=K)


def _t(a):
    return torch.from_numpy(np.array(a, np.float32))


def torch_encoding(x, codewords, scale):
    """The paper's Encoding layer on NCHW: [N, D, h, w] -> e [N, K, D], residuals written out."""
    n, d = x.shape[:2]
    x = x.reshape(n, d, -1).transpose(1, 2)  # [N, L, D]
    r = x.unsqueeze(2) - codewords[None, None]  # [N, L, K, D]
    a = torch.softmax(scale.view(1, 1, -1) * r.pow(2).sum(-1), dim=2)  # scale = -s_k
    return (a.unsqueeze(-1) * r).sum(1)


def _bn2d(p, s):
    bn = tnn.BatchNorm2d(len(p["scale"]))
    _load_bn(bn, p, s)
    return bn


def _load_bn(bn, p, s):
    with torch.no_grad():
        bn.weight.copy_(_t(p["scale"]))
        bn.bias.copy_(_t(p["bias"]))
        bn.running_mean.copy_(_t(s["mean"]))
        bn.running_var.copy_(_t(s["var"]))


def _conv(p, padding=0):
    k = _t(p["kernel"]).permute(3, 2, 0, 1)
    conv = tnn.Conv2d(k.shape[1], k.shape[0], k.shape[2], padding=padding, bias="bias" in p)
    with torch.no_grad():
        conv.weight.copy_(k)
        if "bias" in p:
            conv.bias.copy_(_t(p["bias"]))
    return conv


def _linear(p):
    lin = tnn.Linear(*np.shape(p["kernel"]))
    with torch.no_grad():
        lin.weight.copy_(_t(p["kernel"]).T)
        lin.bias.copy_(_t(p["bias"]))
    return lin


class TorchContextEncoding(tnn.Module):
    """1x1 conv-BN-ReLU, Encoding, BatchNorm1d(K) + ReLU, mean over k, Linear + sigmoid,
    relu(x + x * gamma) (the reference code) or x * gamma (the paper's equation)."""

    def __init__(self, p, s, residual=True):
        super().__init__()
        self.project = tnn.Sequential(_conv(p["project"]["conv"]), _bn2d(p["project"]["bn"], s["project"]["bn"]),
                                      tnn.ReLU())
        self.codewords = tnn.Parameter(_t(p["encoding"]["codewords"]))
        self.scale = tnn.Parameter(_t(p["encoding"]["scale"]))
        self.codes_bn = tnn.BatchNorm1d(len(p["codes_bn"]["scale"]))
        _load_bn(self.codes_bn, p["codes_bn"], s["codes_bn"])
        self.fc = _linear(p["attention"])
        self.residual = residual

    def forward(self, x):
        codes = F.relu(self.codes_bn(torch_encoding(self.project(x), self.codewords, self.scale)))
        en = codes.mean(1)
        gamma = torch.sigmoid(self.fc(en))[:, :, None, None]
        return (F.relu(x + x * gamma) if self.residual else x * gamma), en


class TorchEncHead(tnn.Module):
    """3x3 conv-BN-ReLU to D, the context encoding module, (eval: no dropout) 1x1 classifier,
    and the SE Linear on the encoded vector."""

    def __init__(self, p, s):
        super().__init__()
        self.bottleneck = tnn.Sequential(_conv(p["bottleneck"]["conv"], 1),
                                         _bn2d(p["bottleneck"]["bn"], s["bottleneck"]["bn"]), tnn.ReLU())
        self.context = TorchContextEncoding(p["context"], s["context"])
        self.cls = _conv(p["cls"])
        self.se = _linear(p["se"])

    def forward(self, x):
        y, en = self.context(self.bottleneck(x))
        return self.cls(y), self.se(en)


def _fill_encoding(params, rng):
    """Codewords ~ N(0, 1) (on the features' scale) and scale ~ U(-0.5, -0.05) (negative, as the
    authors' init): the soft assignments are then neither one-hot nor uniform."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    for path in list(flat):
        if path[-2:] == ("encoding", "codewords"):
            flat[path] = rng.normal(size=flat[path].shape).astype(np.float32)
        elif path[-2:] == ("encoding", "scale"):
            flat[path] = rng.uniform(-0.5, -0.05, flat[path].shape).astype(np.float32)
    return flax.traverse_util.unflatten_dict(flat)


def _random(module, shape, rng):
    v = random_variables(module, shape, rng)
    return {**v, "params": _fill_encoding(v["params"], rng)}


@pytest.fixture(scope="module")
def head_pair():
    """One EncHead with random weights and its jitted eval outputs + input gradient (shared)."""
    rng = np.random.default_rng(2018)
    head = EncHead(NC, channels=D, num_codes=K)
    variables = _random(head, (2, 5, 6, C), rng)

    @jax.jit
    def outputs_and_grad(v, x, cot, se_cot):
        out, vjp = jax.vjp(lambda x: head.apply(v, x), x)
        return out, vjp((cot, se_cot))[0]

    return variables, outputs_and_grad


def test_encoding_layer_matches_torch_values_and_all_gradients(np_rng):
    x = np_rng.normal(size=(2, 4, 5, D)).astype(np.float32) * np_rng.uniform(0.5, 2.0, (2, 1, 1, D))
    layer = Encoding(K)
    params = {"codewords": np_rng.normal(size=(K, D)).astype(np.float32),
              "scale": np_rng.uniform(-0.5, -0.05, K).astype(np.float32)}
    cot = np_rng.normal(size=(2, K, D)).astype(np.float32)
    @jax.jit
    def run(p, x, cot):
        got, vjp = jax.vjp(lambda p, x: layer.apply({"params": p}, x), p, x)
        return got, *vjp(cot)

    got, g_params, g_x = run(params, jnp.asarray(x), jnp.asarray(cot))
    xt = nchw(x).requires_grad_(True)
    cw = _t(params["codewords"]).requires_grad_(True)
    sc = _t(params["scale"]).requires_grad_(True)
    want = torch_encoding(xt, cw, sc)
    assert got.shape == (2, K, D) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-5)
    want.backward(_t(cot))
    np.testing.assert_allclose(g_x, nhwc(xt.grad), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_params["codewords"], cw.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_params["scale"], sc.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_encoding_init_is_the_authors():
    shapes = jax.jit(Encoding(32).init)(jax.random.key(1), jnp.zeros((1, 3, 3, 512)))["params"]
    cw, scale = np.asarray(shapes["codewords"]), np.asarray(shapes["scale"])
    std = 1.0 / np.sqrt(32 * 512)
    assert cw.shape == (32, 512) and np.abs(cw).max() <= std and np.abs(cw).max() > 0.95 * std
    assert abs(cw.mean()) < 0.05 * std
    assert scale.shape == (32,) and scale.max() <= 0 and scale.min() >= -1 and scale.std() > 0.15


@pytest.mark.parametrize("residual", [True, False])
def test_context_encoding_in_training_matches_torch_with_running_statistics(np_rng, residual):
    """Batch statistics (BatchNorm2d of the projection, BatchNorm1d over the K codes), outputs,
    encoded vector, input gradients and the updated running statistics."""
    x = np.abs(np_rng.normal(size=(3, 4, 5, D))).astype(np.float32)  # post-ReLU-like
    module = ContextEncoding(K, residual_attention=residual)
    v = _random(module, x.shape, np_rng)
    cot = np_rng.normal(size=x.shape).astype(np.float32)
    en_cot = np_rng.normal(size=(3, D)).astype(np.float32)

    @jax.jit
    def run(x, cots):  # one compile: outputs, new statistics and the input gradient
        outs, vjp, stats = jax.vjp(lambda x: module.apply(v, x, train=True, mutable=["batch_stats"]), x,
                                   has_aux=True)
        return outs, stats, vjp(cots)[0]

    (out, en), stats, g_x = run(jnp.asarray(x), (jnp.asarray(cot), jnp.asarray(en_cot)))
    ref = TorchContextEncoding(jax.tree.map(np.asarray, v["params"]), jax.tree.map(np.asarray, v["batch_stats"]),
                               residual).train()
    xt = nchw(x).requires_grad_(True)
    want, want_en = ref(xt)
    assert rel_err(out, nhwc(want)) <= 1e-5 and rel_err(en, want_en.detach().numpy()) <= 1e-5
    torch.autograd.backward([want, want_en], [nchw(cot), _t(en_cot)])
    assert rel_err(g_x, nhwc(xt.grad)) <= 1e-4
    new = stats["batch_stats"]
    for name, bn in (("codes_bn", ref.codes_bn), ("project", ref.project[1])):
        s = new[name] if name == "codes_bn" else new[name]["bn"]
        np.testing.assert_allclose(s["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(s["var"], bn.running_var.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_head_eval_logits_se_logits_and_input_gradient_match_torch(head_pair, np_rng):
    variables, outputs_and_grad = head_pair
    x = np_rng.normal(size=(2, 5, 6, C)).astype(np.float32)
    cot = np_rng.normal(size=(2, 5, 6, NC)).astype(np.float32)
    se_cot = np_rng.normal(size=(2, NC)).astype(np.float32)
    (logits, se), g_x = outputs_and_grad(variables, x, cot, se_cot)
    ref = TorchEncHead(jax.tree.map(np.asarray, variables["params"]),
                       jax.tree.map(np.asarray, variables["batch_stats"])).eval()
    xt = nchw(x).requires_grad_(True)
    want, want_se = ref(xt)
    assert logits.shape == (2, 5, 6, NC) and se.shape == (2, NC)
    assert rel_err(logits, nhwc(want)) <= 1e-5 and rel_err(se, want_se.detach().numpy()) <= 1e-5
    torch.autograd.backward([want, want_se], [nchw(cot), _t(se_cot)])
    assert rel_err(g_x, nhwc(xt.grad)) <= 1e-4


def test_model_outputs_are_the_head_on_layer4_resized(np_rng):
    """encnet_resnet18 (tiny): logits = bilinear resize (align_corners=False) of the torch head on
    the backbone's layer4; se_logits from the same head; aux logits present."""
    model = create_model("encnet_resnet18", num_classes=NC, **TINY)
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    v = _random(model, x.shape, np_rng)
    out, inter = jax.jit(lambda v, x: model.apply(
        v, x, capture_intermediates=lambda m, _: m.name == "backbone", mutable=["intermediates"]))(v, x)
    layer4 = np.asarray(inter["intermediates"]["backbone"]["__call__"][0]["layer4"])
    assert layer4.shape[1:3] == (5, 5)  # output stride 8
    p, s = (jax.tree.map(np.asarray, v[c]["classifier"]) for c in ("params", "batch_stats"))
    with torch.no_grad():
        want, want_se = TorchEncHead(p, s).eval()(nchw(layer4))
        want = F.interpolate(want, (H, W), mode="bilinear", align_corners=False)
    assert set(out) == {LOGITS, AUX_LOGITS, SE_LOGITS} and out[AUX_LOGITS].shape == (2, H, W, NC)
    assert rel_err(out[LOGITS], nhwc(want)) <= 1e-5
    assert rel_err(out[SE_LOGITS], want_se.numpy()) <= 1e-5


def _presence_numpy(labels, k):
    out = np.zeros((labels.shape[0], k), np.float32)
    for n, lab in enumerate(labels):
        for c in np.unique(lab):
            if 0 <= c < k:
                out[n, c] = 1.0
    return out


def _loss_batch(rng, n=8):
    labels = rng.integers(0, NC, (n, 6, 7)).astype(np.int32)
    labels[0] = 255  # all ignored: presence all zero, still counted
    labels[1, :5] = 255  # uneven ignored pixels over the devices
    labels[2][labels[2] == 1] = 0  # class 1 absent
    labels[3] = 2  # one class only
    outs = {LOGITS: rng.normal(size=(n, 6, 7, NC)).astype(np.float32),
            AUX_LOGITS: rng.normal(size=(n, 6, 7, NC)).astype(np.float32),
            SE_LOGITS: (3 * rng.normal(size=(n, NC))).astype(np.float32)}
    return outs, {"image": np.zeros((n, 6, 7, 3), np.float32), "label": labels}


def _torch_total(outs, labels, aux_w, se_w):
    lab = torch.from_numpy(labels).long()
    ce = lambda z: F.cross_entropy(nchw(z), lab, ignore_index=255)  # noqa: E731
    se = F.binary_cross_entropy_with_logits(torch.from_numpy(outs[SE_LOGITS]),
                                            torch.from_numpy(_presence_numpy(labels, NC)))
    return float(ce(outs[LOGITS]) + aux_w * ce(outs[AUX_LOGITS]) + se_w * se)


def test_class_presence_is_histc_of_the_valid_labels(np_rng):
    _, batch = _loss_batch(np_rng)
    labels = batch["label"]
    labels[4, 0, 0] = 7  # out of range: not counted (as torch.histc with max = K - 1)
    got = np.asarray(class_presence(jnp.asarray(labels), NC))
    want = _presence_numpy(labels, NC)
    np.testing.assert_array_equal(got, want)
    assert want[0].sum() == 0 and want[2, 1] == 0 and list(want[3]) == [0, 0, 1]


def test_semantic_loss_adds_se_weight_times_bce_with_logits(np_rng):
    outs, batch = _loss_batch(np_rng)
    ctx = StepContext(rng=jax.random.key(0))
    task = SemanticTask(num_classes=NC, ignore_label=255, aux_weight=0.4, se_weight=0.2)
    total, count = task.loss(outs, batch, ctx)
    np.testing.assert_allclose(float(total) / float(count), _torch_total(outs, batch["label"], 0.4, 0.2), rtol=1e-5)
    # se_weight 0 (the default) or a model without "se_logits": exactly the loss without the term.
    plain = SemanticTask(num_classes=NC, ignore_label=255, aux_weight=0.4)
    assert plain.se_weight == 0.0
    base = plain.loss({k: outs[k] for k in (LOGITS, AUX_LOGITS)}, batch, ctx)
    for pair in (plain.loss(outs, batch, ctx), task.loss({k: outs[k] for k in (LOGITS, AUX_LOGITS)}, batch, ctx)):
        assert float(pair[0]) == float(base[0]) and float(pair[1]) == float(base[1])
    np.testing.assert_allclose(float(base[0]) / float(base[1]), _torch_total(outs, batch["label"], 0.4, 0.0),
                               rtol=1e-5)


def test_se_term_is_the_same_on_four_devices(np_rng):
    """pmap over 4 devices (ignored pixels spread unevenly): global sum / global count equals the
    one-device value and torch's."""
    outs, batch = _loss_batch(np_rng)
    task = SemanticTask(num_classes=NC, ignore_label=255, aux_weight=0.4, se_weight=0.2)

    def sharded(outs, batch):
        total, count = task.loss(outs, batch, StepContext(rng=jax.random.key(0), axis_name="d"))
        return jax.lax.psum(total, "d") / jax.lax.psum(count, "d")

    split = lambda t: jax.tree.map(lambda a: a.reshape((4, -1) + a.shape[1:]), t)  # noqa: E731
    got = jax.pmap(sharded, axis_name="d", devices=jax.devices()[:4])(split(outs), split(batch))
    want = _torch_total(outs, batch["label"], 0.4, 0.2)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_se_weight_is_declared_zero_by_default_with_a_range():
    assert semantic.defaults().loss.se_weight == 0.0 and semantic.RANGES["loss.se_weight"] == "[0, inf)"


def test_variants_defaults_and_bad_overrides():
    model = create_model("encnet_resnet50", num_classes=19)
    assert (model.num_codes, model.head_channels, model.output_stride, model.se_loss, model.aux_loss,
            model.residual_attention) == (32, 512, 8, True, True, True)
    assert create_model("encnet_resnet101", num_classes=19).backbone_depth == 101
    no_se = create_model("encnet_resnet18", num_classes=NC, se_loss=False, aux_loss=False, **TINY)
    out = jax.eval_shape(no_se.init_with_output, jax.random.key(0), jnp.zeros((1, 17, 19, 3)))[0]
    assert set(out) == {LOGITS} and out[LOGITS].shape == (1, 17, 19, NC)
    with pytest.raises(ValueError, match="num_codes"):
        create_model("encnet_resnet18", num_classes=NC, num_codes=0)
    with pytest.raises(ValueError, match="output_stride"):
        create_model("encnet_resnet18", num_classes=NC, output_stride=4)
    with pytest.raises(ValueError, match="atrous_rates"):
        create_model("encnet_resnet18", num_classes=NC, atrous_rates=(6,))
