"""U-Net against a torch re-implementation with the same weights (forward, gradients, BN statistics)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax.models import LOGITS, create_model
from tests.models.tv_reference import nchw, nhwc


@pytest.fixture(autouse=True)
def _fast_init_compile():
    """jax's default partitionable threefry makes compiling `init` ~8x slower on CPU (measured)."""
    with jax.threefry_partitionable(False):
        yield


BASE, DEPTH = 4, 2
H, W = 13, 11  # 13 -> 7 -> 4 and 11 -> 6 -> 3: every level needs the ceil-pool crop


def _torch_unet(x, p, stats, upsampling, train):
    """Same-size U-Net written with torch.nn.functional; `p`/`stats` are dicts of torch tensors."""

    def conv(x, name, pad):
        return F.conv2d(x, p[name]["kernel"].permute(3, 2, 0, 1), p[name]["bias"], padding=pad)

    def double(x, prefix):
        for i in (1, 2):
            x = conv(x, f"{prefix}_conv{i}", 1)
            bn, st = p[f"{prefix}_bn{i}"], stats[f"{prefix}_bn{i}"]
            x = F.batch_norm(x, st["mean"], st["var"], bn["scale"], bn["bias"], training=train, momentum=0.1, eps=1e-5)
            x = F.relu(x)
        return x

    skips = []
    for level in range(DEPTH):
        x = double(x, f"enc{level}")
        skips.append(x)
        x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = double(x, "bottom")
    for level in reversed(range(DEPTH)):
        skip = skips[level]
        if upsampling == "transposed":
            x = F.conv_transpose2d(x, p[f"up{level}"]["kernel"].permute(3, 2, 0, 1), p[f"up{level}"]["bias"], stride=2)
        else:
            if upsampling == "bed_of_nails":
                z = x.new_zeros(x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3])
                z[:, :, ::2, ::2] = x
                x = z
            else:
                corners = {"align_corners": False} if upsampling == "bilinear" else {}
                x = F.interpolate(x, scale_factor=2, mode=upsampling, **corners)
            x = conv(x, f"up{level}", 0)
        x = double(torch.cat([skip, x[:, :, : skip.shape[2], : skip.shape[3]]], 1), f"dec{level}")
    return conv(x, "classifier", 0)


def _random_variables(model, np_rng):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, H, W, 3)))
    params = jax.tree.map(lambda s: jnp.asarray(np_rng.normal(0, 0.5, s.shape), jnp.float32), shapes["params"])
    stats = {layer: {"mean": jnp.asarray(np_rng.normal(0, 0.5, v["mean"].shape), jnp.float32),
                     "var": jnp.asarray(np_rng.uniform(0.5, 1.5, v["var"].shape), jnp.float32)}
             for layer, v in shapes["batch_stats"].items()}
    return {"params": params, "batch_stats": stats}


def _to_torch(tree, requires_grad=False):
    return jax.tree.map(lambda a: torch.tensor(np.asarray(a), requires_grad=requires_grad), tree)


@pytest.mark.parametrize("upsampling", ["transposed", "bilinear", "nearest", "bed_of_nails"])
def test_eval_forward_matches_torch(np_rng, upsampling):
    model = create_model("unet", num_classes=3, base_features=BASE, depth=DEPTH, upsampling=upsampling)
    variables = _random_variables(model, np_rng)
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    got = jax.jit(model.apply)(variables, jnp.asarray(x))[LOGITS]
    with torch.no_grad():
        want = nhwc(_torch_unet(nchw(x), _to_torch(variables["params"]), _to_torch(variables["batch_stats"]),
                                upsampling, train=False))
    assert got.shape == (2, H, W, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_train_mode_gradients_and_batch_stats_match_torch(np_rng):
    model = create_model("unet", num_classes=3, base_features=BASE, depth=DEPTH)
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

    tp = _to_torch(variables["params"], requires_grad=True)
    ts = _to_torch(variables["batch_stats"])  # updated in place by F.batch_norm(training=True)
    xt = nchw(x).requires_grad_(True)
    want_loss = (_torch_unet(xt, tp, ts, "transposed", train=True) * nchw(cot)).sum()
    want_loss.backward()
    np.testing.assert_allclose(loss, want_loss.item(), rtol=1e-4)
    np.testing.assert_allclose(g_x, nhwc(xt.grad), rtol=1e-3, atol=1e-3 * np.abs(nhwc(xt.grad)).max())
    for name in ("enc0_conv1", "up1", "up0", "dec0_conv1", "classifier"):
        want = tp[name]["kernel"].grad.numpy()
        np.testing.assert_allclose(g_params[name]["kernel"], want, rtol=1e-3, atol=1e-3 * np.abs(want).max(),
                                   err_msg=name)
    for name in ("enc0_bn1", "bottom_bn2", "dec0_bn2"):
        for stat in ("mean", "var"):
            np.testing.assert_allclose(upd["batch_stats"][name][stat], ts[name][stat].numpy(), rtol=1e-4, atol=1e-5)


def test_output_depends_on_the_finest_skip(np_rng):
    """Zeroing the skip half (input channels [0, BASE)) of dec0's first conv changes the output."""
    model = create_model("unet", num_classes=3, base_features=BASE, depth=DEPTH)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, H, W, 3)))
    x = jnp.asarray(np_rng.normal(size=(1, H, W, 3)), jnp.float32)
    apply = jax.jit(model.apply)
    base = apply(variables, x)[LOGITS]

    def with_dec0_kernel(mask_channels):
        kernel = variables["params"]["dec0_conv1"]["kernel"].at[:, :, mask_channels].set(0)
        params = {**variables["params"], "dec0_conv1": {**variables["params"]["dec0_conv1"], "kernel": kernel}}
        return apply({**variables, "params": params}, x)[LOGITS]

    no_skip = with_dec0_kernel(slice(0, BASE))  # concat order is [skip, upsampled]
    assert np.abs(no_skip - base).max() > 1e-2 * np.abs(base).max()
    no_up = with_dec0_kernel(slice(BASE, None))
    assert np.abs(no_up - base).max() > 1e-2 * np.abs(base).max()


@pytest.mark.parametrize("size", [(1, 1), (33, 18)])
def test_any_size_and_deeper(np_rng, size):
    model = create_model("unet", num_classes=2, base_features=2, depth=4)
    x = jnp.asarray(np_rng.normal(size=(1, *size, 3)), jnp.float32)
    out = jax.jit(lambda x: model.apply(model.init(jax.random.key(0), x), x)[LOGITS])(x)
    assert out.shape == (1, *size, 2) and np.all(np.isfinite(out)) and np.std(out) > 0


@pytest.mark.parametrize("overrides, match", [({"upsampling": "cubic"}, "upsampling='cubic'"),
                                              ({"depth": 0}, "depth"), ({"base_features": 0}, "base_features")])
def test_bad_overrides_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        create_model("unet", num_classes=2, **overrides)
