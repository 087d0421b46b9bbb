"""ReNet / ReSeg against independent references: the GRU sweep against a NumPy loop of torch.nn.GRU's
equations, the ReNet layer and the whole reseg_vgg16 against torch transcriptions written here from
the papers (patches cut out one by one, `torch.nn.GRU(bidirectional=True)` run over every column and
then every row, torch's own convs / ceil-mode pools / transposed convs), with the flax weights copied
in: values and gradients (input and every parameter) on random odd-sized inputs."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax.models import LOGITS, create_model
from segjax.models.reseg import RESEG_CAMVID, ReNetLayer, gru_sweep, split_stride
from tests.models.tv_reference import nchw, nhwc, rel_err

_GATES = ("input_kernel", "input_bias", "hidden_kernel", "hidden_bias")
_TORCH = {"input_kernel": "weight_ih_l0", "input_bias": "bias_ih_l0", "hidden_kernel": "weight_hh_l0",
          "hidden_bias": "bias_hh_l0"}


def _t(a):
    return torch.from_numpy(np.array(a, np.float32))


def _compiled(fun, *args):
    """jit at XLA optimisation level 0 (a third less compile time; the inputs are tiny)."""
    return jax.jit(fun).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def _random_params(module, shape, rng):
    """Random parameters with init's shapes (no init compile): GRU weights U(-0.7, 0.7) (gates away
    from saturation, but far from the identity), conv kernels He-normal, biases N(0, 0.3)."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape, jnp.float32))["params"]
    out = {}
    for path, leaf in flax.traverse_util.flatten_dict(shapes).items():
        if path[-1].endswith(_GATES):
            v = rng.uniform(-0.7, 0.7, leaf.shape)
        elif path[-1] == "kernel":
            v = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
        else:
            v = rng.normal(0.0, 0.3, leaf.shape)
        out[path] = v.astype(np.float32)
    return flax.traverse_util.unflatten_dict(out)


def torch_bigru(p):
    """`torch.nn.GRU(bidirectional=True)` holding the flax `BiGRU` parameters `p`."""
    hidden, d = p["forward_hidden_kernel"].shape[0], p["forward_input_kernel"].shape[0]
    gru = torch.nn.GRU(d, hidden, bidirectional=True)
    with torch.no_grad():
        for direction, suffix in (("forward", ""), ("backward", "_reverse")):
            for name in _GATES:
                value = _t(p[f"{direction}_{name}"])
                getattr(gru, _TORCH[name] + suffix).copy_(value.T if value.ndim == 2 else value)
    return gru


def _bigru_grads(gru):
    """The torch GRU's parameter gradients under the flax names."""
    out = {}
    for direction, suffix in (("forward", ""), ("backward", "_reverse")):
        for name in _GATES:
            g = getattr(gru, _TORCH[name] + suffix).grad.numpy()
            out[f"{direction}_{name}"] = g.T if g.ndim == 2 else g
    return out


def torch_renet(x, gru_v, gru_h, patch):
    """ReNet's layer (Eqs. 1-2) on NCHW `x`, returned NHWC [N, rows, cols, 2 * hidden]: zero-pad to a
    multiple of the patch, cut the patches one by one (each flattened as row, column, channel),
    run `gru_v` down every column of patches, then `gru_h` along every row of its output."""
    hp, wp = patch
    x = F.pad(x, (0, -x.shape[3] % wp, 0, -x.shape[2] % hp))
    n, rows, cols = x.shape[0], x.shape[2] // hp, x.shape[3] // wp
    p = [[x[:, :, i * hp:(i + 1) * hp, j * wp:(j + 1) * wp].permute(0, 2, 3, 1).reshape(n, -1)
          for j in range(cols)] for i in range(rows)]
    v = [[None] * cols for _ in range(rows)]
    for j in range(cols):  # vertical: the sequence is column j read top to bottom, batch = images
        out = gru_v(torch.stack([p[i][j] for i in range(rows)]))[0]
        for i in range(rows):
            v[i][j] = out[i]
    y = []
    for i in range(rows):  # horizontal: row i of the vertical features, left to right
        y.append(gru_h(torch.stack(v[i]))[0].transpose(0, 1))  # [N, cols, 2h]
    return torch.stack(y, 1)


