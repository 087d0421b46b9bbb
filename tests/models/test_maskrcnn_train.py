"""Mask R-CNN training mode (segjax.models.detection.maskrcnn, train=True) vs torchvision, and its invariances.

Parity: torchvision's `maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=K,
min_size=S, max_size=S)` in train mode, converted to segjax. Both sides sample anchors and
proposals at random, so torchvision is fed segjax's samples: its RPN and ROI heads run their own
matching, box encoding, mask projection and losses, but their `fg_bg_sampler` is replaced by one
returning the anchors / proposals segjax sampled (checking on the way that torchvision's labels
equal segjax's), and the ROI heads get segjax's train-mode proposals. Without pretrained weights
torchvision builds its backbone with plain BatchNorm2d; those layers are put in eval mode so
they use running statistics, as FrozenBatchNorm2d (and segjax) do.

The invariances run on the small `maskrcnn_resnet18_fpn` (64 x 64 images, 4 per batch, three
ground-truth slots with padding): gradients reach every head, the sampling key decides the
sample, an extra padding slot changes nothing, and `jax.pmap` over 4 devices gives the same
per-image sums and counts as one device. Every function is compiled once, at XLA backend
optimisation level 0 (compile time dominates this file).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torchvision

from segjax.models import create_model
from segjax.losses.detection import normalize
from segjax.models.detection.mask_head import mask_chunks
from segjax.models.detection.maskrcnn import TRAIN_LOSSES, MaskRCNN
from segjax.models.torchvision_import import convert

K = 4
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
FAST = {"xla_backend_optimization_level": 0}


def _instances(rng, n, m, size, counts):
    """Padded targets: `counts[i]` ellipses per image with their boxes; padding slots zero."""
    boxes = np.zeros((n, m, 4), np.float32)
    classes = np.zeros((n, m), np.int32)
    masks = np.zeros((n, m, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size] + 0.5
    for i in range(n):
        for j in range(counts[i]):
            cx, cy = rng.uniform(0.25 * size, 0.75 * size, 2)
            rx, ry = rng.uniform(0.08 * size, 0.3 * size, 2)
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            ys, xs = np.nonzero(mask)
            masks[i, j] = mask
            boxes[i, j] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            classes[i, j] = rng.integers(1, K)
    return {"boxes": boxes, "classes": classes, "masks": masks, "num_instances": np.asarray(counts, np.int32)}


def _compile(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST)


# -- parity with torchvision -------------------------------------------------------------------

@pytest.fixture(scope="module")
def parity():
    s, n = 96, 2
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=K, min_size=s, max_size=s)
    with torch.no_grad():
        for mod in tv.backbone.body.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.3, 0.8)
                mod.bias.normal_(0.0, 0.1)
                mod.running_mean.normal_(0.0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    tv.train()
    for mod in tv.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()  # running statistics: torchvision's FrozenBatchNorm2d, segjax's frozen BN
    images01 = rng.uniform(size=(n, s, s, 3)).astype(np.float32)
    targets = _instances(rng, n, 4, s, [3, 2])

    variables = convert("maskrcnn_resnet50_fpn", tv.state_dict())
    model = create_model("maskrcnn_resnet50_fpn", num_classes=K)
    images = (images01 - MEAN) / STD
    fn = _compile(lambda v, im, t, k: model.apply(v, im, t, method=MaskRCNN.train_outputs, rngs={"dropout": k}),
                  variables, images, targets, jax.random.key(3))
    losses, samples = jax.tree.map(np.asarray, fn(variables, images, targets, jax.random.key(3)))
    means = {k: float(v) for k, v in normalize(losses).items()}

    seen = {}
    p = samples["proposals"].shape[1]
    n_valid = samples["proposal_valid"].sum(1)

    def rpn_sampler(labels):
        seen["anchor_labels"] = [lab.numpy() for lab in labels]
        return ([torch.tensor(samples["anchor_positive"][i]) for i in range(n)],
                [torch.tensor(samples["anchor_negative"][i]) for i in range(n)])

    def roi_sampler(labels):
        seen["roi_labels"] = [lab.numpy() for lab in labels]
        out = []
        for key in ("roi_positive", "roi_negative"):
            out.append([torch.tensor(np.concatenate([samples[key][i, :n_valid[i]],
                                                     samples[key][i, p:p + targets["num_instances"][i]]]))
                        for i in range(n)])
        return tuple(out)

    tv.rpn.fg_bg_sampler = rpn_sampler
    tv.roi_heads.fg_bg_sampler = roi_sampler
    ttargets = [{"boxes": torch.tensor(targets["boxes"][i, :c]),
                 "labels": torch.tensor(targets["classes"][i, :c], dtype=torch.int64),
                 "masks": torch.tensor(targets["masks"][i, :c])}
                for i, c in enumerate(targets["num_instances"])]
    timages = [torch.tensor(im).permute(2, 0, 1) for im in images01]
    with torch.no_grad():
        ilist, ttargets = tv.transform(timages, ttargets)
        assert tuple(ilist.tensors.shape[-2:]) == (s, s) and ilist.image_sizes == [(s, s)] * n  # no resizing
        feats = tv.backbone(ilist.tensors)
        _, tv_losses = tv.rpn(ilist, feats, ttargets)
        proposals = [torch.tensor(samples["proposals"][i, :n_valid[i]]) for i in range(n)]
        _, roi_losses = tv.roi_heads(feats, proposals, ilist.image_sizes, ttargets)
    tv_losses.update(roi_losses)
    return dict(means=means, losses=losses, samples=samples, seen=seen, n_valid=n_valid, p=p, targets=targets,
                tv={k: float(v) for k, v in tv_losses.items()})


def test_losses_equal_torchvision_given_the_same_samples(parity):
    means, tv = parity["means"], parity["tv"]
    assert set(means) == set(tv) == set(TRAIN_LOSSES)
    for name in TRAIN_LOSSES:
        assert means[name] > 0
        np.testing.assert_allclose(means[name], tv[name], rtol=1e-5, err_msg=name)  # measured ~2e-7


def test_matching_and_sampling_as_torchvision(parity):
    smp, seen, p, n_valid = parity["samples"], parity["seen"], parity["p"], parity["n_valid"]
    num = parity["targets"]["num_instances"]
    for i in range(len(num)):
        # torchvision's anchor and proposal labels (its Matcher on the same boxes) equal segjax's.
        np.testing.assert_array_equal(seen["anchor_labels"][i], smp["anchor_labels"][i])
        ours = np.concatenate([smp["roi_labels"][i, :n_valid[i]], smp["roi_labels"][i, p:p + num[i]]])
        np.testing.assert_array_equal(seen["roi_labels"][i], ours)
        assert not smp["proposal_valid"][i, n_valid[i]:].any()  # valid proposals come first
        # Balanced samples: 256 anchors at most half positive; 512 proposals at most a quarter.
        pos, neg = smp["anchor_positive"][i], smp["anchor_negative"][i]
        assert pos.sum() > 0 and pos.sum() <= 128 and pos.sum() + neg.sum() == 256
        assert (smp["anchor_labels"][i][pos] == 1).all() and (smp["anchor_labels"][i][neg] == 0).all()
        rpos, rneg = smp["roi_positive"][i], smp["roi_negative"][i]
        assert 0 < rpos.sum() <= 128 and rpos.sum() + rneg.sum() <= 512
        assert rpos[p:p + num[i]].all()  # every ground-truth box is a positive candidate (IoU 1)
        assert not (rpos | rneg)[p + num[i]:].any() and not (rpos | rneg)[n_valid[i]:p].any()
        assert smp["roi_sampled"][i].sum() == rpos.sum() + rneg.sum()
    assert n_valid.max() > 512  # the proposals outnumber the 512 slots: ROI sampling is exercised


# -- invariances on the small model -------------------------------------------------------------

S, N, M = 64, 4, 3


def _total(losses):
    return sum(normalize(losses).values())


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(1)
    # Smaller train-mode settings than torchvision's (2000 proposals, 512 ROIs), so that the ROI
    # sample is a strict subset of the candidates at 64 x 64 and the file stays fast.
    model = create_model("maskrcnn_resnet18_fpn", num_classes=K, rpn_pre_nms_top_n_train=200,
                         rpn_post_nms_top_n_train=200, box_batch_size_per_image=32)
    images = rng.normal(size=(N, S, S, 3)).astype(np.float32)
    variables = _compile(model.init, jax.random.key(0), images)(jax.random.key(0), images)  # eager init: 30 s
    targets = _instances(rng, N, M, S, [2, 1, 3, 0])

    def loss_and_grad(v, im, t, key):
        def f(params):
            out, _ = model.apply({**v, "params": params}, im, train=True, targets=t, rngs={"dropout": key},
                                 mutable=["batch_stats"])
            return _total(out), out

        (_, out), grads = jax.value_and_grad(f, has_aux=True)(v["params"])
        return out, grads

    fn = _compile(loss_and_grad, variables, images, targets, jax.random.key(1))
    run = lambda key: jax.tree.map(np.asarray, fn(variables, images, targets, key))  # noqa: E731
    return dict(model=model, images=images, variables=variables, targets=targets, run=run, fn=fn,
                ref=run(jax.random.key(1)))


def test_gradients_reach_every_head(small):
    out, grads = small["ref"]
    assert set(out) == set(TRAIN_LOSSES)
    for name in TRAIN_LOSSES:
        s, c = out[name]
        assert s.shape == c.shape == (N,) and c.dtype == np.int32 and np.isfinite(s).all()
    assert out["loss_mask"][1][3] == 0 and out["loss_mask"][1][:3].min() > 0  # image 3 has no instance
    for part in ("backbone", "fpn", "rpn_head", "box_head", "box_predictor", "mask_head", "mask_predictor"):
        leaves = jax.tree.leaves(grads[part])
        assert all(np.isfinite(g).all() for g in leaves), part
        assert max(np.abs(g).max() for g in leaves) > 0, part


def test_same_key_same_losses_other_key_other_losses(small):
    a = small["ref"][0]
    b = small["run"](jax.random.key(1))[0]
    c = small["run"](jax.random.key(2))[0]
    for name in TRAIN_LOSSES:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        np.testing.assert_array_equal(a[name][1], b[name][1])
    assert not np.array_equal(a["loss_objectness"][0], c["loss_objectness"][0])
    assert not np.array_equal(a["loss_classifier"][0], c["loss_classifier"][0])  # ROI sample too


def test_padding_slots_change_nothing(small):
    model, v, t = small["model"], small["variables"], small["targets"]
    ref = small["ref"][0]
    # One more slot, filled with junk that only padding may hold (class 0, beyond num_instances).
    padded = {k: np.concatenate([x, np.ones_like(x[:, :1])], axis=1) if x.ndim > 1 else x for k, x in t.items()}
    padded["classes"][:, -1] = 0
    padded["boxes"][:, -1] = [5.0, 5.0, 40.0, 40.0]
    fn = _compile(lambda v, im, t, k: model.apply(v, im, train=True, targets=t, rngs={"dropout": k}),
                  v, small["images"], padded, jax.random.key(1))
    got = jax.tree.map(np.asarray, fn(v, small["images"], padded, jax.random.key(1)))
    for name in TRAIN_LOSSES:
        np.testing.assert_array_equal(got[name][1], ref[name][1], err_msg=name)
        np.testing.assert_allclose(got[name][0], ref[name][0], rtol=1e-5, err_msg=name)


def test_pmap_equals_one_device(small):
    devices = jax.devices()[:4]
    assert len(devices) == 4
    model = small["model"].clone(axis_name="batch")
    ref = small["ref"][0]

    def step(v, im, t, key):
        out = model.apply(v, im, train=True, targets=t, rngs={"dropout": key})
        return out, normalize(out, axis_name="batch")

    split = lambda x: x.reshape(4, -1, *x.shape[1:])  # noqa: E731
    args = (small["variables"], split(small["images"]), jax.tree.map(split, small["targets"]), jax.random.key(1))
    pm = jax.pmap(step, axis_name="batch", in_axes=(None, 0, 0, None), devices=devices)
    out, means = pm.lower(*args).compile(compiler_options=FAST)(*args)
    ref_means = normalize(ref)
    for name in TRAIN_LOSSES:
        s, c = (np.asarray(x).reshape(N) for x in out[name])
        np.testing.assert_array_equal(c, ref[name][1], err_msg=name)
        np.testing.assert_allclose(s, ref[name][0], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(np.asarray(means[name]), float(ref_means[name]), rtol=1e-5, err_msg=name)


def test_mask_head_chunks_skip_only_empty_work(small):
    """Training runs ROI Align, targets and the mask head on chunks of slots (positives first over
    the batch) under lax.cond. With 3-slot chunks (3, 3, 6, 12, 8 of the 32 mask slots) the last
    chunk holds no positive and is skipped; the losses and every gradient equal the dense
    computation's (mask_chunk=None, every slot computed) and the fixture's (default 8, 8, 16:
    every chunk runs)."""
    v, im, t = small["variables"], small["images"], small["targets"]
    positives = int(small["ref"][0]["loss_mask"][1].sum()) // (28 * 28)
    assert mask_chunks(N * 8, 3)[-1] == (24, 8)
    assert 16 < positives <= 24  # every default chunk runs; the last 3-slot-based chunk is skipped

    def run(model):
        def f(params):
            out = model.apply({**v, "params": params}, im, train=True, targets=t, rngs={"dropout": jax.random.key(1)})
            return _total(out), out

        fn = _compile(lambda p: jax.value_and_grad(f, has_aux=True)(p), v["params"])
        (_, out), grads = fn(v["params"])
        return jax.tree.map(np.asarray, (out, grads))

    dense = run(small["model"].clone(mask_chunk=None))
    for chunked in (run(small["model"].clone(mask_chunk=3)), small["ref"]):
        for name in TRAIN_LOSSES:
            np.testing.assert_array_equal(chunked[0][name][1], dense[0][name][1], err_msg=name)
            np.testing.assert_allclose(chunked[0][name][0], dense[0][name][0], rtol=1e-5, atol=1e-6, err_msg=name)
        for (path, g), d in zip(jax.tree_util.tree_flatten_with_path(chunked[1])[0], jax.tree.leaves(dense[1])):
            np.testing.assert_allclose(g, d, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert np.abs(dense[1]["mask_head"]["mask_fcn1"]["kernel"]).max() > 0


def test_mask_chunks_double():
    """Chunk boundaries double, so P positives (slots 0..P-1) cost at most max(first, 2P) slots."""
    assert mask_chunks(256, 8) == [(0, 8), (8, 8), (16, 16), (32, 32), (64, 64), (128, 128)]
    assert mask_chunks(30, 2) == [(0, 2), (2, 2), (4, 4), (8, 8), (16, 14)]
    assert mask_chunks(5, 8) == [(0, 5)]
    for total, first in ((256, 8), (100, 3), (7, 1)):
        chunks = mask_chunks(total, first)
        assert sum(length for _, length in chunks) == total
        for p in range(1, total + 1):
            spanned = next(start + length for start, length in chunks if start + length >= p)
            assert spanned <= max(first, 2 * p)
    with pytest.raises(ValueError, match="mask_chunk"):
        mask_chunks(8, 0)


def test_train_mode_errors(small):
    model, v, im = small["model"], small["variables"], small["images"]
    with pytest.raises(ValueError, match="needs targets"):
        model.apply(v, im, train=True)
    with pytest.raises(ValueError, match="'dropout' rng"):
        model.apply(v, im, train=True, targets=small["targets"])
    bad = dict(small["targets"], masks=np.zeros((N, M, S // 2, S // 2), np.uint8))
    with pytest.raises(ValueError, match=r"targets\['masks'\]"):
        model.apply(v, im, train=True, targets=bad, rngs={"dropout": jax.random.key(0)})


def _with_bad_boxes(targets):
    """The fixture's targets plus two degenerate ground-truth boxes in former padding slots:
    a zero-width box in image 3 (which had no instance) and a NaN box in image 0's last slot."""
    bad = {k: np.array(v) for k, v in targets.items()}
    assert bad["num_instances"][3] == 0 and bad["num_instances"][0] == M - 1
    bad["boxes"][3, 0], bad["classes"][3, 0], bad["masks"][3, 0, 10:30, 10:12] = [10, 10, 10, 30], 1, 1
    bad["boxes"][0, M - 1], bad["classes"][0, M - 1] = [np.nan, 5, 20, 20], 2
    bad["num_instances"][[0, 3]] += 1
    return bad


