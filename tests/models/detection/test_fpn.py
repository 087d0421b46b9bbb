"""segjax.models.detection.fpn.FPN vs torchvision's FeaturePyramidNetwork + LastLevelMaxPool."""

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from segjax.models.detection.fpn import FPN


def fpn_variables_from_torch(tv_fpn) -> dict:
    """torchvision FPN weights -> segjax FPN params (inner_blocks.i.0 -> inner_i, ...)."""
    params = {}
    for kind, blocks in (("inner", tv_fpn.inner_blocks), ("layer", tv_fpn.layer_blocks)):
        for i, block in enumerate(blocks):
            conv = block[0]
            params[f"{kind}_{i}"] = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0),
                                     "bias": conv.bias.detach().numpy()}
    return {"params": params}


@pytest.mark.parametrize("sizes", [[(16, 12), (8, 6), (4, 3), (2, 2)],    # exact halving
                                   [(15, 11), (8, 6), (4, 3), (2, 2)]])  # ceil sizes (odd input)
def test_matches_torchvision(np_rng, sizes):
    channels = [8, 16, 24, 32]
    torch.manual_seed(0)
    tv = FeaturePyramidNetwork(channels, 12, extra_blocks=LastLevelMaxPool()).eval()
    for p in tv.parameters():  # biases are zero-initialised: make them count
        torch.nn.init.normal_(p, std=0.3)
    feats = {f"layer{i + 1}": np_rng.normal(size=(2, h, w, c)).astype(np.float32)
             for i, ((h, w), c) in enumerate(zip(sizes, channels))}
    model = FPN(out_channels=12)
    variables = fpn_variables_from_torch(tv)
    shapes = jax.eval_shape(model.init, jax.random.key(0), feats)
    assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, variables)
    out = jax.jit(model.apply)(variables, feats)
    with torch.no_grad():
        ref = tv(OrderedDict((str(i), torch.tensor(v).permute(0, 3, 1, 2)) for i, v in enumerate(feats.values())))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"] and list(ref) == ["0", "1", "2", "3", "pool"]
    for (name, y), (tv_name, ty) in zip(out.items(), ref.items()):
        np.testing.assert_allclose(y, ty.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4, err_msg=name)
    # Gradients flow to every input level.
    grads = jax.grad(lambda f: sum(jnp.sum(v ** 2) for v in model.apply(variables, f).values()))(feats)
    assert all(float(jnp.abs(g).max()) > 0 for g in grads.values())


def test_init_is_torchvisions_kaiming_uniform():
    feats = {f"layer{i + 1}": jnp.zeros((1, 2, 2, 64)) for i in range(4)}
    params = FPN(out_channels=256).init(jax.random.key(0), feats)["params"]
    k = np.asarray(params["layer_0"]["kernel"])  # fan_in = 3 * 3 * 256, bound sqrt(3 / fan_in)
    bound = np.sqrt(3.0 / (9 * 256))
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound
    np.testing.assert_allclose(k.std(), bound / np.sqrt(3), rtol=0.02)
    assert not np.asarray(params["inner_0"]["bias"]).any()


def test_avg_fusion_is_detectron2s(np_rng):
    """`fuse_type="avg"` (detectron2's FPN with FUSE_TYPE avg, RetinaNet/TensorMask): each lateral +
    upsampled top-down sum halved before its 3x3 conv, transcribed in torch on torchvision's convs."""
    channels, sizes = [8, 16, 24, 32], [(16, 24), (8, 12), (4, 6), (2, 3)]
    torch.manual_seed(1)
    tv = FeaturePyramidNetwork(channels, 12).eval()
    for p in tv.parameters():
        torch.nn.init.normal_(p, std=0.3)
    feats = {f"layer{i + 1}": np_rng.normal(size=(2, h, w, c)).astype(np.float32)
             for i, ((h, w), c) in enumerate(zip(sizes, channels))}
    xs = [torch.tensor(v).permute(0, 3, 1, 2) for v in feats.values()]
    with torch.no_grad():
        prev = tv.inner_blocks[-1](xs[-1])
        ref = [tv.layer_blocks[-1](prev)]
        for i in range(len(xs) - 2, -1, -1):
            prev = (tv.inner_blocks[i](xs[i]) + torch.nn.functional.interpolate(prev, scale_factor=2.0,
                                                                                 mode="nearest")) / 2
            ref.insert(0, tv.layer_blocks[i](prev))
    out = jax.jit(FPN(out_channels=12, extra_max_pool=False, fuse_type="avg").apply)(fpn_variables_from_torch(tv),
                                                                                     feats)
    assert list(out) == ["p2", "p3", "p4", "p5"]
    for y, ty in zip(out.values(), ref):
        np.testing.assert_allclose(y, ty.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
