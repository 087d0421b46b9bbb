"""PSPNet vs a torch reference (torchvision ResNet-50 + the authors' pyramid pooling + FCN aux head)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn as tnn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.fcn import FCNHead as TorchFCNHead

from segjax.models import AUX_LOGITS, LOGITS, create_model
from segjax.models.torchvision_import import convert_state_dict, map_fcn_head
from tests.models.tv_reference import (
    PSP_TABLE, TorchPSPHead, check_sync_batchnorm, nchw, nhwc, prefix_map, random_variables, randomize_batchnorm, rel_err)


class TorchPSPNet(tnn.Module):
    def __init__(self, num_classes):
        super().__init__()
        resnet = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
        self.backbone = IntermediateLayerGetter(resnet, {"layer3": "aux", "layer4": "out"})
        self.classifier = TorchPSPHead(2048, num_classes, ch=512)
        self.aux_classifier = TorchFCNHead(1024, num_classes)

    def forward(self, x):
        f = self.backbone(x)
        up = lambda y: F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        return up(self.classifier(f["out"])), up(self.aux_classifier(f["aux"]))


def _path_map(parts):
    top, rest = parts[0], parts[1:]
    if top == "backbone":
        return parts
    sub = map_fcn_head(rest) if top == "aux_classifier" else prefix_map(PSP_TABLE)(rest)
    return None if sub is None else [top, *sub]


def _shapes(model, hw=(33, 35)):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *hw, 3))))


@pytest.fixture(scope="module")
def pspnet_pair():
    torch.manual_seed(0)
    ref = randomize_batchnorm(TorchPSPNet(4), np.random.default_rng(0)).eval()
    model = create_model("pspnet_resnet50", num_classes=4)
    return ref, model, convert_state_dict(ref.state_dict(), _shapes(model), _path_map)


def test_parameter_count_equals_torch_reference(pspnet_pair):
    ref, model, variables = pspnet_pair
    n = sum(np.prod(a.shape) for a in jax.tree.leaves(variables["params"]))
    assert n == sum(p.numel() for p in ref.parameters())  # conversion also proved names/shapes 1:1
    no_aux = _shapes(create_model("pspnet_resnet50", num_classes=4, aux_loss=False))
    assert "aux_classifier" not in no_aux["params"]
    assert sum(np.prod(a.shape) for a in jax.tree.leaves(no_aux["params"])) == n - sum(
        p.numel() for p in ref.aux_classifier.parameters())


def test_logits_match_torch_reference_on_odd_input(pspnet_pair, np_rng):
    ref, model, variables = pspnet_pair
    x = np_rng.standard_normal((1, 57, 71, 3)).astype(np.float32)  # layer4 8x9: uneven 3- and 6-bins
    out = jax.jit(model.apply)(variables, x)
    with torch.no_grad():
        logits, aux = ref(nchw(x))
    assert out[LOGITS].shape == out[AUX_LOGITS].shape == (1, 57, 71, 4)
    assert rel_err(out[LOGITS], nhwc(logits)) <= 1e-4
    assert rel_err(out[AUX_LOGITS], nhwc(aux)) <= 1e-4


def test_train_mode_batch_stats_match_torch_reference(pspnet_pair, np_rng):
    ref, model, variables = pspnet_pair
    ref = copy.deepcopy(ref).train()
    x = np_rng.standard_normal((2, 33, 39, 3)).astype(np.float32)
    _, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                              rngs={"dropout": jax.random.key(0)}))(variables, x)
    with torch.no_grad():
        ref(nchw(x))
    stats = upd["batch_stats"]["classifier"]
    for i in range(4):  # pool_0 normalises N = 2 pooled vectors
        np.testing.assert_allclose(stats[f"pool_{i}"]["bn"]["var"], ref.classifier.stages[i][1].running_var.numpy(),
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["bottleneck"]["bn"]["mean"], ref.classifier.bottleneck[1].running_mean.numpy(),
                               rtol=1e-4, atol=1e-5)


def test_small_variant_trains_with_aux_by_default(np_rng):
    model = create_model("pspnet_resnet18", num_classes=3, backbone_width=8, head_channels=16)
    x = np_rng.standard_normal((2, 29, 43, 3)).astype(np.float32)
    variables = random_variables(model, x.shape, np_rng)
    assert variables["params"]["classifier"]["pool_0"]["conv"]["kernel"].shape == (1, 1, 64, 16)  # 64 / 4 bins
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                rngs={"dropout": jax.random.key(0)}))(variables, x)
    assert out[LOGITS].shape == out[AUX_LOGITS].shape == (2, 29, 43, 3)
    assert np.isfinite(out[LOGITS]).all() and np.isfinite(out[AUX_LOGITS]).all()
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), variables["batch_stats"], upd["batch_stats"])
    assert min(jax.tree.leaves(moved)) > 0


def test_every_batchnorm_is_synchronised_under_pmap(np_rng):
    model = create_model("pspnet_resnet18", num_classes=3, backbone_width=8, head_channels=16)
    check_sync_batchnorm(model, np_rng.standard_normal((4, 27, 31, 3)).astype(np.float32), np_rng)


def test_bad_overrides_raise():
    with pytest.raises(ValueError, match=r"output_stride=4"):
        create_model("pspnet_resnet18", num_classes=3, output_stride=4)
    with pytest.raises(ValueError, match="multi_grid"):
        create_model("pspnet_resnet50", num_classes=3, multi_grid=(1, 2))
    with pytest.raises(ValueError, match="atrous_rates"):
        create_model("pspnet_resnet50", num_classes=3, atrous_rates=(6,))
    with pytest.raises(ValueError, match=r"\(1, 33, 35\)"):
        create_model("pspnet_resnet18", num_classes=3).init(jax.random.key(0), jnp.zeros((1, 33, 35)))
