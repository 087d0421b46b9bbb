"""segjax.ops.paste_masks vs torchvision's paste_masks_in_image (roi_heads.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from segjax.ops import paste_masks


def _boxes(np_rng, k, h, w):
    """Boxes as Mask R-CNN returns them: clipped to the image, from tiny to image-sized."""
    xy = np_rng.uniform(-10, max(h, w), (k, 2))
    wh = np.exp(np_rng.uniform(np.log(0.05), np.log(1.5 * max(h, w)), (k, 2)))
    b = np.concatenate([xy, xy + wh], 1)
    b[:, 0::2] = np.clip(b[:, 0::2], 0, w)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, h)
    edge = [[0, 0, w, h], [w - 0.5, h - 0.5, w, h], [3.0, 4.0, 3.0, 9.0], [2.2, 2.7, 5.9, 3.1]]
    return np.concatenate([b, edge]).astype(np.float32)


def _reference(masks, boxes, size):
    return paste_masks_in_image(torch.tensor(masks)[:, None], torch.tensor(boxes), size)[:, 0].numpy()


def test_matches_torchvision(np_rng):
    h, w = 37, 52
    boxes = _boxes(np_rng, 40, h, w)
    masks = np_rng.uniform(size=(len(boxes), 28, 28)).astype(np.float32)
    out = np.asarray(paste_masks(masks, boxes, (h, w)))
    ref = _reference(masks, boxes, (h, w))
    assert out.shape == (len(boxes), h, w)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6)
    # Supports are identical (pixels outside a box's truncated, expanded extent are exactly 0).
    np.testing.assert_array_equal(out == 0, ref == 0)
    assert (ref > 0).sum() > 1000


def test_batched_jit_vmap_and_other_sizes(np_rng):
    n, d, h, w = 2, 5, 24, 19
    boxes = np.stack([_boxes(np_rng, d - 4, h, w) for _ in range(n)])
    masks = np_rng.uniform(size=(n, d, 14, 14)).astype(np.float32)
    out = jax.jit(lambda m, b: paste_masks(m, b, (h, w)))(masks, boxes)
    assert out.shape == (n, d, h, w)
    for i in range(n):
        np.testing.assert_allclose(out[i], _reference(masks[i], boxes[i], (h, w)), rtol=1e-5, atol=2e-6)
    vm = jax.vmap(lambda m, b: paste_masks(m, b, (h, w)))(masks, boxes)
    np.testing.assert_allclose(vm, out, rtol=1e-5, atol=1e-6)
    # padding=2 and an empty set of masks.
    np.testing.assert_allclose(
        paste_masks(masks[0], boxes[0], (h, w), padding=2),
        paste_masks_in_image(torch.tensor(masks[0])[:, None], torch.tensor(boxes[0]), (h, w), padding=2)[:, 0],
        rtol=1e-5, atol=2e-6)
    assert paste_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (h, w)).shape == (0, h, w)


def test_gradient_is_the_transposed_paste(np_rng):
    # The paste is linear in the mask: <paste(m), c> = <m, grad>; check against torch autograd.
    h, w = 20, 23
    boxes = _boxes(np_rng, 3, h, w)
    masks = np_rng.uniform(size=(len(boxes), 28, 28)).astype(np.float32)
    ct = np_rng.normal(size=(len(boxes), h, w)).astype(np.float32)
    _, vjp = jax.vjp(lambda m: paste_masks(m, boxes, (h, w)), jnp.asarray(masks))
    tm = torch.tensor(masks, dtype=torch.float64, requires_grad=True)
    paste_masks_in_image(tm[:, None], torch.tensor(boxes), (h, w))[:, 0].backward(torch.tensor(ct, dtype=torch.float64))
    np.testing.assert_allclose(vjp(jnp.asarray(ct))[0], tm.grad.numpy(), rtol=1e-4, atol=1e-5)
