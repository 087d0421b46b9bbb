"""TensorMask's parts against independent references. No TensorMask runs on a CPU (detectron2's is
CUDA-only), so: the window-to-object assignment against a loop transcription of detectron2's
`_assignment_rule`; the mask targets against torchvision's `roi_align(aligned=True)` thresholded
as detectron2's `BitMasks.crop_and_resize`; the head's parameter count against a count derived by
hand from detectron2's TensorMask config; the model's outputs keep Mask R-CNN's contract.
(The op is in tests/ops/test_swap_align2nat.py, the losses in tests/losses/test_detection.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from segjax.models import create_model
from segjax.models.detection import tensormask as tm


def assignment_reference(gt, ok, anchors, units, min_anchor_size, scale_thresh=2.0, spatial_thresh=1.0):
    """Loop transcription of detectron2's `_assignment_rule` (uniqueness on): (matches, positive)."""
    m, a = len(gt), len(anchors)
    assign = np.zeros((m, a), bool)
    for i in range(m):
        if not ok[i]:
            continue
        gx1, gy1, gx2, gy2 = gt[i]
        upper = max(max(gx2 - gx1, gy2 - gy1) * scale_thresh, min_anchor_size)
        for j in range(a):
            ax1, ay1, ax2, ay2 = anchors[j]
            contain = ax1 <= gx1 and ay1 <= gy1 and ax2 >= gx2 and ay2 >= gy2
            scale = upper - (max(ax2 - ax1, ay2 - ay1) - units[j]) >= 0
            dx = ((gx1 + gx2) / 2 - (ax1 + ax2) / 2) / units[j]
            dy = ((gy1 + gy2) / 2 - (ay1 + ay2) / 2) / units[j]
            assign[i, j] = contain and scale and dx * dx + dy * dy <= spatial_thresh ** 2
    counts = assign.sum(0)
    return assign.argmax(0), counts == 1


def test_assignment_rule_equals_the_loop_transcription(np_rng):
    model = tm.TensorMask(num_classes=3, anchor_sizes=((16, 24), (32, 48), (64, 96)))
    feats = [np.zeros((1, 16 // 2 ** l, 16 // 2 ** l, 1)) for l in range(3)]  # a 64 x 64 image
    anchors, units = model.windows(feats)
    # Boxes of many sizes, two of them identical (uniqueness: their windows are all negative),
    # one degenerate and one padding slot (never matched).
    xy = np_rng.uniform(0, 48, size=(7, 2))
    wh = np_rng.uniform(4, 40, size=(7, 2))
    gt = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    gt[3] = gt[2]
    gt[5, 2] = gt[5, 0]
    ok = np.array([True] * 5 + [False, False])
    got_m, got_p = jax.jit(tm.assignment_rule, static_argnums=4)(gt, ok, anchors, units, 12.0)
    want_m, want_p = assignment_reference(gt, ok, anchors, units, 12.0)
    np.testing.assert_array_equal(np.asarray(got_p), want_p)
    np.testing.assert_array_equal(np.asarray(got_m)[want_p], want_m[want_p])
    assert want_p.sum() >= 4  # the boxes do get windows (the comparison is not vacuous)
    assert not np.isin(np.asarray(got_m)[want_p], [2, 3, 5, 6]).any()


def test_window_mask_targets_equal_torchvision_roi_align_thresholded(np_rng):
    masks = (np_rng.random((3, 40, 36)) < 0.5).astype(np.float32)
    masks[1, 5:30, 8:20] = 1.0
    windows = np.array([[-6.0, -4.0, 30.0, 32.0], [4.5, 3.0, 26.0, 33.5], [10.0, 12.0, 50.0, 52.0],
                        [0.0, 0.0, 36.0, 40.0]], np.float32)
    matched = np.array([1, 0, 2, 1])
    got = np.asarray(tm.window_mask_targets(jnp.asarray(masks), jnp.asarray(windows), jnp.asarray(matched), 11))
    rois = torch.tensor(np.concatenate([np.arange(4)[:, None], windows], 1), dtype=torch.float32)
    soft = torchvision.ops.roi_align(torch.tensor(masks[matched])[:, None], rois, (11, 11), 1.0, 0, aligned=True)
    np.testing.assert_array_equal(got, (soft[:, 0] >= 0.5).numpy().astype(np.float32))


def test_head_parameters_match_detectron2s_config_count():
    """detectron2's TensorMask head for 80 classes, FPN 256, A = 2, mask sizes 11 and 15:
    towers 4 x 3x3 convs (cls 256, bbox 128, mask 128), cls_score 3x3 -> 2 x 80, bbox_pred
    3x3 -> 2 x 4, mask_pred_11 / _15 1x1 -> 121 / 225, mask_fuse 3x3 128 -> 128 (bipyramid);
    and RetinaNet's P6 (3x3/2, 2048 -> 256) and P7 (3x3/2, 256 -> 256)."""
    def conv(cin, cout, k):
        return k * k * cin * cout + cout

    tower = lambda ch: conv(256, ch, 3) + 3 * conv(ch, ch, 3)  # noqa: E731
    head = (tower(256) + conv(256, 160, 3) + tower(128) + conv(128, 8, 3) + tower(128) + conv(128, 121, 1)
            + conv(128, 225, 1) + conv(128, 128, 3))
    top = conv(2048, 256, 3) + conv(256, 256, 3)
    model = create_model("tensormask_resnet50_fpn", num_classes=81)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128, 128, 3)))["params"]
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    assert count(shapes["head"]) == head
    assert count(shapes["top"]) == top
    resnet50 = sum(p.numel() for k, p in torchvision.models.resnet50().named_parameters() if not k.startswith("fc."))
    assert count(shapes["backbone"]) == resnet50


