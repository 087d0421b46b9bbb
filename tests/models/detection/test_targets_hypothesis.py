"""Property tests (Hypothesis, issue 29) of anchor matching, RPN / ROI target assignment and
balanced sampling against torchvision's `Matcher`, `RegionProposalNetwork.assign_targets_to_anchors`,
`RoIHeads.assign_targets_to_proposals` and `BalancedPositiveNegativeSampler` (its deterministic
part: how many of each kind), on ground truth with duplicates, huge boxes, padding and degenerate
boxes (zero width or height, inverted, NaN, inf), which torchvision refuses and segjax treats as
padding. Whatever the ground truth, the RPN and box-head losses and their gradients are finite.

Shapes are fixed (values generated): every jitted function compiles once.
"""

import functools

import jax
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from segjax.losses.detection import fast_rcnn_losses, rpn_losses
from segjax.models.detection.matching import match, sample_balanced
from segjax.models.detection.roi_heads import label_and_sample_proposals, proposal_targets
from segjax.models.detection.rpn import anchor_targets, label_and_sample_anchors
from segjax.ops import box_iou

M, A, P, C = 5, 40, 24, 4  # gt slots, anchors, proposals, classes (with background)
DEGENERATE = {"zero_width": [10, 10, 10, 30], "zero_height": [5, 20, 40, 20], "inverted": [30, 30, 10, 40],
              "nan": [np.nan, 0, 20, 20], "inf": [0, 0, np.inf, 20], "point": [7, 7, 7, 7]}


@st.composite
def boxes(draw, k, huge=False):
    """Proper float32 boxes [k, 4] in a 64 x 64 image (or up to 1e6), some duplicated."""
    rows = []
    for i in range(k):
        if i and draw(st.integers(0, 5)) == 0:
            rows.append(rows[draw(st.integers(0, i - 1))])
            continue
        big = huge and draw(st.integers(0, 3)) == 0
        lim = 1e6 if big else 64.0
        x1, y1 = (draw(st.floats(-lim / 8, lim, width=32)) for _ in range(2))
        w, h = (draw(st.floats(lim / 64, lim / 2, width=32)) for _ in range(2))
        rows.append([x1, y1, x1 + w, y1 + h])
    return np.asarray(rows, np.float32)


@st.composite
def ground_truth(draw):
    """(boxes [M, 4], classes [M], valid [M], proper [M]): valid slots may hold degenerate boxes."""
    gt = draw(boxes(M, huge=True))
    valid = np.asarray(draw(st.lists(st.booleans(), min_size=M, max_size=M)))
    proper = np.ones(M, bool)
    for j in range(M):
        kind = draw(st.sampled_from([None, None, *DEGENERATE]))
        if kind is not None:
            gt[j] = DEGENERATE[kind]
            proper[j] = False
    classes = np.asarray(draw(st.lists(st.integers(1, C - 1), min_size=M, max_size=M)), np.int32)
    return gt, classes, valid, proper


@given(boxes(M, huge=True), boxes(A), st.lists(st.booleans(), min_size=M, max_size=M),
       st.sampled_from([(0.7, 0.3), (0.5, 0.5), (0.5, 0.0)]), st.booleans())
def test_match_equals_torchvision_matcher(gt, anchors, valid, thresholds, low_quality):
    valid = np.asarray(valid)
    high, low = thresholds
    quality = np.asarray(box_iou(gt, anchors))
    got = np.asarray(_matcher(high, low, low_quality)(quality, valid))
    if not valid.any():  # torchvision raises on an image without ground truth; the RPN calls it background
        assert (got == -1).all()
        return
    ref = Matcher(high, low, low_quality)(torch.tensor(quality[valid])).numpy()
    ref = np.where(ref >= 0, np.flatnonzero(valid)[np.maximum(ref, 0)], ref)  # back to slot indices
    np.testing.assert_array_equal(got, ref)


@functools.cache
def _matcher(high, low, low_quality):
    return jax.jit(lambda q, v: match(q, high, low, allow_low_quality_matches=low_quality, gt_valid=v))


_rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, dict(training=1, testing=1),
                             dict(training=1, testing=1), 0.7)
_anchor_targets = jax.jit(anchor_targets)
_rpn_sample = jax.jit(functools.partial(label_and_sample_anchors, batch_size_per_image=16))


def _rpn_loss(objectness, deltas, key, anchors, gt, valid):
    labels, reg, pos, neg = _rpn_sample(key, anchors, gt, valid)
    out = rpn_losses(objectness, deltas, labels, reg, pos, neg)
    return sum(s for s, _ in out.values()), out


_rpn_loss_grad = jax.jit(jax.value_and_grad(_rpn_loss, argnums=(0, 1), has_aux=True))


