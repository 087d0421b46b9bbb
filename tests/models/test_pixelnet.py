"""PixelNet (hypercolumn sampling, per-pixel MLP, sparse training / dense test) against a torch
transcription of the paper written here, with the flax weights copied into torch modules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax.models import LOGITS, create_model
from segjax.models.outputs import PIXEL_INDEX
from segjax.models.pixelnet import HYPERCOLUMN_LAYERS, sample_bilinear, sample_pixel_index
from segjax.tasks.base import StepContext
from segjax.tasks.semantic import SemanticTask
from tests.models.tv_reference import nchw, nhwc, random_variables, rel_err

H, W = 37, 45  # odd: conv2 19x23, conv3 10x12, conv4 5x6, conv5 3x3, fc7 2x2 (ceil-mode pools)
TINY = dict(backbone_width=4, fc_dim=16, mlp_dims=(12, 10), fc6_kernel=3, dropout_rate=0.0, backbone_dropout=0.0,
            train_samples=40)
STRIDES = dict(conv1=1, conv2=2, conv3=4, conv4=8, conv5=16, fc7=32)


def _t(a):
    return torch.from_numpy(np.asarray(a, np.float32).copy())


def torch_pixelnet(params, x):
    """The paper's PixelNet on NCHW `x`: VGG-16 (ceil-mode pools), each of conv1_2 .. conv5_3 and fc7
    upsampled bilinearly to the image (x stride, align_corners=False, cropped), concatenated, then
    the per-pixel MLP. Returns NHWC logits."""
    b = params["backbone"]
    h, w = x.shape[-2:]
    maps = {}
    for s, n in enumerate((2, 2, 3, 3, 3), start=1):
        for i in range(1, n + 1):
            p = b[f"conv{s}_{i}"]
            x = F.relu(F.conv2d(x, _t(p["kernel"]).permute(3, 2, 0, 1), _t(p["bias"]), padding=1))
        maps[f"conv{s}"] = x
        x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    for name in ("fc6", "fc7"):
        k = _t(b[name]["kernel"]).permute(3, 2, 0, 1)
        x = F.relu(F.conv2d(x, k, _t(b[name]["bias"]), padding=k.shape[-1] // 2))
    maps["fc7"] = x
    cols = [F.interpolate(maps[n], scale_factor=STRIDES[n], mode="bilinear", align_corners=False)[:, :, :h, :w]
            if STRIDES[n] > 1 else maps[n] for n in HYPERCOLUMN_LAYERS]
    z = torch.cat(cols, 1).permute(0, 2, 3, 1)  # [N, H, W, D]: one hypercolumn per pixel
    z = F.relu(z @ _t(params["fc1_kernel"]) + _t(params["fc1_bias"]))
    z = F.relu(z @ _t(params["fc2"]["kernel"]) + _t(params["fc2"]["bias"]))
    return z @ _t(params["classifier"]["kernel"]) + _t(params["classifier"]["bias"])


@pytest.fixture(scope="module")
def pixelnet():
    """One tiny pixelnet_vgg16 with random weights and its jitted dense / sparse applies (shared)."""
    rng = np.random.default_rng(27)
    model = create_model("pixelnet_vgg16", num_classes=4, **TINY)
    variables = random_variables(model, (2, H, W, 3), rng)

    @jax.jit
    def dense_and_grad(v, x, cot):  # one compile: dense logits and d(sum(logits * cot)) / d images
        logits, vjp = jax.vjp(lambda x: model.apply(v, x)[LOGITS], x)
        return logits, vjp(cot)[0]

    def dense(v, x):
        return dense_and_grad(v, x, np.zeros((*x.shape[:3], 4), np.float32))[0]

    sparse = jax.jit(lambda v, x, idx: model.apply(v, x, pixel_index=idx)[LOGITS])
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
    return model, variables, dense_and_grad, dense, sparse, train


@pytest.mark.parametrize("stride", [1, 2, 4, 32])
def test_hypercolumn_sampling_equals_interpolate_and_grid_sample(np_rng, stride):
    h, w = -(-H // stride), -(-W // stride)
    feat = np_rng.normal(size=(2, h, w, 3)).astype(np.float32)
    ys = np.array([0, 0, H - 1, H - 1, 1, stride, H // 2, 17, 36, 5])
    xs = np.array([0, W - 1, 0, W - 1, 1, stride - 1, W // 2, 44, 3, 30])
    idx = np.stack([ys * W + xs, (ys * W + xs)[::-1]]).astype(np.int32)  # [2, S]
    got, vjp = jax.vjp(lambda f: sample_bilinear(f, stride, jnp.asarray(idx), W), jnp.asarray(feat))
    ft = nchw(feat).requires_grad_(True)
    up = F.interpolate(ft, scale_factor=stride, mode="bilinear", align_corners=False) if stride > 1 else ft
    flat = idx.astype(np.int64)
    want_up = torch.stack([up[n].flatten(1)[:, flat[n] // W * up.shape[-1] + flat[n] % W].T for n in range(2)])
    np.testing.assert_allclose(got, want_up.detach().numpy(), rtol=1e-5, atol=1e-6)
    # grid_sample: normalised coordinates of the pixel centres on the map (border = clamping).
    gy = 2 * (flat // W + 0.5) / (stride * h) - 1
    gx = 2 * (flat % W + 0.5) / (stride * w) - 1
    grid = torch.from_numpy(np.stack([gx, gy], -1)[:, None].astype(np.float32))  # [N, 1, S, 2]
    want = F.grid_sample(ft, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]
    np.testing.assert_allclose(got, want.permute(0, 2, 1).detach().numpy(), rtol=1e-5, atol=1e-5)
    cot = np_rng.normal(size=got.shape).astype(np.float32)
    want.permute(0, 2, 1).backward(torch.from_numpy(cot))
    np.testing.assert_allclose(vjp(jnp.asarray(cot))[0], nhwc(ft.grad), rtol=1e-5, atol=1e-5)


def test_dense_logits_and_input_gradients_match_torch_reference(pixelnet, np_rng):
    _, variables, dense_and_grad, _, _, _ = pixelnet
    assert set(variables["params"]) == {"backbone", "fc1_kernel", "fc1_bias", "fc2", "classifier"}
    assert variables["params"]["fc1_kernel"].shape == (4 + 8 + 16 + 32 + 32 + 16, 12)  # the hypercolumn
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    cot = np_rng.normal(size=(2, H, W, 4)).astype(np.float32)
    got, grad = dense_and_grad(variables, x, cot)
    xt = nchw(x).requires_grad_(True)
    want = torch_pixelnet(jax.tree.map(np.asarray, variables["params"]), xt)
    assert got.shape == (2, H, W, 4) and got.dtype == jnp.float32
    assert rel_err(got, want.detach().numpy()) <= 1e-4
    want.backward(torch.from_numpy(cot))
    assert rel_err(grad, nhwc(xt.grad)) <= 1e-4


def test_sparse_logits_are_the_dense_ones_at_the_chosen_pixels(pixelnet, np_rng):
    _, variables, _, dense, sparse, _ = pixelnet
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    idx = np_rng.integers(0, H * W, (2, 40)).astype(np.int32)
    idx[0, :3] = [0, W - 1, H * W - 1]
    full = np.asarray(dense(variables, x)).reshape(2, H * W, 4)
    np.testing.assert_allclose(sparse(variables, x, idx), np.take_along_axis(full, idx[..., None], 1),
                               rtol=1e-5, atol=1e-5 * np.abs(full).max())


def test_training_samples_distinct_pixels_per_image_from_the_dropout_key(pixelnet, np_rng):
    _, variables, _, dense, _, train = pixelnet
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    out = train(variables, x, jax.random.key(5))
    idx = np.asarray(out[PIXEL_INDEX])
    assert out[LOGITS].shape == (2, 40, 4) and idx.shape == (2, 40) and idx.dtype == np.int32
    assert all(len(set(row)) == 40 for row in idx) and idx.min() >= 0 and idx.max() < H * W
    assert not np.array_equal(idx[0], idx[1])  # each example its own draw
    np.testing.assert_array_equal(train(variables, x, jax.random.key(5))[PIXEL_INDEX], idx)
    assert not np.array_equal(train(variables, x, jax.random.key(6))[PIXEL_INDEX], idx)
    full = np.asarray(dense(variables, x)).reshape(2, H * W, 4)  # dropout 0: train == test values
    np.testing.assert_allclose(out[LOGITS], np.take_along_axis(full, idx[..., None], 1), rtol=1e-5,
                               atol=1e-5 * np.abs(full).max())


def test_pixel_draw_does_not_depend_on_the_split_and_uses_replacement_beyond_hw():
    @jax.jit
    def draws(key):
        whole = sample_pixel_index(key, 4, 5, 7, 9)
        # Two shares of two examples, as under pmap (a named vmap axis gives the same axis_index).
        halves = jax.vmap(lambda k: sample_pixel_index(k, 2, 5, 7, 9, axis_name="d"), axis_name="d")(
            jnp.stack([key] * 2))
        return whole, halves, sample_pixel_index(key, 2, 3, 3, 20)  # 20 > 9 pixels: with replacement

    whole, halves, many = jax.tree.map(np.asarray, draws(jax.random.key(3)))
    np.testing.assert_array_equal(halves.reshape(4, 9), whole)
    assert all(len(set(row)) == 9 for row in whole) and whole.max() < 35
    assert many.shape == (2, 20) and many.min() >= 0 and many.max() < 9


def test_semantic_loss_reads_labels_at_pixel_index(np_rng):
    """The task's loss on sparse logits equals torch's cross-entropy on the labels gathered there."""
    labels = np_rng.integers(0, 4, (2, 6, 7)).astype(np.int32)
    labels[0, 0, :3] = 255
    idx = np_rng.choice(42, (2, 10)).astype(np.int32)
    idx[0, :2] = [0, 1]  # two ignored pixels
    logits = np_rng.normal(size=(2, 10, 4)).astype(np.float32)
    task = SemanticTask(num_classes=4, ignore_label=255)
    total, count = task.loss({LOGITS: jnp.asarray(logits), PIXEL_INDEX: jnp.asarray(idx)},
                             {"image": np.zeros((2, 6, 7, 3), np.float32), "label": labels},
                             StepContext(rng=jax.random.key(0)))
    picked = np.stack([labels[n].reshape(-1)[idx[n]] for n in range(2)])
    want = F.cross_entropy(torch.from_numpy(logits).reshape(-1, 4), torch.from_numpy(picked).long().reshape(-1),
                           ignore_index=255)
    assert float(count) == np.sum(picked != 255) <= 18
    np.testing.assert_allclose(float(total) / float(count), float(want), rtol=1e-5)


def test_bfloat16_dense_forward(pixelnet, np_rng):
    _, variables, _, dense, _, _ = pixelnet
    model = create_model("pixelnet_vgg16", num_classes=4, dtype="bfloat16", **TINY)
    x = np_rng.normal(size=(2, H, W, 3)).astype(np.float32)
    out = jax.jit(model.apply)(variables, x)[LOGITS]
    assert out.dtype == jnp.float32 and out.shape == (2, H, W, 4) and np.isfinite(out).all()
    assert rel_err(out, dense(variables, x)) <= 5e-2


def test_defaults_are_the_papers_and_bad_overrides_raise():
    model = create_model("pixelnet_vgg16", num_classes=21)
    assert model.layers == HYPERCOLUMN_LAYERS and tuple(model.mlp_dims) == (4096, 4096)
    assert model.train_samples == 2000
    with pytest.raises(ValueError, match="layers"):
        create_model("pixelnet_vgg16", num_classes=3, layers=("conv1", "pool2"))
    with pytest.raises(ValueError, match="mlp_dims"):
        create_model("pixelnet_vgg16", num_classes=3, mlp_dims=())
    with pytest.raises(ValueError, match="train_samples"):
        create_model("pixelnet_vgg16", num_classes=3, train_samples=-1)
