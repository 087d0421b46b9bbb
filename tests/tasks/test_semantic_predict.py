"""segjax.tasks.semantic_predict against torch (resize/flip/softmax TTA) and numpy loops (tiles).

The "model" is a random 3x3 convolution, so the torch reference is one `F.conv2d` and the two
implementations share nothing but the weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax.tasks import semantic_predict

K = 3


def conv_apply(variables, images):
    """A 'model': 3x3 SAME conv with bias, images [N,H,W,C] -> logits [N,H,W,K]."""
    y = jax.lax.conv_general_dilated(images, variables["w"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision="highest")
    return y + variables["b"]


def torch_conv(w, b, x):
    """Same conv in torch, NHWC numpy in and out."""
    xt = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).double()
    wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).double()
    y = F.conv2d(xt, wt, torch.from_numpy(np.array(b)).double(), padding=1)
    return y


@pytest.fixture
def conv_vars(np_rng):
    return {"w": jnp.asarray(np_rng.normal(size=(3, 3, 2, K)), jnp.float32),
            "b": jnp.asarray(np_rng.normal(size=(K,)), jnp.float32)}


def test_window_offsets_worked_examples():
    assert semantic_predict.window_offsets(10, 4, 3) == [0, 3, 6]
    assert semantic_predict.window_offsets(10, 4, 4) == [0, 4, 6]
    assert semantic_predict.window_offsets(5, 8, 2) == [0]
    with pytest.raises(ValueError, match="stride"):
        semantic_predict.window_offsets(5, 3, 0)


def test_sliding_window_matches_tile_loop(np_rng, conv_vars):
    x = np_rng.normal(size=(2, 11, 9, 2)).astype(np.float32)
    window, stride = 5, 3
    got = jax.jit(lambda v, x: semantic_predict.sliding_window_logits(
        conv_apply, v, x, window=window, stride=stride))(conv_vars, x)
    # Reference: every tile through torch (zero padding at the *tile* border), averaged.
    total = np.zeros((2, 11, 9, K))
    count = np.zeros((11, 9))
    for y in semantic_predict.window_offsets(11, window, stride):
        for xo in semantic_predict.window_offsets(9, window, stride):
            tile = torch_conv(conv_vars["w"], conv_vars["b"], x[:, y:y + window, xo:xo + window])
            total[:, y:y + window, xo:xo + window] += tile.permute(0, 2, 3, 1).numpy()
            count[y:y + window, xo:xo + window] += 1
    np.testing.assert_allclose(got, total / count[None, :, :, None], rtol=1e-5, atol=1e-5)


def test_tta_matches_torch_interpolate_and_flip(np_rng, conv_vars):
    x = np_rng.normal(size=(2, 9, 7, 2)).astype(np.float32)
    scales = (0.75, 1.0, 1.5)
    got = semantic_predict.predict_probs(conv_apply, conv_vars, jnp.asarray(x), scales=scales, flip=True)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).double()
    want = 0
    for s in scales:
        size = (round(s * 9), round(s * 7))
        xs = F.interpolate(xt, size=size, mode="bilinear", align_corners=False) if s != 1 else xt
        for flip in (False, True):
            xi = torch.flip(xs, dims=[3]) if flip else xs
            logits = torch_conv(conv_vars["w"], conv_vars["b"], xi.permute(0, 2, 3, 1).numpy())
            if flip:
                logits = torch.flip(logits, dims=[3])
            logits = F.interpolate(logits, size=(9, 7), mode="bilinear", align_corners=False)
            want = want + torch.softmax(logits, dim=1)
    want = (want / 6).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.sum(got, -1), 1.0, atol=1e-5)


def test_plain_prediction_is_softmax(np_rng, conv_vars):
    x = jnp.asarray(np_rng.normal(size=(1, 6, 5, 2)), jnp.float32)
    got = semantic_predict.predict_probs(conv_apply, conv_vars, x)
    np.testing.assert_allclose(got, jax.nn.softmax(conv_apply(conv_vars, x)), rtol=1e-6, atol=1e-6)
