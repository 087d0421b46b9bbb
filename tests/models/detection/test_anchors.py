"""segjax.models.detection.anchors vs torchvision's AnchorGenerator: exactly equal."""

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from segjax.models.detection.anchors import (DEFAULT_ASPECT_RATIOS, DEFAULT_SIZES, anchors_for,
                                             cell_anchors)


@pytest.mark.parametrize("image_size", [(128, 128), (96, 160), (800, 1216)])
def test_equal_to_torchvision(image_size):
    h, w = image_size
    feature_sizes = [(h // s, w // s) for s in (4, 8, 16, 32, 64)]
    ours = anchors_for(image_size, feature_sizes)
    gen = AnchorGenerator(DEFAULT_SIZES, DEFAULT_ASPECT_RATIOS)
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    maps = [torch.zeros(1, 1, fh, fw) for fh, fw in feature_sizes]
    ref = gen(images, maps)[0].numpy()
    got = np.concatenate(ours)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    assert [len(a) for a in ours] == [fh * fw * 3 for fh, fw in feature_sizes]


def test_cell_anchors_rounding_and_order():
    # Several sizes per level and ratios whose half-extents land on .5 (rounded half to even).
    sizes, ratios = (32, 45, 91), (0.25, 0.5, 1.0, 2.0, 3.0)
    ref = AnchorGenerator((sizes,), (ratios,)).cell_anchors[0].numpy()
    np.testing.assert_array_equal(cell_anchors(sizes, ratios), ref)
    # Ratio-major: the first len(sizes) anchors share ratio 0.25 (wide boxes: w > h).
    c = cell_anchors(sizes, ratios)
    assert (c[:3, 2] - c[:3, 0] > c[:3, 3] - c[:3, 1]).all()
