"""torchvision conversion: FCN/DeepLab logits, key coverage for the 101s, clear errors, transfer merge."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from segjax.models import AUX_LOGITS, LOGITS, create_model
from segjax.models.torchvision_import import (
    convert, load_converted, merge_backbone, model_config, read_converted_config, save_converted)
from tests.models.tv_reference import nchw, nhwc, random_variables, randomize_batchnorm, rel_err


def _segmentation(name, aux, num_classes=4, seed=0):
    torch.manual_seed(seed)
    ref = getattr(torchvision.models.segmentation, name)(
        num_classes=num_classes, aux_loss=aux, weights=None, weights_backbone=None)
    return randomize_batchnorm(ref, np.random.default_rng(seed)).eval()


def test_converted_fcn_resnet50_gives_torchvision_logits(np_rng):
    ref = _segmentation("fcn_resnet50", aux=True)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}  # numpy arrays as well as tensors
    variables = convert("fcn_resnet50", state)
    model = create_model("fcn_resnet50", num_classes=4, aux_loss=True)
    x = np_rng.standard_normal((1, 57, 71, 3)).astype(np.float32)
    out = jax.jit(model.apply)(variables, x)
    with torch.no_grad():
        expected = ref(nchw(x))
    assert rel_err(out[LOGITS], nhwc(expected["out"])) <= 1e-4
    assert rel_err(out[AUX_LOGITS], nhwc(expected["aux"])) <= 1e-4


@pytest.mark.parametrize("name, aux", [("deeplabv3_resnet101", False), ("deeplabv3_resnet50", False),
                                       ("fcn_resnet101", True), ("fcn_resnet101", False), ("fcn_resnet50", False)])
def test_every_key_of_the_other_variants_lands_once(name, aux):
    ref = _segmentation(name, aux, num_classes=3)
    variables = convert(name, ref.state_dict())
    assert ("aux_classifier" in variables["params"]) == aux
    n_params = sum(np.prod(a.shape) for a in jax.tree.leaves(variables["params"]))
    assert n_params == sum(p.numel() for p in ref.parameters())
    sd = ref.state_dict()
    # a conv weight arrives transposed to HWIO, BN statistics in batch_stats
    np.testing.assert_array_equal(variables["params"]["backbone"]["layer3"]["1"]["conv2"]["kernel"],
                                  sd["backbone.layer3.1.conv2.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["classifier"]["bn"]["var"],
                                  sd["classifier.1.running_var" if "fcn" in name else "classifier.2.running_var"].numpy())
    assert model_config(name, sd) == {"model": name, "num_classes": 3, "aux_loss": aux}


@pytest.mark.slow
def test_converted_deeplabv3_resnet101_gives_torchvision_logits(np_rng):
    ref = _segmentation("deeplabv3_resnet101", aux=True, seed=1)
    model = create_model("deeplabv3_resnet101", num_classes=4, aux_loss=True)
    x = np_rng.standard_normal((1, 33, 43, 3)).astype(np.float32)
    out = jax.jit(model.apply)(convert("deeplabv3_resnet101", ref.state_dict()), x)
    with torch.no_grad():
        expected = ref(nchw(x))
    assert rel_err(out[LOGITS], nhwc(expected["out"])) <= 1e-4
    assert rel_err(out[AUX_LOGITS], nhwc(expected["aux"])) <= 1e-4


def test_resnet_classifier_conversion_drops_fc_only():
    sd = torchvision.models.resnet18().state_dict()
    variables = convert("resnet18", sd)
    assert "fc" not in variables["params"]
    np.testing.assert_array_equal(variables["params"]["layer2"]["0"]["downsample"]["1"]["scale"],
                                  sd["layer2.0.downsample.1.weight"].numpy())
    assert model_config("resnet18", sd)["backbone_only"]


@pytest.fixture(scope="module")
def resnet18_state():
    return dict(torchvision.models.resnet18().state_dict())


def test_converted_arrays_do_not_alias_torch_buffers():
    net = torchvision.models.resnet18()
    variables = convert("resnet18", net.state_dict())
    with torch.no_grad():
        net.bn1.running_var.add_(1.0)  # what a train-mode torch forward does in place
        net.conv1.weight.zero_()
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], np.ones(64, np.float32))
    assert np.abs(variables["params"]["conv1"]["kernel"]).max() > 0


def test_missing_key_is_named(resnet18_state):
    sd = dict(resnet18_state)
    del sd["layer3.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing keys .*batch_stats/layer3/1/bn2/var"):
        convert("resnet18", sd)


def test_unexpected_key_is_named(resnet18_state):
    sd = dict(resnet18_state)
    sd["layer5.0.conv1.weight"] = np.zeros((64, 64, 3, 3), np.float32)
    sd["layer1.0.bn1.momentum"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=r"unexpected keys .*layer1\.0\.bn1\.momentum.*layer5\.0\.conv1\.weight"):
        convert("resnet18", sd)


def test_shape_mismatch_and_wrong_model_are_named(resnet18_state):
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight: \(1, 1, 64, 64\) -> params/layer1/0/conv1/kernel"):
        convert("resnet18", {**resnet18_state, "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"missing keys .*params/layer1/2/conv1/kernel"):
        convert("resnet34", resnet18_state)
    with pytest.raises(ValueError, match=r"missing keys .*backbone/layer1/0/conv3/kernel"):
        convert("fcn_resnet50", {**{f"backbone.{k}": v for k, v in resnet18_state.items() if "fc" not in k},
                                 "classifier.4.weight": np.zeros((3, 128, 1, 1))})
    with pytest.raises(ValueError, match="classifier.4.weight"):
        convert("deeplabv3_resnet50", {})
    with pytest.raises(ValueError, match="supported: resnet18"):
        convert("deeplabv3plus_resnet50", resnet18_state)


def test_merge_backbone_puts_imagenet_weights_into_a_fresh_model(resnet18_state, np_rng):
    model = create_model("deeplabv3plus_resnet18", num_classes=3, head_channels=8)
    fresh = random_variables(model, (1, 33, 33, 3), np_rng)
    backbone = convert("resnet18", resnet18_state)
    merged = merge_backbone(fresh, backbone)
    for col in ("params", "batch_stats"):
        jax.tree.map(np.testing.assert_array_equal, merged[col]["backbone"], backbone[col])
        jax.tree.map(np.testing.assert_array_equal, merged[col]["classifier"], fresh[col]["classifier"])
    out = jax.jit(model.apply)(merged, np_rng.standard_normal((1, 33, 33, 3)).astype(np.float32))
    assert np.isfinite(out[LOGITS]).all()
    narrow = random_variables(create_model("deeplabv3plus_resnet18", num_classes=3, backbone_width=8,
                                           head_channels=8), (1, 33, 33, 3), np_rng)
    with pytest.raises(ValueError, match=r"conv1/kernel: \(7, 7, 3, 64\) vs \(7, 7, 3, 8\)"):
        merge_backbone(narrow, backbone)
    with pytest.raises(ValueError, match="names"):
        merge_backbone(fresh, convert("resnet34", torchvision.models.resnet34().state_dict()))


@pytest.mark.slow  # 134M parameters: torch init, conversion and a zero model tree (~1.5 GB peak)
def test_vgg16_conversion_is_checked_and_merges_into_fcn(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.vgg16()
    sd = net.state_dict()
    variables = convert("vgg16", sd)
    assert variables["batch_stats"] == {} and "classifier" not in variables["params"]
    np.testing.assert_array_equal(variables["params"]["conv3_2"]["kernel"],
                                  sd["features.12.weight"].numpy().transpose(2, 3, 1, 0))
    # fc6 as a 7x7 conv on one 7x7x512 window = torchvision's Linear on the flattened (C, H, W) map
    x = np.random.default_rng(0).standard_normal((7, 7, 512)).astype(np.float32)
    with torch.no_grad():
        dense = net.classifier[0](torch.from_numpy(x.transpose(2, 0, 1).reshape(1, -1))).numpy()[0]
    fc6 = variables["params"]["fc6"]
    conv = np.einsum("hwc,hwco->o", x, fc6["kernel"], dtype=np.float64) + fc6["bias"]
    assert rel_err(conv, dense) <= 1e-5
    with pytest.raises(ValueError, match=r"unexpected keys: \['features\.99\.scale'\]"):
        convert("vgg16", {**sd, "features.99.scale": np.zeros(1)})
    with pytest.raises(ValueError, match="state dict has no 'features.1.weight'"):
        convert("vgg16_bn", sd)  # plain vgg16 weights for the BN variant
    model = create_model("fcn32s_vgg16", num_classes=3)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    fresh = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
    merged = merge_backbone(fresh, variables)
    jax.tree.map(np.testing.assert_array_equal, merged["params"]["backbone"], variables["params"])
    assert model_config("vgg16", sd) == {"model": "vgg16", "backbone_only": True, "batch_norm": False}


def test_save_and_load_converted_round_trip(tmp_path, resnet18_state):
    variables = convert("resnet18", resnet18_state)
    save_converted(str(tmp_path / "out"), variables, model_config("resnet18", resnet18_state))
    loaded = load_converted(str(tmp_path / "out"))
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    assert read_converted_config(str(tmp_path / "out"))["model"] == "resnet18"
    with pytest.raises(ValueError, match="already exists"):
        save_converted(str(tmp_path / "out"), variables, {})
    with pytest.raises(ValueError, match="no converted weights"):
        load_converted(str(tmp_path / "elsewhere"))