def _torch_gru_step_numpy(x, h, p):
    """One step of torch.nn.GRU's equations in NumPy, written from its documentation."""
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    wi, bi, wh, bh = (np.asarray(p[k], np.float64) for k in _GATES)
    (ir, iz, in_), (hr, hz, hn) = np.split(x @ wi + bi, 3, -1), np.split(h @ wh + bh, 3, -1)
    r, z = sig(ir + hr), sig(iz + hz)
    n = np.tanh(in_ + r * hn)
    return (1 - z) * n + z * h


def test_gru_sweep_is_a_loop_of_torch_gru_equations_in_numpy(np_rng):
    """3 steps of two independent GRUs (a leading axis G = 2, as BiGRU's two directions)."""
    t, g, b, d, hidden = 3, 2, 2, 4, 5
    p = {k: np_rng.uniform(-0.8, 0.8, (g, *s)).astype(np.float32) for k, s in zip(
        _GATES, ((d, 3 * hidden), (3 * hidden,), (hidden, 3 * hidden), (3 * hidden,)))}
    x = np_rng.normal(size=(t, g, b, d)).astype(np.float32)
    gates_x = np.einsum("tgbd,gdk->tgbk", x, p["input_kernel"]) + p["input_bias"][:, None]
    got = gru_sweep(jnp.asarray(gates_x), p["hidden_kernel"], p["hidden_bias"])
    want = np.zeros((t, g, b, hidden))
    for k in range(g):
        h = np.zeros((b, hidden))
        for step in range(t):
            h = _torch_gru_step_numpy(x[step, k].astype(np.float64), h, {n: v[k] for n, v in p.items()})
            want[step, k] = h
    assert np.abs(want).max() > 0.1  # a non-trivial state
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_renet_layer_matches_torch_gru_values_and_all_gradients(np_rng):
    """7 x 7 map, 2 x 3 patches: padded to 8 x 9, 4 x 3 patches of 2 * 3 * 3 values."""
    layer, patch = ReNetLayer(hidden=4, patch=(2, 3)), (2, 3)
    x = np_rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    params = _random_params(layer, x.shape, np_rng)
    cot = np_rng.normal(size=(2, 4, 3, 8)).astype(np.float32)

    def run(params, x, cot):
        out, vjp = jax.vjp(lambda p, x: layer.apply({"params": p}, x), params, x)
        return out, *vjp(cot)

    got, g_params, g_x = _compiled(run, params, x, cot)(params, x, cot)
    gru_v, gru_h = torch_bigru(params["vertical"]), torch_bigru(params["horizontal"])
    xt = nchw(x).requires_grad_(True)
    want = torch_renet(xt, gru_v, gru_h, patch)
    assert got.shape == (2, 4, 3, 8)
    assert rel_err(got, want.detach().numpy()) <= 1e-5
    want.backward(_t(cot))
    assert rel_err(g_x, nhwc(xt.grad)) <= 1e-4
    for name, gru in (("vertical", gru_v), ("horizontal", gru_h)):
        for k, g in _bigru_grads(gru).items():
            assert rel_err(g_params[name][k], g) <= 1e-4, (name, k)


def torch_reseg(params, tp, x, patch, num_renet_layers, vgg_stages):
    """ReSeg (Fig. 1) on NCHW `x`, NHWC logits: VGG-16 convs + ReLU with 2x2 ceil-mode pools between
    the stages, the ReNet layers, ConvTranspose2d (kernel = stride) + ReLU, 1x1 conv, crop. `tp`:
    the conv and upsampling weights as torch leaf tensors; the GRUs are built from `params`."""
    h, w = x.shape[-2:]
    b, grus = tp["backbone"], []
    for s, n in enumerate((2, 2, 3, 3, 3)[:vgg_stages], start=1):
        if s > 1:
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        for i in range(1, n + 1):
            p = b[f"conv{s}_{i}"]
            x = F.relu(F.conv2d(x, p["kernel"].permute(3, 2, 0, 1), p["bias"], padding=1))
    for i in range(num_renet_layers):
        grus += [torch_bigru(params[f"renet_{i}"]["vertical"]), torch_bigru(params[f"renet_{i}"]["horizontal"])]
        x = torch_renet(x, grus[-2], grus[-1], patch).permute(0, 3, 1, 2)
    i = 0
    while f"upsample_{i}" in tp:
        p = tp[f"upsample_{i}"]
        k = p["kernel"].permute(3, 2, 0, 1)  # [kh, kw, out, in] -> torch's [in, out, kh, kw]
        x = F.relu(F.conv_transpose2d(x, k, p["bias"], stride=k.shape[-2:]))
        i += 1
    p = tp["classifier"]
    x = F.conv2d(x, p["kernel"].permute(3, 2, 0, 1), p["bias"])
    return x[:, :, :h, :w].permute(0, 2, 3, 1), grus