def test_degenerate_box_is_rejected_by_name(small):
    """Issue 29: concrete targets with a zero-width (or inverted, or non-finite) ground-truth box
    fail naming the image index, the slot and the box, as torchvision does; padding slots, which
    hold zero boxes, are not checked."""
    model, v, im = small["model"], small["variables"], small["images"]
    bad = _with_bad_boxes(small["targets"])
    with pytest.raises(ValueError, match=r"invalid box \[nan, 5\.0, 20\.0, 20\.0\] for target at index 0 \(slot 2\)"):
        model.apply(v, im, train=True, targets=bad, rngs={"dropout": jax.random.key(0)})
    bad["boxes"][0, M - 1] = [5, 5, 20, 20]
    with pytest.raises(ValueError, match=r"invalid box \[10\.0, 10\.0, 10\.0, 30\.0\] for target at index 3 "
                                         r"\(slot 0\)"):
        model.apply(v, im, train=True, targets=bad, rngs={"dropout": jax.random.key(0)})
    bad["boxes"][3, 0] = [12, 40, 30, 20]  # y2 < y1
    with pytest.raises(ValueError, match=r"positive height and width.*index 3 \(slot 0\)"):
        model.apply(v, im, train=True, targets=bad, rngs={"dropout": jax.random.key(0)})


