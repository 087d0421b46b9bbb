"""The pointcloud task: its loss equals a NumPy transcription (points' cross-entropy mean + 0.001 x Eq. 2's
mean over shapes), padding a cloud by repeating its first point leaves every real point's PointNet
logits unchanged (what evaluation relies on), the streams (deterministic, resumable, every point drawn
from its shape; evaluation covers each shape's every point once), and the metric through eval_outputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.data import get_dataset_info
from segjax.data.builders import synthetic_parts as sp
from segjax.models import create_model
from segjax.tasks.pointcloud import PointCloudTask

INFO = get_dataset_info("synthetic_parts/tiny")


def _task(tmp_path=None, **kw):
    args = dict(info=INFO, data_dir=None if tmp_path is None else str(tmp_path), train_split="train",
                num_points=48, eval_points=64, regularizer_weight=0.001, use_categories=True)
    return PointCloudTask(**{**args, **kw})


def test_loss_is_cross_entropy_mean_plus_weighted_regularizer_mean():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 10)).astype(np.float32)
    labels = rng.integers(0, 10, (3, 7))
    transform = rng.normal(size=(3, 4, 4)).astype(np.float32)
    loss = jax.jit(lambda outputs, batch: _task().loss(outputs, batch, None))
    total, count = loss({"logits": jnp.asarray(logits), "feature_transform": jnp.asarray(transform)},
                        {"part": jnp.asarray(labels)})
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_softmax, labels[..., None], -1).mean()
    reg = np.mean([np.sum((np.eye(4) - a @ a.T) ** 2) for a in transform.astype(np.float64)])
    assert count == 21
    np.testing.assert_allclose(total / count, ce + 0.001 * reg, rtol=1e-5)


def test_padding_by_repeating_the_first_point_leaves_real_logits_unchanged():
    rng = np.random.default_rng(1)
    model = create_model("pointnet_seg", num_classes=10, width=4, num_categories=4)
    points = rng.normal(size=(1, 9, 3)).astype(np.float32)
    padded = np.concatenate([points, np.repeat(points[:, :1], 5, axis=1)], axis=1)
    categories = jnp.array([2])
    shapes = jax.eval_shape(model.init, jax.random.key(0), points, categories=categories)  # no init compile
    variables = jax.tree_util.tree_map_with_path(  # random weights, positive running variances
        lambda path, s: jnp.asarray(np.abs(rng.normal(0.5, 0.3, s.shape)) if path[-1].key == "var"
                                    else rng.normal(0, 0.3, s.shape), jnp.float32), shapes)
    apply = jax.jit(lambda x: model.apply(variables, x, categories=categories)["logits"])
    np.testing.assert_allclose(apply(padded)[:, :9], apply(points), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    task = _task(tmp_path_factory.mktemp("tfds"))
    data = dataclasses.make_dataclass("Data", ["eval_split"])("validation")
    return task, data


def test_train_stream_is_deterministic_resumable_and_drawn_from_each_shape(streams):
    task, data = streams
    first = task.train_batches(data, batch_size=4, seed=3, start_step=0)
    batches = [next(first) for _ in range(3)]  # 12 draws of 8 shapes: one epoch and a half
    resumed = next(task.train_batches(data, batch_size=4, seed=3, start_step=2))
    for key in ("points", "part", "category"):
        np.testing.assert_array_equal(resumed[key], batches[2][key])
    assert batches[0]["points"].shape == (4, 48, 3) and batches[0]["part"].shape == (4, 48)
    config = sp.BUILDER_CONFIGS[1]
    stored = [sp.generate(config, "train", i) for i in range(8)]
    seen = []
    for batch in batches[:2]:  # the first epoch: each shape once
        for points, part, category in zip(batch["points"], batch["part"], batch["category"]):
            i = next(k for k, ex in enumerate(stored) if np.isin(points[0], ex["points"]).all())
            seen.append(i)
            rows = [np.flatnonzero((stored[i]["points"] == p).all(1))[0] for p in points]
            assert len(set(rows)) == 48  # without replacement (64 stored)
            np.testing.assert_array_equal(part, stored[i]["part"][rows])
            assert category == stored[i]["category"]
    assert sorted(seen) == list(range(8))


def test_eval_scores_every_point_of_every_shape_once(streams):
    task, data = streams
    batches = list(task.eval_batches(data, batch_size=3, pad_to=None))  # 4 shapes: 2 batches, 2 fillers
    assert [b["valid"].tolist() for b in batches] == [[True] * 3, [True, False, False]]
    config = sp.BUILDER_CONFIGS[1]
    found = []
    for q in range(4):  # the stored order is TFDS's, not the index's
        b, j = divmod(q, 3)
        index = next(i for i in range(4) if np.array_equal(batches[b]["points"][j],
                                                           sp.generate(config, "validation", i)["points"]))
        found.append(index)
        assert batches[b]["point_valid"][j].sum() == 64
        np.testing.assert_array_equal(batches[b]["part"][j], sp.generate(config, "validation", index)["part"])
    assert sorted(found) == [0, 1, 2, 3]

    def perfect(variables, points, train, categories):  # scores the truth highest (+ noise elsewhere)
        del variables, points, train, categories
        return {"logits": jax.nn.one_hot(batches[0]["part"], 10) * 5.0}

    sums, per_example = task.eval_outputs(perfect, None, {k: jnp.asarray(v) for k, v in batches[0].items()})
    np.testing.assert_allclose(per_example["miou"], 1.0)
    assert int(sums["correct"]) == int(sums["points"]) == 3 * 64
    acc = task.new_accumulator()
    acc.update(sums, per_example, batches[0])
    result = task.logged_metrics(acc.result())
    assert result["instance_miou"] == 1.0 and result["point_accuracy"] == 1.0
    want = [1.0 if c in batches[0]["category"] else None for c in range(4)]
    assert result["miou_per_category"] == want
