"""`synthetic_shapes/restyled`: the same scenes as `clean` in another rendering style (the
domain-adaptation target), and the other configs untouched by it."""

import numpy as np
import pytest
from skimage import color

from segjax.data.builders.synthetic_shapes import (BUILDER_CONFIGS, RESTYLE_HUE,
                                                   RESTYLE_SATURATION, RESTYLE_VALUE, generate)

CONFIGS = {c.name: c for c in BUILDER_CONFIGS}


@pytest.mark.parametrize("index", [0, 1, 2])
def test_restyled_is_clean_scene_in_another_style(index):
    clean = generate(CONFIGS["clean"], "train", index)
    styled = generate(CONFIGS["restyled"], "train", index)
    for key in ("label", "instances", "clean_label"):
        np.testing.assert_array_equal(styled[key], clean[key])
    objects = clean["clean_label"][..., 0] > 0
    hsv_clean = color.rgb2hsv(clean["image"])[objects]
    hsv_styled = color.rgb2hsv(styled["image"])[objects]
    turn = (hsv_styled[:, 0] - hsv_clean[:, 0] + 0.5) % 1.0 - 0.5  # circular, in turns
    # The +-18 checker moves single pixels' hue; the median follows the turn.
    assert abs(np.median(turn) * 360 - RESTYLE_HUE) < 3.0
    assert abs(np.median(hsv_styled[:, 1] / hsv_clean[:, 1]) - RESTYLE_SATURATION) < 0.08
    assert abs(np.median(hsv_styled[:, 2] / hsv_clean[:, 2]) - RESTYLE_VALUE) < 0.08
    # Striped background (period 5-9 px): neighbours differ by a large part of the background's
    # spread, unlike clean's smooth texture (periods of 18 px and more): ~0.8-1.5 vs ~0.2-0.3.
    assert _roughness(styled["image"], ~objects) > 2.5 * _roughness(clean["image"], ~objects)


def _roughness(image, region):
    """Mean absolute difference of horizontal and vertical neighbours in `region`, over the
    region's standard deviation (intensity = sum of channels)."""
    g = image.astype(float).sum(-1)
    dx = np.abs(np.diff(g, axis=1))[region[:, 1:] & region[:, :-1]]
    dy = np.abs(np.diff(g, axis=0))[region[1:] & region[:-1]]
    return (dx.mean() + dy.mean()) / g[region].std()


def test_restyle_is_a_domain_not_a_difficulty():
    assert "restyle" not in CONFIGS["all"].factors
    with pytest.raises(ValueError, match="unknown"):
        type(CONFIGS["clean"])(name="x", factors=("restile",))