@given(ground_truth(), boxes(A), st.integers(0, 2**31 - 1))
def test_anchor_targets_equal_torchvision_on_the_proper_boxes(truth, anchors, seed):
    """Degenerate boxes act as padding: the labels and matched boxes equal torchvision's RPN
    assignment given only the valid proper boxes, and the sampled RPN losses and their gradients
    equal those with the degenerate slots marked invalid, and are finite."""
    gt, _, valid, proper = truth
    labels, matched = _anchor_targets(anchors, gt, valid)
    keep = valid & proper
    ref_l, ref_m = _rpn.assign_targets_to_anchors([torch.tensor(anchors)], [{"boxes": torch.tensor(gt[keep])}])
    np.testing.assert_array_equal(labels, ref_l[0].numpy())
    np.testing.assert_array_equal(matched, ref_m[0].numpy())
    rng = np.random.default_rng(seed)
    objectness, deltas = rng.normal(size=A).astype(np.float32), rng.normal(size=(A, 4)).astype(np.float32)
    key = jax.random.key(seed)
    (total, out), grads = _rpn_loss_grad(objectness, deltas, key, anchors, gt, valid)
    (ref_total, ref_out), ref_grads = _rpn_loss_grad(objectness, deltas, key, anchors, gt, keep)
    assert np.isfinite(float(total)) and all(np.isfinite(g).all() for g in grads)
    for name in out:
        np.testing.assert_array_equal(out[name][1], ref_out[name][1])
        np.testing.assert_allclose(out[name][0], ref_out[name][0], rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-7)


_heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
_proposal_targets = jax.jit(proposal_targets)
_roi_sample = jax.jit(functools.partial(label_and_sample_proposals, batch_size_per_image=16))


def _roi_loss(class_logits, box_regression, key, proposals, prop_valid, gt, classes, valid):
    roi = _roi_sample(key, proposals, prop_valid, gt, classes, valid)
    out = fast_rcnn_losses(class_logits, box_regression, roi["labels"], roi["reg"], roi["roi_sampled"])
    return sum(s for s, _ in out.values()), out


_roi_loss_grad = jax.jit(jax.value_and_grad(_roi_loss, argnums=(0, 1), has_aux=True))


@given(ground_truth(), boxes(P), st.integers(0, 2**31 - 1))
def test_proposal_targets_equal_torchvision_on_the_proper_boxes(truth, proposals, seed):
    gt, classes, valid, proper = truth
    keep = valid & proper
    cand = np.concatenate([proposals, gt[keep]])  # torchvision's add_gt_proposals
    ref_idx, ref_labels = _heads.assign_targets_to_proposals(
        [torch.tensor(cand)], [torch.tensor(gt[keep])], [torch.tensor(classes[keep], dtype=torch.int64)])
    labels, idx = _proposal_targets(proposals, np.ones(P, bool), gt, classes, valid)
    np.testing.assert_array_equal(labels, ref_labels[0].numpy()[:P])
    fg = np.asarray(labels) > 0
    if keep.any():
        np.testing.assert_array_equal(np.asarray(idx)[fg], np.flatnonzero(keep)[ref_idx[0].numpy()[:P]][fg])
    else:
        assert not fg.any()
    # The sampled box-head losses: finite, and as if the degenerate slots were padding.
    rng = np.random.default_rng(seed)
    s = min(16, P + M)
    logits, reg = rng.normal(size=(s, C)).astype(np.float32), rng.normal(size=(s, 4 * C)).astype(np.float32)
    args = (jax.random.key(seed), proposals, np.ones(P, bool), gt, classes)
    (total, out), grads = _roi_loss_grad(logits, reg, *args, valid)
    (_, ref_out), ref_grads = _roi_loss_grad(logits, reg, *args, keep)
    assert np.isfinite(float(total)) and all(np.isfinite(g).all() for g in grads)
    for name in out:
        np.testing.assert_array_equal(out[name][1], ref_out[name][1])
        np.testing.assert_allclose(out[name][0], ref_out[name][0], rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("batch_size,fraction", [(16, 0.25), (64, 0.5)])
@given(labels=st.lists(st.sampled_from([-1, 0, 0, 1, 2]), min_size=48, max_size=48), seed=st.integers(0, 2**31 - 1))
def test_sample_balanced_counts_equal_torchvision(batch_size, fraction, labels, seed):
    labels = np.asarray(labels)
    pos, neg = _sampler(batch_size, fraction)(jax.random.key(seed), labels)
    pos, neg = np.asarray(pos), np.asarray(neg)
    torch.manual_seed(seed)
    ref_pos, ref_neg = BalancedPositiveNegativeSampler(batch_size, fraction)([torch.tensor(labels)])
    assert pos.sum() == int(ref_pos[0].sum()) and neg.sum() == int(ref_neg[0].sum())
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all() and not (pos & neg).any()


@functools.cache
def _sampler(batch_size, fraction):
    return jax.jit(lambda k, lab: sample_balanced(k, lab, batch_size, fraction))