def _tiny_model(**kw):
    return create_model("tensormask_resnet18_fpn", num_classes=3, backbone_width=8, fpn_channels=8, cls_channels=8,
                        bbox_channels=8, mask_channels=8, num_convs=1, anchor_sizes=((16, 24), (32, 48)),
                        size_divisible=32, **kw)


def _tiny_batch():
    masks = np.zeros((2, 3, 32, 32), np.float32)
    masks[0, 0, 4:18, 6:20] = 1
    masks[0, 1, 16:30, 14:31] = 1
    masks[1, 0, 2:29, 3:30] = 1
    boxes = np.array([[[6, 4, 20, 18], [14, 16, 31, 30], [0, 0, 0, 0]], [[3, 2, 30, 29], [0, 0, 0, 0], [0, 0, 0, 0]]],
                     np.float32)
    return {"boxes": boxes, "classes": np.array([[1, 2, 0], [2, 0, 0]]), "masks": masks,
            "num_instances": np.array([2, 1])}


@pytest.fixture(scope="module")
def tiny():
    """(model, variables, images): one init shared by the model tests (the settings they vary
    create no parameters)."""
    model = _tiny_model(mask_slots=64)
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 32, 32, 3)), jnp.float32)
    return model, jax.jit(model.init)(jax.random.key(0), x), x


