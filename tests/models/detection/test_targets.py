"""Target assignment and sampling vs torchvision's Matcher, RPN/ROI assignment and sampler, and
the mask targets (`matching`, `rpn.anchor_targets`, `roi_heads.proposal_targets`, `mask_head.mask_targets`)."""

import jax
import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from segjax.models.detection.mask_head import mask_targets
from segjax.models.detection.matching import match, sample_balanced
from segjax.models.detection.roi_heads import proposal_targets
from segjax.models.detection.rpn import anchor_targets


def _boxes(np_rng, k, extent=80.0):
    xy = np_rng.uniform(0, extent, (k, 2))
    return np.concatenate([xy, xy + np_rng.uniform(4, 40, (k, 2))], 1).astype(np.float32)


@pytest.mark.parametrize("low_quality", [False, True])
def test_match_equals_torchvision_matcher(np_rng, low_quality):
    # Quantised qualities: many exact ties (best-of-gt ties, thresholds hit exactly).
    quality = np_rng.integers(0, 11, size=(6, 300)) / 10.0
    quality = (quality * (np_rng.uniform(size=300) < 0.5)).astype(np.float32)  # half overlap nothing
    quality[:2] *= np.float32(0.5)  # gts 0 and 1 have only low-quality (<= 0.5) candidates
    ref = Matcher(0.7, 0.3, low_quality)(torch.tensor(quality)).numpy()
    np.testing.assert_array_equal(match(quality, 0.7, 0.3, allow_low_quality_matches=low_quality), ref)
    # Padding rows never match and change nothing.
    padded = np.concatenate([quality, np.full((3, 300), 0.95, np.float32)])
    valid = np.arange(9) < 6
    got = jax.jit(lambda q, v: match(q, 0.7, 0.3, allow_low_quality_matches=low_quality, gt_valid=v))(padded, valid)
    np.testing.assert_array_equal(got, ref)
    assert (got >= 0).any() and (got == -1).any() and (got == -2).any()
    if low_quality:  # the low-quality rule changed some predictions
        assert (got != Matcher(0.7, 0.3, False)(torch.tensor(quality)).numpy()).any()


def test_anchor_targets_equal_rpn_assignment(np_rng):
    anchors = _boxes(np_rng, 400)
    gt = _boxes(np_rng, 5)
    rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, dict(training=1, testing=1),
                                dict(training=1, testing=1), 0.7)
    labels, matched = rpn.assign_targets_to_anchors([torch.tensor(anchors)], [{"boxes": torch.tensor(gt)}])
    gt_padded = np.concatenate([gt, np.zeros((3, 4), np.float32)])
    ours_l, ours_m = anchor_targets(anchors, gt_padded, np.arange(8) < 5)
    np.testing.assert_array_equal(ours_l, labels[0].numpy())
    np.testing.assert_array_equal(ours_m, matched[0].numpy())
    assert (ours_l == 1).sum() >= 5 and (ours_l == -1).any()  # a low-quality match per gt at least
    # No ground truth: all background, zero boxes (torchvision's empty-image branch).
    labels, matched = rpn.assign_targets_to_anchors([torch.tensor(anchors)], [{"boxes": torch.zeros(0, 4)}])
    ours_l, ours_m = anchor_targets(anchors, gt_padded, np.zeros(8, bool))
    np.testing.assert_array_equal(ours_l, labels[0].numpy())
    np.testing.assert_array_equal(ours_m, matched[0].numpy())


def test_proposal_targets_equal_roi_assignment(np_rng):
    gt = _boxes(np_rng, 4)
    gt_labels = np.array([3, 1, 2, 1])
    proposals = np.concatenate([_boxes(np_rng, 200), gt])  # torchvision appends the gt boxes
    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
    ref_idx, ref_labels = heads.assign_targets_to_proposals(
        [torch.tensor(proposals)], [torch.tensor(gt)], [torch.tensor(gt_labels)])
    valid = np.ones(len(proposals), bool)
    valid[:7] = False
    labels, idx = proposal_targets(proposals, valid, np.concatenate([gt, np.zeros((2, 4), np.float32)]),
                                   np.concatenate([gt_labels, [0, 0]]), np.arange(6) < 4)
    ref_labels = ref_labels[0].numpy()
    np.testing.assert_array_equal(labels[7:], ref_labels[7:])
    assert (labels[:7] == -1).all()
    np.testing.assert_array_equal(idx[7:], ref_idx[0].numpy()[7:])
    np.testing.assert_array_equal(labels[-4:], gt_labels)  # each gt box matches itself


def test_sample_balanced_semantics(np_rng):
    labels = np.full(1000, -1)
    labels[np_rng.choice(1000, 40, replace=False)] = 1
    free = np.flatnonzero(labels == -1)
    labels[free[:700]] = 0  # 40 positives, 700 negatives, 260 ignored
    f = jax.jit(lambda k: sample_balanced(k, labels, 256, 0.5))
    pos, neg = f(jax.random.key(0))
    # torchvision's counts: min(#pos, 128) positives, the rest negatives.
    ref_pos, ref_neg = BalancedPositiveNegativeSampler(256, 0.5)([torch.tensor(labels)])
    assert int(pos.sum()) == int(ref_pos[0].sum()) == 40
    assert int(neg.sum()) == int(ref_neg[0].sum()) == 216
    assert (labels[np.asarray(pos)] >= 1).all() and (labels[np.asarray(neg)] == 0).all()
    # Same key, same sample; another key, another sample; each negative drawn with p = 216/700.
    np.testing.assert_array_equal(f(jax.random.key(0))[1], neg)
    draws = jax.vmap(lambda k: f(k)[1])(jax.random.split(jax.random.key(1), 200))
    freq = np.asarray(draws).mean(0)[labels == 0]
    assert not np.array_equal(draws[0], draws[1])
    np.testing.assert_allclose(freq.mean(), 216 / 700, rtol=1e-6)
    assert np.abs(freq - 216 / 700).max() < 0.15  # ~4.6 standard deviations at 200 draws
    # Many positives: capped at 128.
    pos, neg = sample_balanced(jax.random.key(2), np.ones(500, int), 256, 0.5)
    assert int(pos.sum()) == 128 and int(neg.sum()) == 0


def test_mask_targets_equal_project_masks_on_boxes(np_rng):
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    h, w = 90, 70
    yy, xx = np.mgrid[:h, :w]
    masks = np.stack([((yy - cy) ** 2 / ry ** 2 + (xx - cx) ** 2 / rx ** 2) < 1
                      for cy, cx, ry, rx in [(30, 20, 15, 10), (60, 50, 25, 15), (45, 35, 40, 30)]])
    boxes = _boxes(np_rng, 25, extent=60.0)
    boxes = np.concatenate([boxes, [[0, 0, w, h], [10, 10, 10.5, 10.2], [5, 80, 65, 90]]]).astype(np.float32)
    matched = np_rng.integers(0, 3, len(boxes))
    ref = project_masks_on_boxes(torch.tensor(masks), torch.tensor(boxes), torch.tensor(matched), 28).numpy()
    got = jax.jit(mask_targets)(masks, boxes, matched)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert ref.max() == 1.0 and (ref > 0).mean() > 0.2  # non-trivial targets