def test_degenerate_box_under_jit_is_padding(small):
    """Issue 29: under jit the targets are traced and cannot be checked; a degenerate ground-truth
    box must then act as a padding slot. Before the fix a zero-width box made every anchor of its
    image positive (its best IoU, 0, is every anchor's: low-quality matches) and the RPN box loss
    infinite, and a NaN box matched everything. Now every loss and gradient is finite and equals
    the fixture's, which holds the same slots as padding."""
    out, grads = jax.tree.map(np.asarray, small["fn"](small["variables"], small["images"],
                                                      _with_bad_boxes(small["targets"]), jax.random.key(1)))
    ref = small["ref"][0]
    for name in TRAIN_LOSSES:
        assert np.isfinite(out[name][0]).all(), name
        np.testing.assert_array_equal(out[name][1], ref[name][1], err_msg=name)
        np.testing.assert_allclose(out[name][0], ref[name][0], rtol=1e-5, err_msg=name)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(small["ref"][1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layers", [3, 5])
def test_frozen_parameters_as_torchvision(layers):
    from flax.traverse_util import flatten_dict
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    from segjax.models.detection.backbone import frozen_parameters

    # torchvision's pretrained-backbone set-up: FrozenBatchNorm2d (no parameters) and requires_grad
    # only in the last `layers` stages.
    body = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d), layers).body
    trained_tv = {name for name, p in body.named_parameters() if p.requires_grad}
    model = create_model("maskrcnn_resnet50_fpn", num_classes=K)
    params = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))["params"]
    flat = flatten_dict(frozen_parameters(params, layers))
    trained = {".".join(k[1:-1]) + ".weight" for k, frozen in flat.items() if k[0] == "backbone" and not frozen}
    assert trained == trained_tv
    assert not any(frozen for k, frozen in flat.items() if k[0] != "backbone")  # FPN and heads all train


