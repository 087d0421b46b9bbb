"""ShapeNet-part metrics: worked examples by hand, and random predictions against a NumPy transcription of
the authors' evaluation loop (charlesq34/pointnet part_seg/test.py: other categories' scores set below the
minimum, then per shape and per part of its category n_pred, n_gt, n_intersect, IoU 1 on an empty union,
averaged per shape, then over all shapes and per category)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.metrics.parts import PartIoUAccumulator, restrict_to_category, shape_mious

PART_CATEGORY = np.array([0, 0, 1, 1, 1], np.int32)  # category 0: parts {0, 1}; category 1: {2, 3, 4}


def test_worked_examples():
    labels = np.array([[0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    preds = np.array([[0, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
    # shape 0: part 0 1/2, part 1 2/3 -> 7/12; shape 1: part 2 exact, parts 3, 4 absent from both -> 1;
    # shape 2: part 2 0/4, part 3 0/4, part 4 absent -> 1/3.
    got = shape_mious(jnp.asarray(preds), jnp.asarray(labels), jnp.array([0, 1, 1]), jnp.asarray(PART_CATEGORY))
    np.testing.assert_allclose(got, [7 / 12, 1.0, 1 / 3], rtol=1e-6)
    acc = PartIoUAccumulator(("a", "b", "never_seen"))
    acc.update(got, [0, 1, 1])
    result = acc.result()
    np.testing.assert_allclose(result["instance_miou"], (7 / 12 + 1 + 1 / 3) / 3)
    np.testing.assert_allclose(result["class_miou"], (7 / 12 + (1 + 1 / 3) / 2) / 2)
    assert set(result["miou_per_category"]) == {"a", "b"}


def test_padded_points_and_shapes_do_not_count():
    labels, preds = np.array([[0, 1, 1, 0]]), np.array([[0, 1, 0, 1]])
    valid = np.array([[True, True, True, False]])  # the last point is padding
    got = shape_mious(jnp.asarray(preds), jnp.asarray(labels), jnp.array([0]), jnp.asarray(PART_CATEGORY),
                      jnp.asarray(valid))
    np.testing.assert_allclose(got, [(1 / 2 + 1 / 2) / 2], rtol=1e-6)  # as if the cloud were 3 points (4: 1/3)
    acc = PartIoUAccumulator(("a", "b"))
    acc.update([0.5, 0.9], [0, 1], valid=[True, False])
    assert acc.result() == {"instance_miou": 0.5, "class_miou": 0.5, "miou_per_category": {"a": 0.5}}
    with pytest.raises(ValueError, match="categories must be in"):
        acc.update([0.5], [2])
    with pytest.raises(ValueError, match="no shape was added"):
        PartIoUAccumulator(("a",)).result()


def _authors_evaluation(logits, labels, categories, part_category):
    """The loop of part_seg/test.py, transcribed."""
    num_parts = len(part_category)
    object2setofoid = {c: [k for k in range(num_parts) if part_category[k] == c] for c in set(part_category)}
    total_acc_iou, total_seen = 0.0, 0
    total_per_cat_iou, total_per_cat_seen = {}, {}
    for res, seg, cat in zip(logits, labels, categories):
        res = res.copy()
        iou_oids = object2setofoid[cat]
        non_cat_labels = list(set(np.arange(num_parts)).difference(set(iou_oids)))
        res[:, non_cat_labels] = np.min(res) - 1000
        seg_pred_val = np.argmax(res, axis=1)
        mask = np.int32(seg_pred_val == seg)
        total_iou = 0.0
        for oid in iou_oids:
            n_pred = np.sum(seg_pred_val == oid)
            n_gt = np.sum(seg == oid)
            n_intersect = np.sum(np.int32(seg == oid) * mask)
            n_union = n_pred + n_gt - n_intersect
            total_iou += 1 if n_union == 0 else n_intersect * 1.0 / n_union
        avg_iou = total_iou / len(iou_oids)
        total_acc_iou += avg_iou
        total_seen += 1
        total_per_cat_iou[cat] = total_per_cat_iou.get(cat, 0.0) + avg_iou
        total_per_cat_seen[cat] = total_per_cat_seen.get(cat, 0) + 1
    class_miou = np.mean([total_per_cat_iou[c] / total_per_cat_seen[c] for c in total_per_cat_iou])
    return total_acc_iou / total_seen, class_miou


def test_matches_the_authors_evaluation_on_random_predictions():
    rng = np.random.default_rng(0)
    part_category = np.repeat(np.arange(4), [4, 2, 3, 6]).astype(np.int32)  # 15 parts
    n, p = 40, 25
    categories = rng.integers(0, 4, n)
    first = np.concatenate([[0], np.cumsum([4, 2, 3, 6])])
    labels = np.stack([rng.integers(first[c], first[c] + rng.integers(1, first[c + 1] - first[c] + 1), p)
                       for c in categories])  # some parts absent from some shapes
    logits = rng.normal(size=(n, p, 15)).astype(np.float32)
    logits[np.arange(n)[:, None], np.arange(p), labels] += rng.uniform(0, 2.5, (n, p))  # partly right
    acc = PartIoUAccumulator(("a", "b", "c", "d"))

    @jax.jit
    def eval_step(logits, labels, categories):
        preds = restrict_to_category(logits, categories, part_category)
        return preds, shape_mious(preds, labels, categories, jnp.asarray(part_category))

    for batch in np.split(np.arange(n), 2):  # summed over batches on the host
        preds, mious = eval_step(logits[batch], labels[batch], categories[batch])
        assert np.all(part_category[np.asarray(preds)] == categories[batch][:, None])
        acc.update(mious, categories[batch])
    instance, klass = _authors_evaluation(logits, labels, categories, part_category)
    result = acc.result()
    assert 0.2 < instance < 0.9
    np.testing.assert_allclose(result["instance_miou"], instance, rtol=1e-6)
    np.testing.assert_allclose(result["class_miou"], klass, rtol=1e-6)