def test_reseg_vgg16_matches_torch_transcription_values_and_gradients(np_rng):
    """17 x 13 image: conv3_3 5 x 4; ReNet 1 with 2 x 1 patches pads it to 6 x 4 -> 3 x 4, ReNet 2
    pads to 4 x 4 -> 2 x 4; transposed convs of strides (4, 2) twice -> 32 x 16, cropped to 17 x 13."""
    patch, tiny = (2, 1), dict(backbone_width=2, hidden=3, upsample_filters=(4, 3))
    model = create_model("reseg_vgg16", num_classes=3, patch=patch, **tiny)
    assert model.upsample_strides() == [(4, 2), (4, 2)]
    x = np_rng.normal(size=(2, 17, 13, 3)).astype(np.float32)
    params = _random_params(model, x.shape, np_rng)
    cot = np_rng.normal(size=(2, 17, 13, 3)).astype(np.float32)

    def run(params, x, cot):
        out, vjp = jax.vjp(lambda p, x: model.apply({"params": p}, x)[LOGITS], params, x)
        return out, *vjp(cot)

    got, g_params, g_x = _compiled(run, params, x, cot)(params, x, cot)
    tp = {k: jax.tree.map(lambda a: _t(a).requires_grad_(True), v) for k, v in params.items()
          if not k.startswith("renet")}
    xt = nchw(x).requires_grad_(True)
    want, grus = torch_reseg(params, tp, xt, patch, 2, 3)
    assert got.shape == (2, 17, 13, 3)
    assert rel_err(got, want.detach().numpy()) <= 1e-5
    want.backward(_t(cot))
    assert rel_err(g_x, nhwc(xt.grad)) <= 1e-4
    for name in ("conv1_1", "conv3_3"):
        for k in ("kernel", "bias"):
            assert rel_err(g_params["backbone"][name][k], tp["backbone"][name][k].grad.numpy()) <= 1e-4, (name, k)
    for layer in ("upsample_0", "upsample_1", "classifier"):
        for k in ("kernel", "bias"):
            assert rel_err(g_params[layer][k], tp[layer][k].grad.numpy()) <= 1e-4, (layer, k)
    for i, name in ((0, "vertical"), (1, "horizontal"), (2, "vertical"), (3, "horizontal")):
        for k, g in _bigru_grads(grus[i]).items():
            assert rel_err(g_params[f"renet_{i // 2}"][name][k], g) <= 1e-4, (i, name, k)


def test_defaults_are_the_authors_camvid_model_and_any_size_works():
    model = create_model("reseg_vgg16", num_classes=11)
    assert (model.vgg_stages, model.num_renet_layers, model.hidden, model.patch, tuple(model.upsample_filters),
            model.backbone_width) == (3, 2, 100, 1, (50, 50), 64)
    assert RESEG_CAMVID["hidden"] == 100 and model.upsample_strides() == [(2, 2), (2, 2)]
    out, v = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.zeros((1, 37, 45, 3)))
    assert out[LOGITS].shape == (1, 37, 45, 11) and out[LOGITS].dtype == jnp.float32
    renet = v["params"]["renet_0"]["vertical"]
    assert renet["forward_input_kernel"].shape == (256, 300) and renet["backward_hidden_kernel"].shape == (100, 300)
    assert v["params"]["upsample_1"]["kernel"].shape == (2, 2, 50, 50)
    assert split_stride(16, 2) == [4, 4] and split_stride(16, 3) == [4, 2, 2] and split_stride(1, 2) == [1, 1]
    assert split_stride(12, 2) == [4, 3]


@pytest.mark.parametrize("override, match", [
    (dict(hidden=0), "hidden"), (dict(vgg_stages=6), "vgg_stages"), (dict(num_renet_layers=0), "num_renet_layers"),
    (dict(upsample_filters=()), "upsample_filters"), (dict(patch=0), "patch"), (dict(backbone_width=0), "backbone_width"),
])
def test_bad_options_fail_by_name(override, match):
    with pytest.raises(ValueError, match=match):
        create_model("reseg_vgg16", num_classes=3, **override)


def test_bad_images_fail_by_name():
    model = create_model("reseg_vgg16", num_classes=3, backbone_width=2, hidden=2)
    with pytest.raises(ValueError, match=r"reseg_vgg16 expects images \[N, H, W, 3\]"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 9, 9, 1)))
