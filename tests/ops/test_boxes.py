"""segjax.ops.boxes vs torchvision.ops (box_area, box_iou, clip, remove_small_boxes) and BoxCoder."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from segjax.ops import (box_area, box_iou, clip_boxes, decode_boxes, encode_boxes,
                        remove_small_boxes)
from segjax.ops.boxes import BBOX_XFORM_CLIP


def _boxes(np_rng, k, lo=-20.0, hi=120.0, max_wh=60.0):
    xy = np_rng.uniform(lo, hi, (k, 2))
    wh = np_rng.uniform(0.0, max_wh, (k, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_area_iou_match_torchvision_values_and_gradients(np_rng):
    a = _boxes(np_rng, 7)
    b = np.concatenate([_boxes(np_rng, 5), a[:2], [[10, 10, 10, 30]]]).astype(np.float32)  # dup + empty
    np.testing.assert_array_equal(box_area(a), torchvision.ops.box_area(torch.tensor(a)).numpy())
    iou = box_iou(a, b)
    ref = torchvision.ops.box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_array_equal(iou, ref)  # same float32 operation order: bit-identical
    np.testing.assert_allclose(np.diag(iou[:2, 5:7]), 1.0)
    assert (ref > 0).sum() > 3 and (ref == 0).sum() > 3  # overlapping and disjoint pairs
    # Gradients against torch float64 autograd (with a random cotangent).
    ct = np_rng.normal(size=iou.shape)
    _, vjp = jax.vjp(box_iou, jnp.asarray(a), jnp.asarray(b))
    ga, gb = vjp(jnp.asarray(ct, jnp.float32))
    ta = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    torchvision.ops.box_iou(ta, tb).backward(torch.tensor(ct))
    np.testing.assert_allclose(ga, ta.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=1e-4, atol=1e-5)
    # Batched leading dims.
    np.testing.assert_array_equal(box_iou(np.stack([a, a]), np.stack([b, b]))[1], iou)


def test_clip_and_remove_small_boxes(np_rng):
    boxes = _boxes(np_rng, 40, lo=-50, hi=150, max_wh=5.0)
    size = (61, 83)
    np.testing.assert_array_equal(
        clip_boxes(boxes, size), torchvision.ops.clip_boxes_to_image(torch.tensor(boxes), size).numpy())
    for min_size in (1e-3, 1.0, 2.5):
        mask = np.asarray(remove_small_boxes(boxes, min_size))
        ref = torchvision.ops.remove_small_boxes(torch.tensor(boxes), min_size).numpy()
        np.testing.assert_array_equal(np.flatnonzero(mask), ref)
    # Exactly min_size wide is kept (>=), as torchvision.
    assert bool(remove_small_boxes(np.array([0, 0, 2.0, 3.0], np.float32), 2.0))
    assert jax.jit(lambda b: clip_boxes(b, size))(boxes).shape == boxes.shape


def test_box_coder_matches_torchvision(np_rng):
    weights = (10.0, 10.0, 5.0, 5.0)
    coder = BoxCoder(weights)
    ref_boxes = _boxes(np_rng, 30, max_wh=50.0) + np.array([0, 0, 1, 1], np.float32)
    proposals = _boxes(np_rng, 30, max_wh=50.0) + np.array([0, 0, 1, 1], np.float32)
    enc = encode_boxes(ref_boxes, proposals, weights)
    tenc = coder.encode_single(torch.tensor(ref_boxes), torch.tensor(proposals)).numpy()
    np.testing.assert_allclose(enc, tenc, rtol=1e-6, atol=1e-6)
    # Decode per-class deltas [K, C*4] like the box predictor, including huge dw/dh (clamped).
    deltas = np_rng.normal(scale=3.0, size=(30, 3, 4)).astype(np.float32)
    deltas[0, 0, 2:] = 100.0
    dec = decode_boxes(deltas, proposals[:, None, :], weights)
    tdec = coder.decode_single(torch.tensor(deltas.reshape(30, 12)), torch.tensor(proposals))
    np.testing.assert_allclose(dec, tdec.numpy().reshape(30, 3, 4), rtol=1e-5, atol=1e-4)
    assert np.isfinite(dec).all()
    w0 = proposals[0, 2] - proposals[0, 0]
    np.testing.assert_allclose(dec[0, 0, 2] - dec[0, 0, 0], w0 * math.exp(BBOX_XFORM_CLIP), rtol=1e-5)
    # Round trip: decode(encode(b, p), p) == b; RPN's unit weights are the default.
    np.testing.assert_allclose(decode_boxes(enc, proposals, weights), ref_boxes, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        decode_boxes(encode_boxes(ref_boxes, proposals), proposals), ref_boxes, rtol=1e-4, atol=1e-3)


def test_box_coder_gradients_match_torch(np_rng):
    weights = (10.0, 10.0, 5.0, 5.0)
    coder = BoxCoder(weights)
    proposals = _boxes(np_rng, 6, max_wh=30.0) + np.array([0, 0, 2, 2], np.float32)
    deltas = np_rng.normal(size=(6, 4)).astype(np.float32)
    ct = np_rng.normal(size=(6, 4)).astype(np.float32)
    _, vjp = jax.vjp(lambda d, p: decode_boxes(d, p, weights), jnp.asarray(deltas), jnp.asarray(proposals))
    gd, gp = vjp(jnp.asarray(ct))
    td = torch.tensor(deltas, dtype=torch.float64, requires_grad=True)
    tp = torch.tensor(proposals, dtype=torch.float64, requires_grad=True)
    coder.decode_single(td, tp).backward(torch.tensor(ct, dtype=torch.float64))
    np.testing.assert_allclose(gd, td.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gp, tp.grad.numpy(), rtol=1e-4, atol=1e-4)
    targets = _boxes(np_rng, 6, max_wh=30.0) + np.array([0, 0, 2, 2], np.float32)
    _, vjp = jax.vjp(lambda t: encode_boxes(t, proposals, weights), jnp.asarray(targets))
    tt = torch.tensor(targets, dtype=torch.float64, requires_grad=True)
    coder.encode_single(tt, torch.tensor(proposals, dtype=torch.float64)).backward(
        torch.tensor(ct, dtype=torch.float64))
    np.testing.assert_allclose(vjp(jnp.asarray(ct))[0], tt.grad.numpy(), rtol=1e-4, atol=1e-4)
