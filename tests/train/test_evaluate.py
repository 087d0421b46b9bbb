"""segjax.train.evaluate: the eval loop over padded batches on 4 devices (pmap or mesh) against
numpy loops (confusion, Boundary IoU), with `segjax.tasks.semantic_predict` as the prediction.

The "model" is a random 3x3 convolution (shared with tests/tasks/test_semantic_predict.py).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from segjax.tasks import semantic_predict
from segjax.tasks.semantic import SemanticTask
from segjax.train import evaluate, parallel
from segjax.train.state import TrainState
from tests.tasks.test_semantic_predict import K, conv_apply


@pytest.fixture
def conv_vars(np_rng):
    """Weights of the random 3x3 conv 'model' `conv_apply`."""
    return {"w": jnp.asarray(np_rng.normal(size=(3, 3, 2, K)), jnp.float32),
            "b": jnp.asarray(np_rng.normal(size=(K,)), jnp.float32)}


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
        probs = semantic_predict.predict_probs(conv_apply, conv_vars, jnp.asarray(image), **kwargs)
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
