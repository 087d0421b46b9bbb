"""DeepLab models: torchvision parity (counts, logits, train-mode BN), rates/output stride, variants."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from segjax.models import AUX_LOGITS, LOGITS, create_model
from segjax.models.deeplab import DeepLab, default_atrous_rates
from segjax.models.torchvision_import import convert
from tests.models.tv_reference import (
    check_sync_batchnorm, nchw, nhwc, random_variables, randomize_batchnorm, rel_err)


def _shapes(model, hw=(33, 35)):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *hw, 3))))


def _n_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("aux", [False, True])
def test_parameter_count_equals_torchvision(depth, aux):
    ref = getattr(torchvision.models.segmentation, f"deeplabv3_resnet{depth}")(
        num_classes=21, aux_loss=aux, weights=None, weights_backbone=None)
    v = _shapes(create_model(f"deeplabv3_resnet{depth}", num_classes=21, aux_loss=aux))
    assert _n_params(v["params"]) == sum(p.numel() for p in ref.parameters())
    buffers = sum(b.numel() for k, b in ref.named_buffers() if not k.endswith("num_batches_tracked"))
    assert _n_params(v["batch_stats"]) == buffers


def test_deeplabv2_parameter_count_by_hand():
    # ResNet-101 features + four 3x3 classifiers 2048 -> C with bias
    resnet101 = sum(p.numel() for k, p in torchvision.models.resnet101().named_parameters() if not k.startswith("fc."))
    v = _shapes(create_model("deeplabv2_resnet101", num_classes=21))
    assert _n_params(v["params"]) == resnet101 + 4 * (9 * 2048 * 21 + 21)


@pytest.fixture(scope="module")
def deeplabv3_r50_pair():
    torch.manual_seed(0)
    ref = torchvision.models.segmentation.deeplabv3_resnet50(
        num_classes=5, aux_loss=True, weights=None, weights_backbone=None)
    randomize_batchnorm(ref, np.random.default_rng(0))
    return ref.eval(), convert("deeplabv3_resnet50", ref.state_dict())


def test_converted_deeplabv3_resnet50_gives_torchvision_logits(deeplabv3_r50_pair, np_rng):
    ref, variables = deeplabv3_r50_pair
    model = create_model("deeplabv3_resnet50", num_classes=5, aux_loss=True)
    x = np_rng.standard_normal((1, 57, 71, 3)).astype(np.float32)
    out = jax.jit(model.apply)(variables, x)
    with torch.no_grad():
        expected = ref(nchw(x))
    assert out[LOGITS].shape == (1, 57, 71, 5) and out[LOGITS].dtype == jnp.float32
    assert rel_err(out[LOGITS], nhwc(expected["out"])) <= 1e-4
    assert rel_err(out[AUX_LOGITS], nhwc(expected["aux"])) <= 1e-4


def test_train_mode_batch_stats_match_torchvision(deeplabv3_r50_pair, np_rng):
    ref, variables = deeplabv3_r50_pair
    ref = copy.deepcopy(ref).train()
    model = create_model("deeplabv3_resnet50", num_classes=5, aux_loss=True)
    x = np_rng.standard_normal((2, 35, 41, 3)).astype(np.float32)
    _, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                              rngs={"dropout": jax.random.key(0)}))(variables, x)
    with torch.no_grad():
        ref(nchw(x))
    stats = upd["batch_stats"]
    pairs = [
        (stats["backbone"]["layer4"]["2"]["bn3"], ref.backbone.layer4[2].bn3),
        (stats["classifier"]["aspp"]["pooling"]["bn"], ref.classifier[0].convs[4][2]),
        (stats["classifier"]["aspp"]["atrous_2"]["bn"], ref.classifier[0].convs[3][1]),
        (stats["aux_classifier"]["bn"], ref.aux_classifier[1]),
    ]
    for got, bn in pairs:
        np.testing.assert_allclose(got["mean"], bn.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["var"], bn.running_var.numpy(), rtol=1e-4, atol=1e-5)


def test_default_rates_scale_with_output_stride():
    assert default_atrous_rates("v3", 8) == (12, 24, 36)  # torchvision
    assert default_atrous_rates("v3", 16) == (6, 12, 18)
    assert default_atrous_rates("v3plus", 16) == (6, 12, 18)
    assert default_atrous_rates("v3plus", 8) == (12, 24, 36)
    assert default_atrous_rates("v3plus", 32) == (3, 6, 9)
    assert default_atrous_rates("v2", 8) == (6, 12, 18, 24)
    assert default_atrous_rates("v2", 32) == (1, 3, 4, 6)
    model = create_model("deeplabv3plus_resnet50", num_classes=3, output_stride=8)
    assert model.rates() == (12, 24, 36)
    assert create_model("deeplabv3plus_resnet50", num_classes=3, output_stride=8, atrous_rates=(2, 4)).rates() == (2, 4)


def _small(name, **kw):
    return create_model(name, num_classes=3, **{"backbone_width": 8, "head_channels": 16, **kw})


@pytest.mark.parametrize("name", ["deeplabv3_resnet18", "deeplabv3plus_resnet18"])
def test_small_variants_train_step_shapes_and_updates(name, np_rng):
    model = _small(name, aux_loss=True)
    x = np_rng.standard_normal((2, 45, 37, 3)).astype(np.float32)
    variables = random_variables(model, x.shape, np_rng)
    train = jax.jit(lambda v, x, k: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k}))
    out, upd = train(variables, x, jax.random.key(1))
    assert out[LOGITS].shape == out[AUX_LOGITS].shape == (2, 45, 37, 3)
    assert np.isfinite(out[LOGITS]).all()
    # dropout is live in train mode, absent in eval mode
    assert not np.allclose(out[LOGITS], train(variables, x, jax.random.key(2))[0][LOGITS])
    evaluate = jax.jit(model.apply)
    np.testing.assert_array_equal(evaluate(variables, x)[LOGITS], evaluate(variables, x)[LOGITS])
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), variables["batch_stats"], upd["batch_stats"])
    assert min(jax.tree.leaves(moved)) > 0  # every BatchNorm saw the batch


def test_every_batchnorm_is_synchronised_under_pmap(np_rng):
    model = _small("deeplabv3plus_resnet18", aux_loss=True)  # ResNet, ASPP, decoder, FCN aux head
    check_sync_batchnorm(model, np_rng.standard_normal((4, 29, 35, 3)).astype(np.float32), np_rng)


def test_v3plus_uses_layer1_and_output_stride_keeps_parameters():
    trees = [_shapes(_small("deeplabv3plus_resnet18", output_stride=os)) for os in (8, 16, 32)]
    for t in trees[1:]:
        assert jax.tree.map(lambda a: a.shape, t) == jax.tree.map(lambda a: a.shape, trees[0])
    head = trees[0]["params"]["classifier"]
    assert head["low_level"]["conv"]["kernel"].shape == (1, 1, 8, 48)  # layer1 of a width-8 ResNet-18
    assert head["refine_0"]["conv"]["kernel"].shape == (3, 3, 16 + 48, 16)
    sep = _shapes(_small("deeplabv3plus_resnet18", separable=True))["params"]["classifier"]
    assert sep["refine_0"]["depthwise"]["kernel"].shape == (3, 3, 1, 64)
    assert sep["aspp"]["atrous_0"]["depthwise"]["kernel"].shape == (3, 3, 1, 64)


def test_multi_grid_and_image_pooling_overrides_reach_the_model(np_rng):
    x = np_rng.standard_normal((1, 41, 41, 3)).astype(np.float32)
    base = _small("deeplabv3_resnet18")
    variables = random_variables(base, x.shape, np_rng)
    mg = _small("deeplabv3_resnet18", multi_grid=(1, 2))
    assert jax.tree.structure(_shapes(mg)) == jax.tree.structure(variables)
    a = jax.jit(base.apply)(variables, x)[LOGITS]
    b = jax.jit(mg.apply)(variables, x)[LOGITS]
    assert not np.allclose(a, b, atol=1e-4)  # same weights, different layer4 dilations
    no_pool = _shapes(_small("deeplabv3_resnet18", image_pooling=False))["params"]["classifier"]["aspp"]
    assert "pooling" not in no_pool and no_pool["project"]["conv"]["kernel"].shape == (1, 1, 4 * 16, 16)


def test_bfloat16_close_to_float32(np_rng):
    x = np_rng.standard_normal((1, 37, 43, 3)).astype(np.float32)
    f32 = _small("deeplabv3plus_resnet18")
    variables = random_variables(f32, x.shape, np_rng)
    a = jax.jit(f32.apply)(variables, x)[LOGITS]
    b = jax.jit(_small("deeplabv3plus_resnet18", dtype="bfloat16").apply)(variables, x)[LOGITS]
    assert b.dtype == jnp.float32
    assert 0 < rel_err(b, a) <= 5e-2


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"output_stride": 4}, r"output_stride=4 .*allowed: \(8, 16, 32\)"),
        ({"atrous_rates": ()}, "atrous_rates"),
        ({"atrous_rates": (6, 0)}, "atrous_rates"),
        ({"multi_grid": (1, 2, 4)}, "multi_grid"),
        ({"head_channels": 0}, "head_channels"),
        ({"backbone_width": -8}, "width"),
    ],
)
def test_unsupported_overrides_raise_in_create_model(overrides, match):
    with pytest.raises(ValueError, match=match):
        _small("deeplabv3_resnet18", **overrides)


def test_unknown_override_and_bad_images_raise():
    with pytest.raises(ValueError, match="separable"):
        create_model("deeplabv3_resnet50", num_classes=3, separable=True)  # v3+ only
    model = _small("deeplabv3plus_resnet18")
    with pytest.raises(ValueError, match=r"\(1, 33, 33, 1\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 1)))
    with pytest.raises(ValueError, match="version"):
        DeepLab(num_classes=3, version="v4").rates()


class TorchDeepLabV1(torch.nn.Module):
    """DeepLab-LargeFOV in torch: VGG-16 with ceil-mode pools, pool4/5 3x3 stride 1, conv5 dilation 2."""

    def __init__(self, num_classes):
        super().__init__()
        tnn, layers, c = torch.nn, [], 3
        for s, (n, out) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
            d = 2 if s == 5 else 1
            for _ in range(n):
                layers += [tnn.Conv2d(c, out, 3, padding=d, dilation=d), tnn.ReLU()]
                c = out
            layers.append(tnn.MaxPool2d(2, 2, ceil_mode=True) if s <= 3 else tnn.MaxPool2d(3, 1, padding=1))
        self.features = tnn.Sequential(*layers)
        self.fc6 = tnn.Conv2d(512, 1024, 3, padding=12, dilation=12)
        self.fc7 = tnn.Conv2d(1024, 1024, 1)
        self.cls = tnn.Conv2d(1024, num_classes, 1)

    def forward(self, x):
        y = torch.relu(self.fc7(torch.relu(self.fc6(self.features(x)))))
        return torch.nn.functional.interpolate(self.cls(y), x.shape[-2:], mode="bilinear", align_corners=False)


def test_deeplabv1_vgg16_matches_torch_reference(np_rng):
    from segjax.models.torchvision_import import convert_state_dict

    torch.manual_seed(0)
    ref = TorchDeepLabV1(3).eval()
    model = create_model("deeplabv1_vgg16", num_classes=3)
    shapes = _shapes(model)
    assert _n_params(shapes["params"]) == sum(p.numel() for p in ref.parameters())
    convs = [k for k, m in ref.features.named_children() if isinstance(m, torch.nn.Conv2d)]
    names = [f"conv{s}_{i}" for s, n in enumerate((2, 2, 3, 3, 3), start=1) for i in range(1, n + 1)]
    table = {f"features.{k}": ["backbone", name] for k, name in zip(convs, names)}
    table.update({"fc6": ["backbone", "fc6"], "fc7": ["backbone", "fc7"], "cls": ["classifier"]})
    variables = convert_state_dict(ref.state_dict(), shapes, lambda p: [*table[".".join(p[:-1])], p[-1]]
                                   if ".".join(p[:-1]) in table else None)
    x = np_rng.standard_normal((1, 41, 53, 3)).astype(np.float32)
    out = jax.jit(model.apply)(variables, x)
    with torch.no_grad():
        expected = nhwc(ref(nchw(x)))
    assert set(out) == {LOGITS}
    assert rel_err(out[LOGITS], expected) <= 1e-4
    with pytest.raises(ValueError, match="output_stride=4"):
        create_model("deeplabv1_vgg16", num_classes=3, output_stride=4)
