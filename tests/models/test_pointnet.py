"""PointNet segmentation against a torch transcription of the paper's Fig. 2 written here (Conv1d 1x1
shared MLPs + BatchNorm1d, T-Nets of Conv1d (64, 128, 1024), max pool, Linear (512, 256) and a Linear
to k*k plus the identity, the ShapeNet-part one-hot joined to the global feature), with the flax
weights copied in: logits, both transforms, input and parameter gradients in train mode, eval-mode
outputs with random running statistics; permutation equivariance; Eq. 2's regulariser."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from segjax.models import create_model
from segjax.models.pointnet import FEATURE_TRANSFORM, INPUT_TRANSFORM, feature_transform_regularizer
from tests.models.tv_reference import rel_err

N, P, IN, K, CATEGORIES, WIDTH = 8, 13, 5, 6, 4, 8  # xyz + 2 features; width 8: hidden layers / 8
# The reference runs in float64. Train-mode BatchNorm over a few shapes in the T-Nets' dense layers
# amplifies float32 rounding (measured 2e-5 at 8 shapes, 1e-3 at 3); eval mode 1e-6.
TOL, TRAIN_TOL = 1e-5, 2e-4


def _w(c):
    return c * WIDTH // 64


class TorchPointNetSeg(tnn.Module):
    """Qi et al. 2017, Fig. 2 (+ the ShapeNet-part one-hot), channels-first like pointnet.pytorch;
    layers keyed by the flax parameter path joined with ':'."""

    def __init__(self, in_channels, num_classes, num_categories):
        super().__init__()
        layers, self.num_categories = {}, num_categories

        def mlp(prefix, cin, widths, conv=True, first=1):
            for i, c in enumerate(widths, start=first):
                layers[f"{prefix}{i}"] = tnn.Conv1d(cin, c, 1) if conv else tnn.Linear(cin, c)
                layers[f"{prefix}{i}_bn"] = tnn.BatchNorm1d(c)
                cin = c
            return cin

        def tnet(prefix, k):
            cin = mlp(f"{prefix}:mlp", k, [_w(64), _w(128), _w(1024)])
            cin = mlp(f"{prefix}:fc", cin, [_w(512), _w(256)], conv=False)
            layers[f"{prefix}:transform"] = tnn.Linear(cin, k * k)

        tnet("input_tnet", 3)
        mlp("mlp", in_channels, [_w(64), _w(64)])
        tnet("feature_tnet", _w(64))
        mlp("mlp", _w(64), [_w(64), _w(128), _w(1024)], first=3)
        mlp("seg", _w(64) + _w(1024) + num_categories, [_w(512), _w(256), _w(128), _w(128)])
        layers["classifier"] = tnn.Conv1d(_w(128), num_classes, 1)
        self.layers = tnn.ModuleDict(layers)

    def _mlp(self, x, prefix, indices):
        for i in indices:
            x = torch.relu(self.layers[f"{prefix}{i}_bn"](self.layers[f"{prefix}{i}"](x)))
        return x

    def _tnet(self, x, prefix):  # x [N, k, P] -> A [N, k, k]
        k = x.shape[1]
        x = self._mlp(x, f"{prefix}:mlp", (1, 2, 3)).max(dim=2).values
        x = self._mlp(x, f"{prefix}:fc", (1, 2))
        return self.layers[f"{prefix}:transform"](x).view(-1, k, k) + torch.eye(k, dtype=x.dtype)

    def forward(self, points, categories):  # points [N, C, P]
        a_in = self._tnet(points[:, :3], "input_tnet")
        xyz = torch.bmm(points[:, :3].transpose(1, 2), a_in).transpose(1, 2)
        x = self._mlp(torch.cat([xyz, points[:, 3:]], 1), "mlp", (1, 2))
        a_feat = self._tnet(x, "feature_tnet")
        local = torch.bmm(x.transpose(1, 2), a_feat).transpose(1, 2)
        glob = self._mlp(local, "mlp", (3, 4, 5)).max(dim=2).values
        if self.num_categories:
            glob = torch.cat([glob, tnn.functional.one_hot(categories, self.num_categories).to(glob.dtype)], 1)
        x = torch.cat([local, glob[:, :, None].expand(-1, -1, local.shape[2])], 1)
        return self.layers["classifier"](self._mlp(x, "seg", (1, 2, 3, 4))), a_in, a_feat


def _flat(tree):
    return {":".join(path): v for path, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def _to_torch(layer_name, key, value):
    """flax Dense kernel [in, out] -> Conv1d weight [out, in, 1] or Linear weight [out, in]."""
    if key != "kernel":
        return value
    return value.T[:, :, None] if "fc" not in layer_name and "transform" not in layer_name else value.T


def _torch_param(module, key):
    return {"kernel": module.weight, "bias": module.bias, "scale": module.weight}[key]


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    model = create_model("pointnet_seg", num_classes=K, num_categories=CATEGORIES, width=WIDTH, in_channels=IN)
    categories = jnp.asarray(rng.integers(0, CATEGORIES, N), jnp.int32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((N, P, IN)), categories=categories)
    fill = {"kernel": lambda s: rng.normal(0, np.sqrt(2 / s[0]), s), "scale": lambda s: rng.uniform(0.5, 1.5, s),
            "var": lambda s: rng.uniform(0.5, 2.0, s)}
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(fill.get(path[-1].key, lambda s: rng.normal(0, 0.1, s))(s.shape), jnp.float32),
        shapes)
    reference = TorchPointNetSeg(IN, K, CATEGORIES).double()
    with torch.no_grad():
        for col in ("params", "batch_stats"):
            for path, value in _flat(variables[col]).items():
                layer, key = path.rsplit(":", 1)
                module = reference.layers[layer]
                target = ({"mean": module.running_mean, "var": module.running_var}[key] if col == "batch_stats"
                          else _torch_param(module, key))
                target.copy_(torch.from_numpy(_to_torch(layer, key, np.array(value, np.float64))))
    x = rng.normal(size=(N, P, IN)).astype(np.float32)
    return model, variables, reference, x, categories, rng


def test_matches_torch_transcription_train_and_eval(setup):
    model, variables, reference, x, categories, rng = setup
    cot = rng.normal(size=(N, P, K)).astype(np.float32)
    cot_t = rng.normal(size=(N, _w(64), _w(64))).astype(np.float32)  # reaches the feature T-Net directly

    def loss(params, x):
        out = model.apply({**variables, "params": params}, x, train=True, categories=categories,
                          mutable=["batch_stats"])[0]
        return jnp.sum(out["logits"] * cot) + jnp.sum(out[FEATURE_TRANSFORM] * cot_t), out

    def run(params, x):
        eval_out = model.apply({**variables, "params": params}, x, categories=categories)
        return eval_out, jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

    args = (variables["params"], jnp.asarray(x))
    compiled = jax.jit(run).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    eval_out, ((_, out), (grad_params, grad_x)) = compiled(*args)

    tx = torch.from_numpy(x.transpose(0, 2, 1).astype(np.float64))
    tc = torch.from_numpy(np.asarray(categories, np.int64))
    reference.eval()
    with torch.no_grad():
        logits, a_in, a_feat = reference(tx, tc)
    assert rel_err(eval_out["logits"], logits.numpy().transpose(0, 2, 1)) < TOL
    assert rel_err(eval_out[INPUT_TRANSFORM], a_in.numpy()) < TOL
    assert rel_err(eval_out[FEATURE_TRANSFORM], a_feat.numpy()) < TOL

    reference.train()
    tx.requires_grad_(True)
    logits, a_in, a_feat = reference(tx, tc)
    ((logits * torch.from_numpy(cot.transpose(0, 2, 1).astype(np.float64))).sum()
     + (a_feat * torch.from_numpy(cot_t.astype(np.float64))).sum()).backward()
    assert rel_err(out["logits"], logits.detach().numpy().transpose(0, 2, 1)) < TRAIN_TOL
    assert rel_err(out[FEATURE_TRANSFORM], a_feat.detach().numpy()) < TRAIN_TOL
    assert rel_err(grad_x, tx.grad.numpy().transpose(0, 2, 1)) < TRAIN_TOL
    grads = _flat(grad_params)
    # A bias just before a train-mode BatchNorm has a gradient that is zero up to rounding: errors are
    # relative to the larger of the entry's own scale and 1% of the largest gradient in the model.
    floor = max(np.abs(g).max() for g in grads.values()) / 100
    for path, got in grads.items():
        layer, key = path.rsplit(":", 1)
        want = _torch_param(reference.layers[layer], key).grad.numpy()
        got = _to_torch(layer, key, np.asarray(got))
        err = np.abs(got - want).max() / max(np.abs(want).max(), floor)
        assert err < TRAIN_TOL, f"{path}: relative error {err:.3g}"


def test_per_point_logits_are_permutation_equivariant(setup):
    """Shuffling the points shuffles the logits the same way and leaves the transforms alone, in eval
    and train mode. Train-mode BatchNorm sums the points in another order: rounding, amplified by
    normalising the T-Nets' dense layers over a few shapes, reaches 2e-5 (measured)."""
    model, variables, _, x, categories, rng = setup
    perm = rng.permutation(P)

    @jax.jit
    def both_modes(x):
        return [model.apply(variables, x, train=train, categories=categories, mutable=["batch_stats"])[0]
                for train in (False, True)]

    for out, out_perm, tol in zip(both_modes(x), both_modes(x[:, perm]), (1e-5, 2e-4)):
        np.testing.assert_allclose(out_perm["logits"], out["logits"][:, perm], rtol=tol, atol=tol)
        for key in (INPUT_TRANSFORM, FEATURE_TRANSFORM):
            np.testing.assert_allclose(out_perm[key], out[key], rtol=tol, atol=tol)
    assert np.std(np.asarray(out["logits"])) > 0


def test_regularizer_is_eq2():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 5, 5)).astype(np.float32)
    want = [np.sum((np.eye(5) - m.astype(np.float64) @ m.T.astype(np.float64)) ** 2) for m in a]
    np.testing.assert_allclose(feature_transform_regularizer(jnp.asarray(a)), want, rtol=1e-5)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # orthogonal: no penalty
    np.testing.assert_allclose(feature_transform_regularizer(jnp.asarray(q[None], jnp.float32)), [0.0], atol=1e-5)


def test_bad_arguments_raise():
    for field, value in (("width", 0), ("in_channels", 2), ("num_categories", -1)):
        with pytest.raises(ValueError, match=field):
            create_model("pointnet_seg", num_classes=2, **{field: value})
    model = create_model("pointnet_seg", num_classes=2, width=4)
    with pytest.raises(ValueError, match=r"\[N, P, 3\].*\(2, 5, 4\)"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match="categories"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 5, 3)), categories=jnp.zeros(2, jnp.int32))
    with_categories = create_model("pointnet_seg", num_classes=2, width=4, num_categories=3)
    with pytest.raises(ValueError, match="categories missing"):
        jax.eval_shape(with_categories.init, jax.random.key(0), jnp.zeros((2, 5, 3)))
