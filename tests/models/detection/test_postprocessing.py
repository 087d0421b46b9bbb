"""Static-shaped RPN proposal filtering and detection post-processing vs torchvision's, exactly.

Inputs are random with well-separated scores (no near-ties), so the kept sets and their order
must be identical, not just close.
"""

import jax
import numpy as np
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from segjax.models.detection.anchors import anchors_for
from segjax.models.detection.roi_heads import postprocess_detections
from segjax.models.detection.rpn import filter_proposals

IMAGE = (60, 75)  # unpadded; padded 64 x 96
PADDED = (64, 96)


def test_filter_proposals_matches_torchvision(np_rng):
    sizes = [(PADDED[0] // s, PADDED[1] // s) for s in (4, 8, 16, 32, 64)]
    anchors = anchors_for(PADDED, sizes)
    counts = [len(a) for a in anchors]
    logits = [np_rng.normal(scale=3.0, size=(2, n)).astype(np.float32) for n in counts]
    deltas = [np_rng.normal(scale=0.5, size=(2, n, 4)).astype(np.float32) for n in counts]
    deltas[0][0, :5, 2:] = -9.0  # tiny boxes: removed by min_size
    pre, post = 150, 120
    rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, dict(training=pre, testing=pre),
                                dict(training=post, testing=post), 0.7).eval()
    all_anchors = torch.tensor(np.concatenate(anchors))
    decoded = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(
        torch.tensor(np.concatenate(deltas, 1)).reshape(-1, 4), [all_anchors, all_anchors]).reshape(2, -1, 4)
    ref_boxes, ref_scores = rpn.filter_proposals(decoded, torch.tensor(np.concatenate(logits, 1)),
                                                 [IMAGE, IMAGE], counts)
    f = jax.jit(jax.vmap(lambda o, d: filter_proposals(o, d, anchors, IMAGE, pre_nms_top_n=pre,
                                                         post_nms_top_n=post, nms_thresh=0.7)))
    boxes, scores, valid = f(logits, deltas)
    assert boxes.shape == (2, post, 4)
    for i in range(2):
        n = int(valid[i].sum())
        assert n == len(ref_boxes[i]) and valid[i][:n].all()
        np.testing.assert_allclose(boxes[i][:n], ref_boxes[i].numpy(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(scores[i][:n], ref_scores[i].numpy(), rtol=1e-6)


def test_postprocess_detections_matches_torchvision(np_rng):
    p, k = 90, 5
    xy = np_rng.uniform(0, 60, (p, 2))
    proposals = np.concatenate([xy, xy + np_rng.uniform(2, 30, (p, 2))], 1).astype(np.float32)
    logits = np_rng.normal(scale=3.0, size=(p, k)).astype(np.float32)
    regression = np_rng.normal(scale=1.0, size=(p, 4 * k)).astype(np.float32)
    valid = np.ones(p, bool)
    valid[-10:] = False  # padding proposals: must not produce detections
    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 30)
    rb, rs, rl = heads.postprocess_detections(torch.tensor(logits[valid]), torch.tensor(regression[valid]),
                                              [torch.tensor(proposals[valid])], [IMAGE])
    out = jax.jit(lambda *a: postprocess_detections(*a, IMAGE, detections_per_img=30))(
        logits, regression, proposals, valid)
    n = int(out["valid"].sum())
    assert n == len(rb[0]) == 30  # the cap is reached
    np.testing.assert_array_equal(out["classes"][:n], rl[0].numpy())
    np.testing.assert_allclose(out["scores"][:n], rs[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["boxes"][:n], rb[0].numpy(), rtol=1e-5, atol=1e-4)
    # With a high threshold fewer than 30 survive: the rest of the slots are zero padding.
    heads.score_thresh = 0.95
    rb, rs, rl = heads.postprocess_detections(torch.tensor(logits[valid]), torch.tensor(regression[valid]),
                                              [torch.tensor(proposals[valid])], [IMAGE])
    out = jax.jit(lambda *a: postprocess_detections(*a, IMAGE, score_thresh=0.95, detections_per_img=30))(
        logits, regression, proposals, valid)
    n = int(out["valid"].sum())
    assert 0 < n == len(rb[0]) < 30
    np.testing.assert_array_equal(out["classes"][:n], rl[0].numpy())
    assert not out["scores"][n:].any() and not out["classes"][n:].any() and not out["boxes"][n:].any()
