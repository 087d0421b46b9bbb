"""segjax.inference.sliding_window against monai.inferers.sliding_window_inference (test-only).

The window forward is a fixed random 3x3(x3) convolution with zero padding inside the window plus
a tanh, written once in JAX and once in torch: its output near a window's border depends on where
the window lies, so a misplaced window, a wrong weight or a wrong crop changes the values. The 2-D
case adds a ramp over the window's own coordinates, which a shifted window cannot reproduce.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference as monai_sliding_window

from segjax.inference import gaussian_importance_map, sliding_window_inference, window_starts
from segjax.inference.sliding_window import _add_windows

RNG = np.random.default_rng(28)
W3 = RNG.normal(size=(3, 3, 3, 2, 3)).astype(np.float32) / 4  # DHWIO
W2 = RNG.normal(size=(3, 3, 2, 3)).astype(np.float32) / 2  # HWIO
DN3, DN2 = ("NDHWC", "DHWIO", "NDHWC"), ("NHWC", "HWIO", "NHWC")


def _conv(x, w, dn):
    return jnp.tanh(jax.lax.conv_general_dilated(x, w, (1,) * (x.ndim - 2), "SAME",
                                                 dimension_numbers=dn))


def _ramp(roi):
    return np.add.outer(np.arange(roi[0]), 0.1 * np.arange(roi[1])).astype(np.float32)[..., None]


conv3 = jax.jit(functools.partial(_conv, w=W3, dn=DN3))


@functools.partial(jax.jit, static_argnums=1)
def conv2_ramp(x, roi):
    return _conv(x, W2, DN2) + _ramp(roi)


def torch_conv3(x):
    return torch.tanh(torch.nn.functional.conv3d(x, torch.from_numpy(W3).permute(4, 3, 0, 1, 2),
                                                 padding=1))


def torch_conv2_ramp(x):
    y = torch.tanh(torch.nn.functional.conv2d(x, torch.from_numpy(W2).permute(3, 2, 0, 1),
                                              padding=1))
    return y + torch.from_numpy(_ramp(x.shape[2:])).permute(2, 0, 1)


def monai_reference(volume, roi, predictor, **kwargs):
    """MONAI on channels-last numpy in and out, all windows in one batch (each window is
    predicted on its own either way; fewer torch calls keep the test fast)."""
    perm = (0, volume.ndim - 1, *range(1, volume.ndim - 1))
    out = monai_sliding_window(torch.from_numpy(volume).permute(*perm), roi, 1024, predictor,
                               **kwargs)
    return out.permute(0, *range(2, volume.ndim), 1).numpy()


@pytest.fixture(scope="module")
def volume():
    return RNG.normal(size=(2, 11, 9, 13, 2)).astype(np.float32)  # two cases, odd sizes


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.3, 0.6])
def test_3d_matches_monai(volume, mode, overlap):
    roi = (6, 5, 7)
    ours = sliding_window_inference(conv3, volume, roi, overlap=overlap, mode=mode,
                                    sw_batch_size=3)
    ref = monai_reference(volume, roi, torch_conv3, overlap=overlap, mode=mode)
    assert ours.shape == ref.shape == (2, 11, 9, 13, 3)
    np.testing.assert_allclose(ours, ref, atol=2e-6, rtol=1e-5)


def test_3d_per_axis_overlap_sigma_and_padding_match_monai(volume):
    # roi larger than the volume along D and W: padded with cval (half before) and cropped back.
    roi = (16, 4, 15)
    kwargs = dict(overlap=(0.5, 0.3, 0.0), mode="gaussian", sigma_scale=(0.25, 0.125, 0.5))
    ours = sliding_window_inference(conv3, volume, roi, sw_batch_size=4, cval=0.7, **kwargs)
    ref = monai_reference(volume, roi, torch_conv3, cval=0.7, **kwargs)
    np.testing.assert_allclose(ours, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_2d_position_dependent_matches_monai_values_and_gradients(mode):
    image = RNG.normal(size=(1, 19, 14, 2)).astype(np.float32)
    cot = RNG.normal(size=(1, 19, 14, 3)).astype(np.float32)
    roi = (7, 6)

    def ours(x):
        return sliding_window_inference(lambda w: conv2_ramp(w, roi), x, roi, overlap=0.6,
                                        mode=mode, sw_batch_size=5)

    out, vjp = jax.vjp(ours, jnp.asarray(image))
    (grad,) = vjp(jnp.asarray(cot))
    x = torch.from_numpy(image).permute(0, 3, 1, 2).requires_grad_(True)
    # .clone(): MONAI multiplies the predictor's output in place, which autograd refuses on the
    # output of tanh.
    ref = monai_sliding_window(x, roi, 5, lambda w: torch_conv2_ramp(w).clone(), overlap=0.6,
                               mode=mode)
    ref.backward(torch.from_numpy(cot).permute(0, 3, 1, 2))
    np.testing.assert_allclose(out, ref.detach().permute(0, 2, 3, 1).numpy(), atol=2e-6,
                               rtol=1e-5)
    np.testing.assert_allclose(grad, x.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5, rtol=1e-5)


def test_window_forward_compiles_once_for_every_volume_size():
    traces = []

    @jax.jit
    def forward(windows):
        traces.append(windows.shape)
        return windows[..., :1] * 2.0

    for shape in [(1, 9, 9, 9, 1), (2, 7, 12, 10, 1)]:
        vol = RNG.normal(size=shape).astype(np.float32)
        out = sliding_window_inference(forward, vol, (6, 6, 6), overlap=0.5, sw_batch_size=4)
        np.testing.assert_allclose(out, 2 * vol, rtol=1e-6)  # a linear map is blended exactly
    assert traces == [(4, 6, 6, 6, 1)]


def test_window_update_works_in_place():
    # The accumulator is donated and updated inside one loop: XLA's temporary memory of one
    # window batch's update does not grow with the volume (no copy of the accumulator).
    preds = jax.ShapeDtypeStruct((4, 8, 8, 8, 2), jnp.float32)
    rows = jax.ShapeDtypeStruct((4, 4), jnp.int32)
    importance = jax.ShapeDtypeStruct((8, 8, 8), jnp.float32)
    valid = jax.ShapeDtypeStruct((4,), jnp.float32)
    temps = []
    for side in (16, 64):
        acc = jax.ShapeDtypeStruct((1, side, side, side, 2), jnp.float32)
        stats = _add_windows.lower(acc, preds, rows, importance, valid).compile().memory_analysis()
        temps.append(stats.temp_size_in_bytes)
        assert stats.alias_size_in_bytes == side ** 3 * 2 * 4  # the output aliases the input
    assert temps[1] == temps[0]


def test_importance_map_matches_monai():
    for roi, scale in [((7, 8, 5), 0.125), ((12, 3), (0.3, 0.05)), ((64,), 0.125)]:
        ref = compute_importance_map(roi, mode="gaussian", sigma_scale=scale).numpy()
        np.testing.assert_allclose(gaussian_importance_map(roi, scale), ref, rtol=1e-6)


def test_window_starts_worked_examples():
    assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert window_starts(11, 4, 0.5) == [0, 2, 4, 6, 7]  # the last flush with the border
    assert window_starts(9, 9, 0.5) == [0]
    assert window_starts(5, 3, 0.9) == [0, 1, 2]  # step int(0.3) -> 1


@given(st.integers(1, 40), st.integers(1, 40), st.floats(0, 0.99))
def test_window_starts_match_monai(size, roi, overlap):
    size = max(size, roi)
    step = roi if roi == size else max(int(roi * (1 - overlap)), 1)  # MONAI's _get_scan_interval
    ref = [s[0].start for s in dense_patch_slices((size,), (roi,), (step,))]
    assert window_starts(size, roi, overlap) == ref


@pytest.mark.parametrize("kwargs, match", [
    (dict(roi_size=(4, 4)), "roi_size"),
    (dict(roi_size=(4, 0, 4)), "roi_size"),
    (dict(roi_size=4.5), "roi_size"),
    (dict(roi_size=float("inf")), "roi_size"),
    (dict(overlap=1.0), "overlap"),
    (dict(overlap=float("nan")), "overlap"),
    (dict(overlap=(0.5, 0.5)), "overlap"),
    (dict(mode="linear"), "mode"),
    (dict(sw_batch_size=0), "sw_batch_size"),
    (dict(sigma_scale=-1.0), "sigma_scale"),
    (dict(sigma_scale=float("nan")), "sigma_scale"),
    (dict(apply_fn=lambda w: w[:, ::2]), "apply_fn"),
    (dict(volume=np.zeros((6, 6), np.float32)), "volume"),
])
def test_bad_arguments_raise_by_name(kwargs, match):
    args = dict(apply_fn=conv3, volume=np.zeros((1, 6, 6, 6, 2), np.float32), roi_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sliding_window_inference(args.pop("apply_fn"), args.pop("volume"), args.pop("roi_size"),
                                 **args)


@settings(max_examples=8)  # each new shape compiles the small programs anew
@given(st.tuples(st.integers(1, 3), st.integers(1, 14), st.integers(1, 14)),
       st.tuples(st.integers(1, 9), st.integers(1, 9)), st.floats(0, 0.95),
       st.integers(1, 7), st.sampled_from(["gaussian", "constant"]))
def test_random_2d_configurations_match_monai(shape, roi, overlap, sw_batch_size, mode):
    # Windows larger than the image, more windows per call than there are windows, overlaps
    # close to 1: placement and weights must still be MONAI's.
    image = np.random.default_rng(sum(shape)).normal(size=(*shape, 1)).astype(np.float32)

    def ramp(x):  # position-dependent within the window
        return 2 * x + _ramp(x.shape[1:3])

    ours = sliding_window_inference(jax.jit(ramp), image, roi, overlap=overlap, mode=mode,
                                    sw_batch_size=sw_batch_size)
    ref = monai_reference(image, roi, lambda w: 2 * w + torch.from_numpy(
        _ramp(w.shape[2:])).permute(2, 0, 1), overlap=overlap, mode=mode)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)
