"""segjax.visualize against hand-computed pixels and a per-pixel Python loop."""

import numpy as np
import pytest
from PIL import Image

from segjax import visualize

PALETTE = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0]], np.uint8)


def test_colorize_worked_example():
    mask = np.array([[0, 1], [2, 255]])
    out = visualize.colorize(mask, PALETTE, ignore_label=255)
    expected = np.array([[[0, 0, 0], [128, 0, 0]], [[0, 128, 0], [255, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8


def test_overlay_matches_pixel_loop(np_rng):
    h, w = 5, 7
    image = np_rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np_rng.integers(0, 3, (h, w))
    mask[0, 0] = 255
    out = visualize.overlay(image, mask, PALETTE, alpha=0.3, ignore_label=255)
    for i in range(h):
        for j in range(w):
            if mask[i, j] == 255:
                want = image[i, j]
            else:
                want = np.rint(0.7 * image[i, j].astype(float) + 0.3 * PALETTE[mask[i, j]])
            np.testing.assert_allclose(out[i, j], want, atol=1)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="outside"):
        visualize.colorize(np.array([[3]]), PALETTE)
    with pytest.raises(ValueError, match="palette"):
        visualize.colorize(np.array([[0]]), PALETTE[:, :2])
    with pytest.raises(ValueError, match="image"):
        visualize.overlay(np.zeros((2, 3, 3), np.uint8), np.zeros((3, 2), int), PALETTE)


def test_save_png_roundtrip_and_side_by_side(tmp_path, np_rng):
    a = np_rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    b = np_rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    grid = visualize.side_by_side(a, b, gap=2)
    assert grid.shape == (4, 10, 3)
    np.testing.assert_array_equal(grid[:, :3], a)
    np.testing.assert_array_equal(grid[:, 3:5], 255)
    np.testing.assert_array_equal(grid[:, 5:], b)
    path = tmp_path / "sub" / "x.png"
    visualize.save_png(str(path), grid)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)


def test_to_uint8_image_stretches_range():
    img = np.array([[[-1.0, 0.0, 1.0]]])
    np.testing.assert_array_equal(visualize.to_uint8_image(img), [[[0, 128, 255]]])


def test_legend_with_more_classes_than_rows_of_three_pixels():
    """60 classes in a 120-pixel legend: rows of 2 pixels, each filled with its class's colour
    (PIL refused the inset swatch of a row under 3 pixels: found on PASCAL-Context's 60 classes
    with a 32-pixel evaluation panel)."""
    palette = np.stack([np.arange(60), 255 - np.arange(60), np.full(60, 7)], axis=1).astype(np.uint8)
    names = [f"c{k}" for k in range(60)]
    out = visualize.legend(names, palette, height=120, width=40)
    for k in range(60):
        np.testing.assert_array_equal(out[2 * k:2 * k + 2, 2:4], np.broadcast_to(palette[k], (2, 2, 3)))
    assert (out[:, 4:] == 255).all()  # no text at this size
    tall = visualize.legend(names[:2], palette, height=28, width=40)  # 14-pixel rows: inset swatch
    np.testing.assert_array_equal(tall[1:13, 2:14], np.broadcast_to(palette[0], (12, 12, 3)))
    assert (tall[0, :] == 255).all() and (tall[1:13, 14] == 255).all()
    visualize.legend(names, palette, height=25)  # rows of 1 pixel, the rest off the canvas
