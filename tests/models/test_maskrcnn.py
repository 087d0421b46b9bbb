"""Mask R-CNN (segjax.models.detection.maskrcnn) vs torchvision's maskrcnn_resnet50_fpn, stage by stage.

One torchvision model with random weights (eval mode) is converted with
`torchvision_import.convert` and both run on the same two images. The images are 120 x 100 and
torchvision gets `min_size=100, max_size=120`, so its transform does not resize (scale exactly 1)
and pads to 128 x 128 — the same zero padding segjax applies inside the model, with boxes
clipped to the unpadded 120 x 100.

Random weights make scores nearly tied: the RPN's objectness logits (weights N(0, 0.01)) differ
by ~1e-5 between anchors and the classifier gives every class ~1/K, so float32 rounding noise
between two implementations would reorder top-k cut-offs and NMS winners. The test therefore
scales the RPN's `cls_logits` and the box predictor's `cls_score` weights up (logits spread over
several units, gaps far above rounding noise), randomises the BatchNorm statistics (so frozen BN
is exercised), and compares proposals as sets and detections by (class, IoU).

To keep the file fast both models keep 500 proposals and 50 detections per image (torchvision's
override names; the defaults are 1000 and 100), and the one jitted function computing every stage
is compiled at XLA backend optimisation level 0 (about half the compile time).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torchvision

from segjax.models import create_model
from segjax.models.detection.maskrcnn import MaskRCNN
from segjax.models.torchvision_import import convert
from segjax.ops import box_iou, paste_masks

K = 4  # classes including background
SETTINGS = dict(rpn_post_nms_top_n_test=500, box_detections_per_img=50)
H, W = 120, 100
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _close(ours, ref, tol=2e-4, what=""):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-6)
    assert err < tol, f"{what}: relative max error {err:.3g}"


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=K, min_size=100, max_size=120, **SETTINGS).eval()
    with torch.no_grad():
        for m in tv.backbone.body.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.3, 0.8)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        tv.rpn.head.cls_logits.weight.mul_(300.0)
        tv.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    images01 = rng.uniform(size=(2, H, W, 3)).astype(np.float32)
    timages = [torch.tensor(im).permute(2, 0, 1) for im in images01]

    with torch.no_grad():
        ilist, _ = tv.transform(timages)
        assert tuple(ilist.tensors.shape[-2:]) == (128, 128) and ilist.image_sizes == [(H, W)] * 2
        feats = tv.backbone(ilist.tensors)
        rpn_obj, rpn_deltas = tv.rpn.head(list(feats.values()))
        proposals, _ = tv.rpn(ilist, feats)
        sizes = ilist.image_sizes
        pooled = tv.roi_heads.box_roi_pool(feats, proposals, sizes)
        class_logits, box_regression = tv.roi_heads.box_predictor(tv.roi_heads.box_head(pooled))
        dets, _ = tv.roi_heads(feats, proposals, sizes)
        mask_pooled = tv.roi_heads.mask_roi_pool(feats, [d["boxes"] for d in dets], sizes)
        mask_logits = tv.roi_heads.mask_predictor(tv.roi_heads.mask_head(mask_pooled))
        final = tv.transform.postprocess(dets, sizes, [(H, W)] * 2)

    variables = convert("maskrcnn_resnet50_fpn", tv.state_dict())
    model = create_model("maskrcnn_resnet50_fpn", num_classes=K, **SETTINGS)
    images = (images01 - MEAN) / STD
    n_props = max(len(p) for p in proposals)
    tv_props = np.zeros((2, n_props, 4), np.float32)
    for i, p in enumerate(proposals):
        tv_props[i, :len(p)] = p.numpy()
    n_dets = max(len(d["boxes"]) for d in dets)
    tv_dets = np.zeros((2, n_dets, 4), np.float32)
    for i, d in enumerate(dets):
        tv_dets[i, :len(d["boxes"])] = d["boxes"].numpy()

    def stages(module: MaskRCNN, images, props, det_boxes):
        features = module.features(images)
        return dict(features=features, rpn=module.rpn_outputs(features),
                    proposals=module.proposals(images, features),
                    box=module.box_outputs(features, props), masks=module.mask_logits(features, det_boxes),
                    out=module(images))

    args = (variables, images, tv_props, tv_dets)
    fn = jax.jit(lambda v, *a: model.apply(v, *a, method=stages)).lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    ours = jax.tree.map(np.asarray, fn(*args))
    tv_out = dict(features=feats, rpn=(rpn_obj, rpn_deltas), proposals=proposals,
                  box=(class_logits, box_regression), dets=dets, mask_logits=mask_logits, final=final)
    return ours, tv_out


def test_fpn_maps_and_rpn_head(run):
    ours, tv = run
    for name, tv_name in zip(("p2", "p3", "p4", "p5", "p6"), ("0", "1", "2", "3", "pool")):
        _close(ours["features"][name], tv["features"][tv_name].permute(0, 2, 3, 1).numpy(), what=name)
    obj, deltas = ours["rpn"]
    for level, (o, d) in enumerate(zip(tv["rpn"][0], tv["rpn"][1])):
        n, a, h, w = o.shape
        _close(obj[level], o.permute(0, 2, 3, 1).reshape(n, -1).numpy(), what=f"objectness {level}")
        _close(deltas[level], d.permute(0, 2, 3, 1).reshape(n, -1, 4).numpy(), what=f"deltas {level}")
    assert np.std(obj[0]) > 1.0  # the scaled logits are well spread


def test_proposals_equal_as_sets(run):
    ours, tv = run
    boxes, scores, valid = ours["proposals"]
    for i, ref in enumerate(tv["proposals"]):
        ref = ref.numpy()
        mine = boxes[i][valid[i]]
        assert abs(len(mine) - len(ref)) <= 2, (len(mine), len(ref))
        iou = np.asarray(box_iou(ref, mine))
        matched = iou.max(axis=1) > 0.999
        assert matched.mean() > 0.99, f"image {i}: {(~matched).sum()} of {len(ref)} proposals unmatched"
        # Same order (decreasing objectness) for the matched ones, and the scores agree.
        assert (np.diff(scores[i][valid[i]]) <= 0).all()
        assert not valid[i][len(mine):].any()


def test_box_head_on_torchvision_proposals(run):
    ours, tv = run
    logits, deltas = ours["box"]
    start = 0
    for i, p in enumerate(tv["proposals"]):
        n = len(p)
        _close(logits[i, :n], tv["box"][0][start:start + n].numpy(), what="class logits")
        _close(deltas[i, :n], tv["box"][1][start:start + n].numpy(), what="box regression")
        start += n


def test_mask_logits_on_torchvision_detections(run):
    ours, tv = run
    start = 0
    for i, d in enumerate(tv["dets"]):
        n = len(d["boxes"])
        assert n > 10
        ref = tv["mask_logits"][start:start + n].permute(0, 2, 3, 1).numpy()
        _close(ours["masks"][i, :n], ref, what="mask logits")
        start += n


def test_final_detections_and_pasted_masks(run):
    ours, tv = run
    out = ours["out"]
    assert set(out) == {"boxes", "scores", "classes", "num_detections", "mask_probs"}
    assert out["classes"].dtype == np.int32 and out["num_detections"].dtype == np.int32
    for i, ref in enumerate(tv["final"]):
        n = int(out["num_detections"][i])
        rb, rs, rl = ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy()
        assert abs(n - len(rb)) <= 1 and n > 10
        assert len(rb) == SETTINGS["box_detections_per_img"]  # the cap is reached: top-k is tested
        assert (out["scores"][i, n:] == 0).all() and (out["classes"][i, n:] == 0).all()
        assert ((out["classes"][i, :n] >= 1) & (out["classes"][i, :n] < K)).all()
        iou = np.array(box_iou(rb, out["boxes"][i, :n]))
        iou[rl[:, None] != out["classes"][i, :n][None, :]] = 0.0
        best = iou.argmax(axis=1)
        matched = iou.max(axis=1) > 0.99
        assert matched.mean() > 0.95, f"image {i}: {(~matched).sum()} of {len(rb)} detections unmatched"
        np.testing.assert_allclose(out["scores"][i, best[matched]], rs[matched], rtol=1e-3, atol=1e-4)
        # Masks pasted into the 120 x 100 image: same probabilities as torchvision's.
        pasted = np.asarray(paste_masks(out["mask_probs"][i, :n], out["boxes"][i, :n], (H, W)))
        ref_masks = ref["masks"][:, 0].numpy()
        for j in np.flatnonzero(matched)[:20]:
            a, b = pasted[best[j]] > 0.5, ref_masks[j] > 0.5
            if b.sum() >= 10:
                assert (a & b).sum() / (a | b).sum() > 0.95
            np.testing.assert_allclose(pasted[best[j]], ref_masks[j], atol=2e-3)
