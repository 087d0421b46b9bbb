"""segjax.evaluate against torch (resize/flip/softmax TTA), numpy loops (tiles, confusion).

The "model" in most tests is a random 3x3 convolution, so the torch reference is one
`F.conv2d` and the two implementations share nothing but the weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax import evaluate
from segjax.tasks.semantic import SemanticTask
from segjax.train import parallel
from segjax.train.state import TrainState

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
    assert evaluate.window_offsets(10, 4, 3) == [0, 3, 6]
    assert evaluate.window_offsets(10, 4, 4) == [0, 4, 6]
    assert evaluate.window_offsets(5, 8, 2) == [0]
    with pytest.raises(ValueError, match="stride"):
        evaluate.window_offsets(5, 3, 0)


def test_sliding_window_matches_tile_loop(np_rng, conv_vars):
    x = np_rng.normal(size=(2, 11, 9, 2)).astype(np.float32)
    window, stride = 5, 3
    got = jax.jit(lambda v, x: evaluate.sliding_window_logits(
        conv_apply, v, x, window=window, stride=stride))(conv_vars, x)
    # Reference: every tile through torch (zero padding at the *tile* border), averaged.
    total = np.zeros((2, 11, 9, K))
    count = np.zeros((11, 9))
    for y in evaluate.window_offsets(11, window, stride):
        for xo in evaluate.window_offsets(9, window, stride):
            tile = torch_conv(conv_vars["w"], conv_vars["b"], x[:, y:y + window, xo:xo + window])
            total[:, y:y + window, xo:xo + window] += tile.permute(0, 2, 3, 1).numpy()
            count[y:y + window, xo:xo + window] += 1
    np.testing.assert_allclose(got, total / count[None, :, :, None], rtol=1e-5, atol=1e-5)


def test_tta_matches_torch_interpolate_and_flip(np_rng, conv_vars):
    x = np_rng.normal(size=(2, 9, 7, 2)).astype(np.float32)
    scales = (0.75, 1.0, 1.5)
    got = evaluate.predict_probs(conv_apply, conv_vars, jnp.asarray(x), scales=scales, flip=True)
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
    got = evaluate.predict_probs(conv_apply, conv_vars, x)
    np.testing.assert_allclose(got, jax.nn.softmax(conv_apply(conv_vars, x)), rtol=1e-6, atol=1e-6)


class _ConvModel:
    """Duck-typed stand-in for a segjax model: `apply(variables, images, train)` -> dict, and
    the `axis_name` / `clone` the parallel layer sets (no BatchNorm, so nothing to sync)."""

    def __init__(self, axis_name=None):
        self.axis_name = axis_name

    def clone(self, axis_name=None):
        return _ConvModel(axis_name)

    def apply(self, variables, images, train=False):
        assert train is False
        return {"logits": conv_apply(variables["params"], images)}


def _run(parallelism, conv_vars, batches, *, on_batch=None, **task_kwargs):
    """(metrics, eval step) of `evaluate.evaluate` through `Parallel(parallelism)`."""
    par = parallel.Parallel(parallelism)
    task = SemanticTask(num_classes=K, ignore_label=255, **task_kwargs)
    state = TrainState(step=0, apply_fn=_ConvModel().apply, params=conv_vars, tx=None,
                       opt_state=None, batch_stats={})
    eval_step = par.eval_step(task)
    result = evaluate.evaluate(par, eval_step, par.replicate(state), task, batches,
                               on_batch=on_batch)
    return result, eval_step


def _numpy_confusion(pred, label, valid, heights, widths, k, ignore):
    conf = np.zeros((k, k), np.int64)
    for i in range(len(pred)):
        if not valid[i]:
            continue
        p = pred[i, :heights[i], :widths[i]].ravel()
        g = label[i, :heights[i], :widths[i]].ravel()
        keep = g != ignore
        np.add.at(conf, (g[keep], p[keep]), 1)
    return conf


@pytest.mark.parametrize("mode,parallelism", [("plain", "mesh"), ("plain", "pmap"),
                                              ("tta", "mesh"), ("sliding", "pmap")])
def test_evaluate_confusion_on_four_devices_and_no_recompile(np_rng, conv_vars, mode,
                                                             parallelism):
    """Padded batches on 4 devices (mesh or pmap: the strategies that train): exact int64
    confusion, per-example predictions back in order, one trace for all batches."""
    ignore, pad = 255, 12
    kwargs = {"plain": {}, "tta": {"scales": (0.5, 1.0), "flip": True},
              "sliding": {"window": 8, "stride": 5}}[mode]
    batches, ref = [], np.zeros((K, K), np.int64)
    seen_preds = []
    for _ in range(3):
        b = 4
        heights = np_rng.integers(5, pad + 1, b)
        widths = np_rng.integers(5, pad + 1, b)
        image = np.zeros((b, pad, pad, 2), np.float32)
        label = np.full((b, pad, pad), ignore, np.int32)
        for i in range(b):
            image[i, :heights[i], :widths[i]] = np_rng.normal(size=(heights[i], widths[i], 2))
            label[i, :heights[i], :widths[i]] = np_rng.integers(0, K, (heights[i], widths[i]))
        label[0, 0, 0] = ignore  # an ignored pixel inside an image
        valid = np.array([True, True, True, False])  # last example is batch padding
        batches.append({"image": image, "label": label, "valid": valid, "height": heights,
                        "width": widths})
        probs = evaluate.predict_probs(conv_apply, conv_vars, jnp.asarray(image), **kwargs)
        pred = np.asarray(jnp.argmax(probs, -1))
        ref += _numpy_confusion(pred, label, valid, heights, widths, K, ignore)
        seen_preds.append(pred)
    got_preds = []
    result, eval_fn = _run(parallelism, conv_vars, batches, boundary_iou=False,
                           on_batch=lambda batch, rows: got_preds.append(rows["pred"]), **kwargs)
    tp, gt, pr = np.diag(ref), ref.sum(1), ref.sum(0)
    np.testing.assert_allclose(result["iou_per_class"], tp / (gt + pr - tp))
    assert result["num_pixels"] == ref.sum()
    np.testing.assert_array_equal(np.stack(got_preds), np.stack(seen_preds))
    assert eval_fn.trace_count() == 1


def test_recompile_guard_raises_on_a_second_shape(conv_vars):
    def batch(size):
        return {"image": np.zeros((4, size, size, 2), np.float32),
                "label": np.zeros((4, size, size), np.int32), "valid": np.ones(4, bool)}

    _run("mesh", conv_vars, [batch(8), batch(8)])
    with pytest.raises(RuntimeError, match="traced 2 times"):
        _run("mesh", conv_vars, [batch(8), batch(6)])


def test_boundary_iou_over_mesh_equals_numpy_on_the_unpadded_images(np_rng, conv_vars):
    """Padding and ignored pixels count as outside the image in prediction and labels alike, so
    the padded, sharded result equals Cheng et al.'s definition on each image's own pixels."""
    from tests.metrics.test_segmentation import boundary_reference

    ignore, pad, ratio = 255, 12, 0.1  # boundary width round(0.1 * 12 * sqrt(2)) = 2 pixels
    inter, union = np.zeros(K, np.int64), np.zeros(K, np.int64)
    batches = []
    for _ in range(2):
        b = 4
        heights, widths = np_rng.integers(6, pad + 1, b), np_rng.integers(6, pad + 1, b)
        # Blocky images, so that predictions form regions that can run on into the padding
        # (where the model sees zeros and predicts one class everywhere).
        image = np.zeros((b, pad, pad, 2), np.float32)
        label = np.full((b, pad, pad), ignore, np.int32)
        for i in range(b):
            h, w = heights[i], widths[i]
            blocks = 3 * np_rng.normal(size=(3, 3, 2))
            image[i, :h, :w] = np.repeat(np.repeat(blocks, 4, 0), 4, 1)[:h, :w]
            label[i, :h, :w] = np.repeat(np.repeat(np_rng.integers(0, K, (3, 3)), 4, 0), 4, 1)[:h, :w]
        label[0, 2:4, 2:4] = ignore  # ignored pixels inside an image
        valid = np.array([True, True, True, False])
        batches.append({"image": image, "label": label, "valid": valid})
        pred = np.asarray(jnp.argmax(conv_apply(conv_vars, jnp.asarray(image)), -1))
        for i in range(b):
            if not valid[i]:
                continue
            g = label[i, :heights[i], :widths[i]]
            p = np.where(g == ignore, -1, pred[i, :heights[i], :widths[i]])
            counted = g != ignore
            for c in range(K):
                gb = boundary_reference(g == c, 2).astype(bool) & counted
                pb = boundary_reference(p == c, 2).astype(bool) & counted
                inter[c] += (gb & pb).sum()
                union[c] += (gb | pb).sum()
    result, _ = _run("mesh", conv_vars, batches, boundary_iou=True,
                     boundary_dilation_ratio=ratio)
    assert union.min() > 0 and 0 < inter.sum() < union.sum()  # a non-trivial case
    np.testing.assert_allclose(result["boundary_iou_per_class"], inter / union)
    np.testing.assert_allclose(result["boundary_iou"], np.mean(inter / union))
