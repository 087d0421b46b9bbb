"""PANet (segjax.models.detection.panet) part by part against torch transcriptions of the paper.

The three additions to Mask R-CNN each run against a torch transcription written here from the
paper (Sec. 3, Figs. 2, 4, 6) and the authors' code, with the same random weights copied in
(torch flattens pooled grids (channel, y, x), segjax (y, x, channel): the fc weights are permuted
on the way): values and gradients (inputs and every parameter), plus bfloat16 compute against
float32. The pooling is `torchvision.ops.roi_align` per level (`aligned=False`,
`sampling_ratio=2`, as segjax's Mask R-CNN poolers). The whole model, tiny, then runs its eval
forward (the instance contract) and one instance-task train step in one compile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from segjax.models import create_model
from segjax.models.detection.maskrcnn import ROI_SCALES
from segjax.models.detection.panet import (AdaptiveMaskHead, AdaptiveTwoMLPHead, BottomUpPath, FusedMaskPredictor,
                                           adaptive_roi_align_table)
from segjax.ops.roi_align import pyramid_geometry, pyramid_table

FAST = {"xla_backend_optimization_level": 0}


def _t(x):
    return torch.tensor(np.asarray(x, np.float64), requires_grad=True)


def _conv_w(kernel):
    """HWIO -> torch OIHW (a leaf tensor)."""
    return _t(np.asarray(kernel).transpose(3, 2, 0, 1))


def _fc_w(kernel, hw, c):
    """segjax Dense kernel over a (y, x, c)-flattened [hw, hw, c] grid -> torch Linear weight over (c, y, x)."""
    k = np.asarray(kernel)
    return _t(k.reshape(hw, hw, c, -1).transpose(2, 0, 1, 3).reshape(hw * hw * c, -1).T)


def _random_params(np_rng, shapes, scale=0.3):
    """N(0, scale) arrays shaped like `shapes` (an `eval_shape` tree: no eager `init`, which
    compiles every initialiser op on its own)."""
    return jax.tree.map(lambda p: jnp.asarray(np_rng.normal(0.0, scale, p.shape), jnp.float32), shapes)


def _init_shapes(module, *inputs):
    return jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]


def _nchw(x):
    return torch.as_tensor(np.asarray(x, np.float64)).permute(0, 3, 1, 2)


def _close(ours, ref, tol=1e-4, what=""):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)
    assert err < tol, f"{what}: relative max error {err:.3g}"
    assert np.abs(ref).max() > 0, what  # a non-trivial comparison


def _rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _grads_of(fn, params, inputs, cot, low_fn):
    """(fn(params, inputs), d sum(outputs * cot) / d (params, inputs), low_fn(params, inputs)) of
    pure functions, compiled together (`low_fn`: the bfloat16-compute twin)."""
    def loss(p, x):
        return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(fn(p, x)), jax.tree.leaves(cot)))

    def run(p, x):
        return fn(p, x), jax.grad(loss, argnums=(0, 1))(p, x), low_fn(p, x)

    return jax.jit(run).lower(params, inputs).compile(FAST)(params, inputs)


# -- bottom-up path augmentation (Sec. 3.1, Fig. 2) ----------------------------------------------

def test_bottom_up_path_matches_torch_on_an_odd_pyramid(np_rng):
    """N2 = P2, N_{i+1} = ReLU(conv3x3(ReLU(conv3x3_s2(N_i)) + P_{i+1})), N6 = N5[::2, ::2], on an
    odd-sized pyramid (13x11 -> 7x6 -> 4x3 -> 2x2: the stride-2 conv's ceil(H / 2))."""
    c, sizes = 6, [(13, 11), (7, 6), (4, 3), (2, 2)]
    names = ("p2", "p3", "p4", "p5")
    pyramid = {k: jnp.asarray(np_rng.normal(size=(2, h, w, c)), jnp.float32) for k, (h, w) in zip(names, sizes)}
    module = BottomUpPath(channels=c)
    params = _random_params(np_rng, _init_shapes(module, pyramid))
    fn = lambda p, x: module.apply({"params": p}, x)  # noqa: E731
    low_fn = lambda p, x: module.clone(dtype=jnp.bfloat16).apply({"params": p}, x)  # noqa: E731
    shapes = jax.eval_shape(fn, params, pyramid)
    cot = {k: jnp.asarray(np_rng.normal(size=s.shape), jnp.float32) for k, s in shapes.items()}
    out, (g_params, g_inputs), low = _grads_of(fn, params, pyramid, cot, low_fn)

    tp = {k: _nchw(v).requires_grad_() for k, v in pyramid.items()}
    tw = {name: (_conv_w(p["kernel"]), _t(p["bias"])) for name, p in params.items()}
    n = [tp["p2"]]
    for i in range(1, 4):
        down = F.relu(F.conv2d(n[-1], *tw[f"down_{i}"], stride=2, padding=1))
        n.append(F.relu(F.conv2d(down + tp[names[i]], *tw[f"fuse_{i}"], padding=1)))
    ref = dict(zip(("n2", "n3", "n4", "n5"), n), n6=F.max_pool2d(n[-1], 1, 2))
    sum((ref[k] * _nchw(cot[k])).sum() for k in ref).backward()

    assert set(out) == set(ref)
    for k in ref:
        _close(out[k], ref[k].detach().permute(0, 2, 3, 1), what=k)
    for k in names:
        _close(g_inputs[k], tp[k].grad.permute(0, 2, 3, 1), what=f"d/d{k}")
    for name, (w, b) in tw.items():
        _close(g_params[name]["kernel"], w.grad.permute(2, 3, 1, 0), what=f"d/d{name}.kernel")
        _close(g_params[name]["bias"], b.grad, what=f"d/d{name}.bias")
    assert max(_rel_l2(low[k], out[k]) for k in out) < 5e-2
    with pytest.raises(ValueError, match="ceil"):
        jax.eval_shape(fn, params, {**pyramid, "p3": pyramid["p3"][:, :6]})


# -- adaptive feature pooling (Sec. 3.2, Fig. 6) --------------------------------------------------

@pytest.fixture(scope="module")
def pyramid_and_boxes():
    """Two images' 4-level pyramid of a 64 x 56 input, and 5 boxes over both images."""
    rng = np.random.default_rng(3)
    c = 3
    levels = [jnp.asarray(rng.normal(size=(2, 64 // s, 56 // s, c)), jnp.float32) for s in (4, 8, 16, 32)]
    xy = rng.uniform(0, 40, (5, 2))
    wh = rng.uniform(4, 30, (5, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [56, 64])], axis=1).astype(np.float32)
    image = np.array([0, 1, 1, 0, 1], np.int32)
    return levels, jnp.asarray(boxes), jnp.asarray(image)


def _tv_pool(levels_t, boxes, image, size):
    """torchvision roi_align of every box on every level: list over levels of [K, C, s, s]."""
    rois = torch.cat([torch.as_tensor(np.asarray(image, np.float64))[:, None],
                      torch.as_tensor(np.asarray(boxes, np.float64))], dim=1)
    return [torchvision.ops.roi_align(f, rois, size, spatial_scale=s, sampling_ratio=2, aligned=False)
            for f, s in zip(levels_t, ROI_SCALES)]


def test_adaptive_pooling_and_box_head_match_torchvision_roi_align_per_level_and_max(np_rng, pyramid_and_boxes):
    """Every box from every level (torchvision's roi_align per level), fc6 per level, max, fc7."""
    levels, boxes, image = pyramid_and_boxes
    c, d = levels[0].shape[-1], 12
    geometry = pyramid_geometry(levels)
    head = AdaptiveTwoMLPHead(representation_size=d)
    pooled_shape = (len(boxes), 4, 7, 7, c)
    params = _random_params(np_rng, _init_shapes(head, jax.ShapeDtypeStruct(pooled_shape, jnp.float32)), 0.1)

    def fn(p, levels):
        pooled = adaptive_roi_align_table(pyramid_table(levels), geometry, boxes, image, 7, scales=ROI_SCALES)
        return pooled, head.apply({"params": p}, pooled)

    def low_fn(p, levels):
        return head.clone(dtype=jnp.bfloat16).apply({"params": p}, fn(p, levels)[0])

    cot = (jnp.asarray(np_rng.normal(size=pooled_shape), jnp.float32),
           jnp.asarray(np_rng.normal(size=(len(boxes), d)), jnp.float32))
    (pooled, out), (g_params, g_levels), low = _grads_of(fn, params, levels, cot, low_fn)

    levels_t = [_nchw(f).requires_grad_() for f in levels]
    tv_pooled = _tv_pool(levels_t, boxes, image, 7)
    fc6 = [(_fc_w(params[f"fc6_{lv}"]["kernel"], 7, c), _t(params[f"fc6_{lv}"]["bias"])) for lv in range(4)]
    fc7 = (_t(np.asarray(params["fc7"]["kernel"]).T), _t(params["fc7"]["bias"]))
    per_level = [F.relu(F.linear(x.flatten(1), *w)) for x, w in zip(tv_pooled, fc6)]
    ref = F.relu(F.linear(torch.stack(per_level).amax(0), *fc7))
    ref_pooled = torch.stack(tv_pooled, dim=1)  # [K, L, C, s, s]
    ((ref * torch.as_tensor(np.asarray(cot[1], np.float64))).sum()
     + (ref_pooled * torch.as_tensor(np.asarray(cot[0], np.float64)).permute(0, 1, 4, 2, 3)).sum()).backward()

    _close(pooled, ref_pooled.detach().permute(0, 1, 3, 4, 2), what="pooled")
    _close(out, ref.detach(), what="box features")
    for lv, f in enumerate(levels_t):
        _close(g_levels[lv], f.grad.permute(0, 2, 3, 1), what=f"d/dlevel{lv}")
    for lv, (w, b) in enumerate(fc6):
        want = w.grad.numpy().T.reshape(c, 7, 7, d).transpose(1, 2, 0, 3).reshape(-1, d)  # back to (y, x, c)
        _close(g_params[f"fc6_{lv}"]["kernel"], want, what=f"d/dfc6_{lv}")
        _close(g_params[f"fc6_{lv}"]["bias"], b.grad, what=f"d/dfc6_{lv}.bias")
    _close(g_params["fc7"]["kernel"], fc7[0].grad.T, what="d/dfc7")
    _close(g_params["fc7"]["bias"], fc7[1].grad, what="d/dfc7.bias")
    # Each level wins the max somewhere (the fusion is not one level's head).
    assert all(np.abs(g_params[f"fc6_{lv}"]["kernel"]).max() > 0 for lv in range(4))
    assert _rel_l2(low, out) < 5e-2


# -- the fused mask branch (Secs. 3.2 and 3.4, Figs. 4 and 6) ------------------------------------

def test_adaptive_mask_head_and_fused_predictor_match_torch(np_rng):
    """conv1 per level, max, conv2, conv3; FCN conv4 -> deconv -> per-class logits, plus the fc
    path conv4_fc -> conv5_fc (half width) -> fc 784 (+ ReLU) reshaped to 28 x 28, broadcast."""
    k, lv, c, classes = 3, 4, 6, 3
    pooled = jnp.asarray(np_rng.normal(size=(k, lv, 14, 14, c)), jnp.float32)
    head, predictor = AdaptiveMaskHead(channels=c), FusedMaskPredictor(classes, channels=c)
    shapes = {"head": _init_shapes(head, pooled),
              "predictor": _init_shapes(predictor, jax.ShapeDtypeStruct((k, 14, 14, c), jnp.float32))}
    params = _random_params(np_rng, shapes, 0.2)

    def fn(p, x, dtype=jnp.float32):
        hidden = head.clone(dtype=dtype).apply({"params": p["head"]}, x)
        return predictor.clone(dtype=dtype).apply({"params": p["predictor"]}, hidden)

    cot = jnp.asarray(np_rng.normal(size=(k, 28, 28, classes)), jnp.float32)
    out, (g_params, g_pooled), low = _grads_of(fn, params, pooled, cot, lambda p, x: fn(p, x, jnp.bfloat16))

    conv = lambda p: (_conv_w(p["kernel"]), _t(p["bias"]))  # noqa: E731
    hp, pp = params["head"], params["predictor"]
    tw = {f"mask_fcn1_{i}": conv(hp[f"mask_fcn1_{i}"]) for i in range(lv)}
    tw.update({name: conv(hp[name]) for name in ("mask_fcn2", "mask_fcn3")})
    tw.update({name: conv(pp[name]) for name in ("mask_fcn4", "mask_fcn4_fc", "mask_fcn5_fc")})
    tw["mask_fcn_logits"] = conv(pp["predictor"]["mask_fcn_logits"])
    tw["conv5_mask"] = (_t(np.asarray(pp["predictor"]["conv5_mask"]["kernel"]).transpose(3, 2, 0, 1)),
                        _t(pp["predictor"]["conv5_mask"]["bias"]))
    tw["mask_fc"] = (_fc_w(pp["mask_fc"]["kernel"], 14, c // 2), _t(pp["mask_fc"]["bias"]))

    x = torch.as_tensor(np.asarray(pooled, np.float64)).permute(0, 1, 4, 2, 3).requires_grad_()
    y = torch.stack([F.relu(F.conv2d(x[:, i], *tw[f"mask_fcn1_{i}"], padding=1)) for i in range(lv)]).amax(0)
    for name in ("mask_fcn2", "mask_fcn3"):
        y = F.relu(F.conv2d(y, *tw[name], padding=1))
    fcn = F.relu(F.conv2d(y, *tw["mask_fcn4"], padding=1))
    fcn = F.conv2d(F.relu(F.conv_transpose2d(fcn, *tw["conv5_mask"], stride=2)), *tw["mask_fcn_logits"])
    fc = F.relu(F.conv2d(F.relu(F.conv2d(y, *tw["mask_fcn4_fc"], padding=1)), *tw["mask_fcn5_fc"], padding=1))
    fc = F.relu(F.linear(fc.flatten(1), *tw["mask_fc"])).view(k, 1, 28, 28)
    ref = fcn + fc
    (ref * _nchw(cot)).sum().backward()

    _close(out, ref.detach().permute(0, 2, 3, 1), what="mask logits")
    assert np.abs(fc.detach().numpy()).max() > 0  # the fc path contributes
    _close(g_pooled, x.grad.permute(0, 1, 3, 4, 2), what="d/dpooled")
    grads_of = {**{n: g_params["head"] for n in hp}, **{n: g_params["predictor"] for n in pp},
                **{n: g_params["predictor"]["predictor"] for n in pp["predictor"]}}
    for name, (w, b) in tw.items():
        g = grads_of[name]
        if name == "mask_fc":  # back to (y, x, c) rows
            want = w.grad.numpy().T.reshape(c // 2, 14, 14, -1).transpose(1, 2, 0, 3).reshape(-1, 784)
        else:  # OIHW (the deconv's IOHW) -> segjax's HWIO (its [kh, kw, out, in])
            want = w.grad.numpy().transpose(2, 3, 1, 0)
        _close(g[name]["kernel"], want, what=f"d/d{name}")
        _close(g[name]["bias"], b.grad, what=f"d/d{name}.bias")
    assert _rel_l2(low, out) < 5e-2
    with pytest.raises(ValueError, match="channels >= 2"):
        _init_shapes(FusedMaskPredictor(classes, channels=1), jnp.zeros((1, 14, 14, 1)))


# -- the whole model: instance contract and one train step ---------------------------------------

def test_eval_contract_and_one_instance_train_step(np_rng):
    """A tiny `panet_resnet18_fpn`: the eval forward on odd-sized images returns Mask R-CNN's
    contract with valid values, and one instance-task train step (the trainer's `train_step`)
    gives finite losses and moves every PANet-specific parameter (all four levels' first layers,
    the bottom-up convs, the fc path)."""
    import optax

    from segjax.tasks.instance import InstanceTask, instance_targets
    from segjax.train import steps
    from segjax.train.state import create_train_state
    from tests.tasks.test_instance import IGNORE, maps

    k, d = 5, 10
    # The backbone is frozen (trainable_backbone_layers=0): its backward pass, Mask R-CNN's and
    # tested there, would double the compile time; every PANet part still trains.
    model = create_model("panet_resnet18_fpn", num_classes=k, backbone_width=8, fpn_channels=8,
                         representation_size=16, mask_channels=8, rpn_pre_nms_top_n_test=50,
                         rpn_post_nms_top_n_test=50, box_detections_per_img=d, rpn_pre_nms_top_n_train=48,
                         rpn_post_nms_top_n_train=48, box_batch_size_per_image=16, trainable_backbone_layers=0)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))

    def fill(path, leaf):  # fan-in scaled weights, unit BatchNorm (no eager init: see _random_params)
        name = jax.tree_util.keystr(path[-1:])
        if "kernel" in name:
            return np_rng.normal(0.0, np.prod(leaf.shape[:-1]) ** -0.5, leaf.shape).astype(np.float32)
        return np.full(leaf.shape, 1.0 if ("scale" in name or "var" in name) else 0.0, np.float32)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    state = create_train_state(model, None, (1, 32, 32, 3), optax.sgd(0.05, momentum=0.9), variables=variables)
    label, instance = maps(np_rng, b=2, h=40, w=40, n_max=3, sizes=(8, 20))
    batch = {"image": np_rng.normal(size=(2, 40, 40, 3)).astype(np.float32),
             **instance_targets(label, instance, max_instances=4, ignore_label=IGNORE)}
    task = InstanceTask(num_classes=k, ignore_label=IGNORE, max_instances=4)
    h, w = 37, 45
    images = np_rng.normal(size=(2, h, w, 3)).astype(np.float32)

    def run(state, batch, images):
        out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images)
        return out, steps.train_step(state, batch, jax.random.key(1), task=task)

    out, (new_state, metrics) = jax.jit(run).lower(state, batch, images).compile(FAST)(state, batch, images)
    out = jax.tree.map(np.asarray, out)

    assert set(out) == {"boxes", "scores", "classes", "num_detections", "mask_probs"}
    assert out["boxes"].shape == (2, d, 4) and out["mask_probs"].shape == (2, d, 28, 28)
    assert out["classes"].dtype == np.int32 and out["num_detections"].dtype == np.int32
    for i in range(2):
        n = int(out["num_detections"][i])
        assert 0 < n <= d
        b = out["boxes"][i, :n]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert (np.diff(out["scores"][i, :n]) <= 0).all() and (out["scores"][i, :n] > 0.05).all()
        assert ((out["classes"][i, :n] >= 1) & (out["classes"][i, :n] < k)).all()
        assert (out["scores"][i, n:] == 0).all() and (out["classes"][i, n:] == 0).all()
        probs = out["mask_probs"][i]
        assert (probs[:n] > 0).all() and (probs[:n] < 1).all() and (probs[n:] == 0).all()

    assert float(metrics["loss"]) > 0 and float(metrics["grads_finite"]) == 1.0
    assert float(metrics["valid_pixels"]) == 2.0  # the loss counts images
    old, new = state.params, new_state.params
    specific = {"bottom_up": [f"{kind}_{i}" for kind in ("down", "fuse") for i in (1, 2, 3)],
                "box_head": [f"fc6_{lv}" for lv in range(4)] + ["fc7"],
                "mask_head": [f"mask_fcn1_{lv}" for lv in range(4)] + ["mask_fcn2", "mask_fcn3"],
                "mask_predictor": ["mask_fcn4", "mask_fcn4_fc", "mask_fcn5_fc", "mask_fc", "predictor"]}
    for part, names in specific.items():
        assert sorted(old[part]) == sorted(names), part
        for name in names:
            moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old[part][name]),
                                                                jax.tree.leaves(new[part][name]))]
            assert all(moved), f"{part}/{name} did not train"
