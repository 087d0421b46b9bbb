"""3D U-Net against a torch transcription of the paper's Fig. 1 (Conv3d + BatchNorm3d + ReLU pairs,
ceil-mode MaxPool3d, ConvTranspose3d up-convolutions, crop and concatenation; it lives in
experiments/benchmarks/torch_unet3d.py, where the step benchmark times it as the twin), with the
flax weights copied in: logits, input and parameter gradients, in eval and in train mode, on an odd
volume. Also the 2x2x2 layers against torch's own ops, and the parameter count at the paper's widths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiments.benchmarks.torch_unet3d import TorchUNet3D
from segjax.models import create_model
from segjax.models.layers3d import UpConv2x, max_pool_2x2x2
from tests.models.tv_reference import random_variables, rel_err
from tests.models.volumetric_reference import compare_with_torch, load_flax, ncdhw, ndhwc, num_params

IN, BASE, DEPTH, K = 2, 2, 2, 3
SHAPE = (2, 5, 6, 7, IN)  # odd and even sizes: 5 -> 3 -> 2 and back up with crops


@pytest.fixture(scope="module")
def tiny():
    """The tiny model, random weights and BatchNorm statistics, the same weights in the transcription."""
    rng = np.random.default_rng(0)
    model = create_model("unet3d", num_classes=K, base_features=BASE, depth=DEPTH, in_channels=IN)
    variables = random_variables(model, SHAPE, rng)
    reference = TorchUNet3D(IN, BASE, DEPTH, K)
    load_flax(reference.layers, variables)
    x = rng.normal(size=SHAPE).astype(np.float32)
    cot = rng.normal(size=SHAPE[:-1] + (K,)).astype(np.float32)
    return model, reference, variables, x, cot


def test_matches_torch_transcription(tiny):
    model, reference, variables, x, cot = tiny
    compare_with_torch(model, reference.layers, reference, variables, x, cot, batch_norm=True, tol=1e-4)


def test_upconv_and_pool_match_torch(np_rng):
    """UpConv2x is F.conv_transpose3d(stride=2) with weight kernel.transpose(4, 3, 0, 1, 2); the pool
    is F.max_pool3d(2, 2, ceil_mode=True); values and input gradients, ties included."""
    x = np_rng.normal(size=(2, 3, 4, 5, 3)).astype(np.float32)
    cot = np_rng.normal(size=(2, 6, 8, 10, 4)).astype(np.float32)
    up = UpConv2x(4)
    variables = {"params": {"kernel": np_rng.normal(size=(2, 2, 2, 4, 3)).astype(np.float32),
                            "bias": np_rng.normal(size=(4,)).astype(np.float32)}}
    y, vjp = jax.vjp(lambda x: up.apply(variables, x), jnp.asarray(x))
    tx = ncdhw(x).requires_grad_(True)
    weight = torch.from_numpy(variables["params"]["kernel"].transpose(4, 3, 0, 1, 2).copy())
    ty = F.conv_transpose3d(tx, weight, torch.from_numpy(variables["params"]["bias"]), stride=2)
    (ty * ncdhw(cot)).sum().backward()
    assert rel_err(y, ndhwc(ty)) < 1e-5
    assert rel_err(vjp(jnp.asarray(cot))[0], ndhwc(tx.grad)) < 1e-5

    # The pool, on distinct values and on integers (ties: the gradient goes to the first maximum
    # of the window, row-major over d, h, w, as torch's).
    for x in (x, np.round(2 * x).astype(np.float32)):
        pooled, vjp = jax.vjp(max_pool_2x2x2, jnp.asarray(x))
        tx = ncdhw(x).requires_grad_(True)
        tp = F.max_pool3d(tx, 2, 2, ceil_mode=True)
        pool_cot = np_rng.normal(size=tp.shape).astype(np.float32)
        (tp * torch.from_numpy(pool_cot)).sum().backward()
        assert pooled.shape == (2, 2, 2, 3, 3)
        np.testing.assert_allclose(pooled, ndhwc(tp), rtol=0, atol=0)
        np.testing.assert_allclose(vjp(jnp.asarray(ndhwc(torch.from_numpy(pool_cot))))[0], ndhwc(tx.grad),
                                   rtol=0, atol=0)


def test_paper_widths_parameter_count():
    """32/64 ... 256/512 channels, 3 input channels and 3 classes (the paper's Xenopus kidney setting):
    19,075,523 parameters (BatchNorm scales and shifts included), as the torch transcription's; no
    weights are materialised on either side."""
    model = create_model("unet3d", num_classes=3)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 8, 3), jnp.float32))
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))
    with torch.device("meta"):
        reference = TorchUNet3D(3, 32, 3, 3)
    assert count == num_params(reference) == 19_075_523


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="depth"):
        create_model("unet3d", num_classes=2, depth=0)
    with pytest.raises(ValueError, match="base_features"):
        create_model("unet3d", num_classes=2, base_features=0)
    model = create_model("unet3d", num_classes=2, base_features=2, depth=1)
    with pytest.raises(ValueError, match=r"NDHWC.*\(1, 8, 8, 3\)"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