def test_trainable_backbone_layers_reach_the_trainer():
    """`trainable_backbone_layers=k` freezes the backbone's first 5 - k stages (no gradient) and
    the trainer's optimizer gets `frozen_parameters(params, k)`; None (training from scratch)
    freezes nothing. The COCO recipe uses torchvision's 3."""
    from experiments.configs import maskrcnn as recipes
    from flax.traverse_util import flatten_dict

    from segjax.models.detection.backbone import frozen_parameters
    from segjax.train import build

    images = np.zeros((1, 64, 64, 3), np.float32)
    for k, stages in ((3, 2), (5, 0), (0, 5)):
        model = create_model("maskrcnn_resnet18_fpn", num_classes=K, trainable_backbone_layers=k)
        params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
        got = flatten_dict(build.frozen_parameters(model, params))
        assert got == flatten_dict(frozen_parameters(params, k))
        bound = model.bind({"params": params})
        assert bound.backbone.frozen_stages == stages
    scratch = create_model("maskrcnn_resnet18_fpn", num_classes=K)
    assert build.frozen_parameters(scratch, {}) is None
    assert recipes.get_config().model.trainable_backbone_layers == 3
    assert recipes.get_config("demo").model.trainable_backbone_layers is None
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        create_model("maskrcnn_resnet18_fpn", num_classes=K, trainable_backbone_layers=6).init(
            jax.random.key(0), images)