def test_training_losses_equal_an_independent_recomputation_from_the_head(tiny):
    """The three losses of `train_outputs`, recomputed from the head's raw outputs with the
    references: windows written out, the loop assignment above, fvcore's FL*, torchvision's box
    coder, swap_align2nat on the whole map, torchvision's roi_align targets and torch's BCE."""
    model, variables, x = tiny
    tg = _tiny_batch()
    losses, samples = jax.jit(lambda v, x, t: model.apply(v, x, t, method=tm.TensorMask.train_outputs))(
        variables, x, tg)
    logits, deltas, aligned = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.head(m.features(x))))(
        variables, x)

    from fvcore.nn import sigmoid_focal_loss_star
    from segjax.ops import swap_align2nat
    from torchvision.models.detection._utils import BoxCoder

    coder = BoxCoder((1.5, 1.5, 0.75, 0.75))
    for i in range(2):
        wins, units, where = [], [], []
        for lvl, sizes in enumerate(((16, 24), (32, 48))):
            s = 4 * 2 ** lvl
            for y in range(32 // s):
                for xx in range(32 // s):
                    for a, z in enumerate(sizes):
                        wins.append([xx * s - z / 2, y * s - z / 2, xx * s + z / 2, y * s + z / 2])
                        units.append(s)
                        where.append((lvl, y, xx, a))
        wins, units = np.asarray(wins, np.float32), np.asarray(units, np.float32)
        ok = np.arange(3) < tg["num_instances"][i]
        match, pos = assignment_reference(tg["boxes"][i], ok, wins, units, 12.0)
        np.testing.assert_array_equal(np.asarray(samples["positive"][i]), pos)
        num_fg = pos.sum()
        assert num_fg > 0
        cls = np.concatenate([np.asarray(l[i]).reshape(-1, 2) for l in logits])
        target = np.zeros_like(cls)
        target[pos, tg["classes"][i][match[pos]] - 1] = 1
        want_cls = sigmoid_focal_loss_star(torch.tensor(cls), torch.tensor(target), 0.3, 3.0, "sum").item()
        np.testing.assert_allclose(losses["loss_cls"][0][i], want_cls, rtol=1e-4)
        dl = np.concatenate([np.asarray(d[i]).reshape(-1, 4) for d in deltas])[pos]
        reg = coder.encode_single(torch.tensor(tg["boxes"][i][match[pos]]), torch.tensor(wins[pos])).numpy()
        np.testing.assert_allclose(losses["loss_box_reg"][0][i], np.abs(dl - reg).sum(), rtol=1e-4)
        mask_total = 0.0
        for k in np.flatnonzero(pos):
            lvl, y, xx, a = where[k]
            v = (4, 6)[a]
            nat = np.asarray(swap_align2nat(aligned[lvl][a][i:i + 1], 2 ** lvl))[0, y, xx]
            size = v * 2 ** lvl
            roi = torch.tensor([[0, *wins[k]]], dtype=torch.float32)
            soft = torchvision.ops.roi_align(torch.tensor(tg["masks"][i, match[k]])[None, None], roi, (size, size),
                                             1.0, 0, aligned=True)[0, 0]
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                torch.tensor(nat.reshape(size, size)), (soft >= 0.5).float(), pos_weight=torch.tensor(1.5),
                reduction="sum")
            mask_total += 2.0 * bce.item() / size ** 2
        np.testing.assert_allclose(losses["loss_mask"][0][i], mask_total, rtol=1e-4)
        assert int(losses["loss_cls"][1][i]) == int(losses["loss_mask"][1][i]) == num_fg
    assert not np.asarray(samples["mask_overflow"]).any()


def test_outputs_keep_mask_rcnns_contract_and_overflowing_slots_are_counted(tiny):
    base, variables, x = tiny
    model = base.clone(mask_slots=1, detections_per_img=5, topk_candidates=50, score_thresh=0.0)
    out = jax.jit(model.apply)(variables, x)
    assert {k: v.shape for k, v in out.items()} == {
        "boxes": (2, 5, 4), "scores": (2, 5), "classes": (2, 5), "num_detections": (2,),
        "mask_probs": (2, 5, 28, 28), "mask_boxes": (2, 5, 4)}
    assert np.all(np.asarray(out["num_detections"]) == 5)  # score_thresh 0: every slot is filled
    assert set(np.unique(np.asarray(out["classes"]))) <= {1, 2}
    _, samples = jax.jit(lambda v, x, t: model.apply(v, x, t, method=tm.TensorMask.train_outputs))(
        variables, x, _tiny_batch())
    pos = np.asarray(samples["positive"])
    # 2 levels x 2 anchors = 4 groups of 1 slot each: positives past one per group overflow.
    groups = [slice(0, 128), slice(128, 160)]
    want = [sum(max(int(pos[i, g][a::2].sum()) - 1, 0) for g in groups for a in range(2)) for i in range(2)]
    np.testing.assert_array_equal(np.asarray(samples["mask_overflow"]), want)
