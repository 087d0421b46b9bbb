"""Few-shot segmentation: prototype pieces (`segjax.models.fewshot`) against a torch
transcription of PANet's code paths, the model's wiring by hand, the task's metrics, pixel
sampling and triplet term by hand, and a short trainer run on synthetic_shapes/tiny (the episode
sampler's guarantees are in tests/data/test_episodes.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax.models import fewshot

IGNORE = 255


def torch_map(fts, mask):
    """PANet's getFeatures: bilinear upsampling to the mask, masked sum / (mask sum + 1e-5)."""
    fts = F.interpolate(fts, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    return torch.sum(fts * mask[:, None], dim=(2, 3)) / (mask[:, None].sum(dim=(2, 3)) + 1e-5)


def test_masked_average_pool_and_cosine_equal_torch_values_and_gradients(np_rng):
    f = np_rng.normal(size=(3, 5, 7, 6))
    m = (np_rng.random((3, 19, 23)) < 0.4).astype(np.float64)
    m[2] = 0.0  # an empty mask: a zero prototype, finite gradients
    p = np_rng.normal(size=(4, 6))
    w = np_rng.normal(size=(3, 5, 7, 4))
    jax.config.update("jax_enable_x64", True)
    try:
        def ours(f, p):
            pooled = fewshot.masked_average_pool(jnp.asarray(f), jnp.asarray(m))
            protos = jnp.concatenate([p, pooled], axis=0)
            return fewshot.cosine_logits(f, protos, 20.0), pooled

        (logits, pooled) = ours(f, p)
        g_f, g_p = jax.grad(lambda f, p: jnp.sum(ours(f, p)[0][..., :4] * w)
                            + jnp.sum(ours(f, p)[0][..., 4:] ** 2), argnums=(0, 1))(f, p)
    finally:
        jax.config.update("jax_enable_x64", False)
    ft = torch.tensor(f.transpose(0, 3, 1, 2), requires_grad=True)
    pt = torch.tensor(p, requires_grad=True)
    pooled_t = torch_map(ft, torch.tensor(m))
    protos_t = torch.cat([pt, pooled_t], 0)
    cos = torch.stack([F.cosine_similarity(ft, q[None, :, None, None], dim=1) for q in protos_t], -1) * 20
    (torch.sum(cos[..., :4] * torch.tensor(w)) + torch.sum(cos[..., 4:] ** 2)).backward()
    # float64 throughout except segjax.ops.resize's interpolation weights (float32): errors of
    # ~1e-8 relative, so compare by norm (an element with cancellation can show ~1e-6).
    rel = lambda a, b: np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)  # noqa: E731
    assert rel(pooled, pooled_t.detach().numpy()) < 1e-7
    assert not np.asarray(pooled)[2].any()
    assert rel(logits, cos.detach().numpy()) < 1e-7
    assert rel(g_f, ft.grad.numpy().transpose(0, 2, 3, 1)) < 1e-7
    assert rel(g_p, pt.grad.numpy()) < 1e-7
    assert np.isfinite(np.asarray(g_f)).all()


def test_prototypes_by_hand(np_rng):
    """Background over every (way, shot) support image, foreground per way over its shots; a
    pixel marked invalid counts in neither."""
    n, k, h, w, c = 2, 3, 4, 5, 3
    f = np_rng.normal(size=(n, k, h, w, c)).astype(np.float32)
    m = (np_rng.random((n, k, h, w)) < 0.5).astype(np.float32)
    valid = np_rng.random((n, k, h, w)) < 0.8
    got = np.asarray(fewshot.prototypes(jnp.asarray(f), jnp.asarray(m), jnp.asarray(valid)))
    bg = np.mean([(f[a, b] * ((1 - m[a, b]) * valid[a, b])[..., None]).sum((0, 1))
                  / (((1 - m[a, b]) * valid[a, b]).sum() + 1e-5) for a in range(n) for b in range(k)], 0)
    np.testing.assert_allclose(got[0], bg, rtol=1e-5)
    for a in range(n):
        fg = np.mean([(f[a, b] * (m[a, b] * valid[a, b])[..., None]).sum((0, 1))
                      / ((m[a, b] * valid[a, b]).sum() + 1e-5) for b in range(k)], 0)
        np.testing.assert_allclose(got[1 + a], fg, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_model():
    from segjax.models import create_model

    model = create_model("fewshot_resnet18", num_classes=6, width=4)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    return model, variables


def test_model_is_the_prototype_recipe_by_hand(tiny_model, np_rng):
    """Query logits = scale * cos(query features, prototypes) upsampled; alignment logits =
    support features against (background, way) prototypes pooled from the query under its
    argmax prediction."""
    from segjax.ops import resize

    model, v = tiny_model
    b, n, k, s = 2, 2, 1, 16
    si = np_rng.normal(size=(b, n, k, s, s, 3)).astype(np.float32)
    sm = (np_rng.random((b, n, k, s, s)) < 0.3).astype(np.float32)
    qi = np_rng.normal(size=(b, s, s, 3)).astype(np.float32)
    out = model.apply(v, si, sm, qi, train=False)
    embed = lambda x: np.asarray(model.apply(v, x)["features"])  # noqa: E731
    for e in range(b):
        feats = embed(si[e].reshape(n * k, s, s, 3)).reshape(n, k, *embed(qi[:1]).shape[1:])
        protos = fewshot.prototypes(feats, sm[e])
        want = resize(fewshot.cosine_logits(embed(qi[e:e + 1]), protos, 20.0), (s, s))
        np.testing.assert_allclose(out["logits"][e], want[0], rtol=2e-4, atol=2e-4)
    train_out, _ = model.apply(v, si, sm, qi, train=True, mutable=["batch_stats"])
    assert train_out["align_logits"].shape == (b, n, k, s, s, 2)
    # The alignment by hand (train-mode BatchNorm: the features of this very batch, which the
    # model embeds as one array, supports first).
    allimg = np.concatenate([si.reshape(b * n * k, s, s, 3), qi])
    feats = np.asarray(model.apply(v, allimg, train=True, mutable=["batch_stats"])[0]["features"])
    s_feat, q_feat = feats[:b * n * k].reshape(b, n, k, *feats.shape[1:]), feats[b * n * k:]
    for e in range(b):
        pred = np.argmax(np.asarray(train_out["logits"][e]), -1)
        pools = [fewshot.masked_average_pool(q_feat[e:e + 1], (pred == c)[None].astype(np.float32))[0]
                 for c in range(n + 1)]
        for way in range(n):
            protos = jnp.stack([pools[0], pools[1 + way]])
            want = resize(fewshot.cosine_logits(s_feat[e, way], protos, 20.0), (s, s))
            np.testing.assert_allclose(train_out["align_logits"][e, way], want, rtol=2e-4, atol=2e-4)


def test_accumulator_by_hand():
    from segjax.tasks.fewshot import FewShotAccumulator

    acc = FewShotAccumulator((4, 5))
    per = {"classes": np.array([[4], [5], [4]]), "inter": np.array([[3], [0], [5]]),
           "union": np.array([[6], [4], [5]]), "fg_inter": np.array([3, 0, 5]),
           "fg_union": np.array([6, 4, 5]), "bg_inter": np.array([10, 12, 11]),
           "bg_union": np.array([13, 16, 11])}
    acc.update({}, per, {"valid": np.array([True, True, True])})
    acc.update({}, per, {"valid": np.array([False, False, False])})
    r = acc.result()
    assert r["fg_iou_class_4"] == pytest.approx(8 / 11) and r["fg_iou_class_5"] == 0.0
    assert r["fg_miou"] == pytest.approx((8 / 11 + 0) / 2)
    assert r["fb_iou"] == pytest.approx((33 / 40 + 8 / 15) / 2)
    assert r["episode_fg_iou"] == pytest.approx((0.5 + 0 + 1) / 3) and r["num_episodes"] == 3


def test_loss_is_normalised_globally_on_four_devices(np_rng):
    """Query CE over the global valid pixels plus the alignment CE rescaled to its own global
    count: pmap over 4 devices equals one device."""
    import functools

    from segjax.tasks.base import StepContext
    from segjax.tasks.fewshot import FewShotTask

    task = FewShotTask(num_classes=6, ignore_label=IGNORE, test_classes=(4, 5), align_weight=0.7)
    b, s = 8, 6
    outputs = {"logits": np_rng.normal(size=(b, s, s, 2)).astype(np.float32),
               "align_logits": np_rng.normal(size=(b, 1, 1, s, s, 2)).astype(np.float32)}
    batch = {"query_target": np_rng.integers(0, 2, (b, s, s)), "query_valid": np_rng.random((b, s, s)) < 0.6,
             "support_mask": np_rng.integers(0, 2, (b, 1, 1, s, s)).astype(np.float32),
             "support_valid": np_rng.random((b, 1, 1, s, s)) < np.linspace(0.1, 0.9, b)[:, None, None, None, None]}

    def loss(o, bt, axis_name=None):
        total, n = task.loss(o, bt, StepContext(rng=jax.random.key(0), axis_name=axis_name))
        if axis_name:
            total, n = jax.lax.psum(total, axis_name), jax.lax.psum(n, axis_name)
        return total / n

    def ce(logits, target, valid):
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return -np.take_along_axis(logp, target[..., None].astype(int), -1)[..., 0][valid].sum()

    want = (ce(outputs["logits"], batch["query_target"], batch["query_valid"]) / batch["query_valid"].sum()
            + 0.7 * ce(outputs["align_logits"], batch["support_mask"], batch["support_valid"])
            / batch["support_valid"].sum())
    np.testing.assert_allclose(loss(outputs, batch), want, rtol=1e-5)
    split = lambda x: x.reshape(4, 2, *x.shape[1:])  # noqa: E731
    got = jax.pmap(functools.partial(loss, axis_name="d"), axis_name="d")(
        jax.tree.map(split, outputs), jax.tree.map(split, batch))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The demo preset, shrunk, trained 2 steps on synthetic_shapes/tiny (class 1 held out)."""
    from experiments.configs import fewshot as recipes
    from segjax.data import pipeline
    from segjax.train import loop

    root = tmp_path_factory.mktemp("fewshot")
    data_dir = str(root / "tfds")
    pipeline.prepare("synthetic_shapes/tiny", data_dir)
    c = recipes.get_config("demo")
    c.dataset.name, c.dataset.crop_size = "synthetic_shapes/tiny", 32
    c.dataset.data_dir = data_dir
    c.eval.pad_to = 48
    c.batch_size, c.fewshot.pool, c.fewshot.eval_episodes = 4, 16, 6
    c.fewshot.test_classes = (1,)
    c.num_train_steps, c.log_every_steps = 2, 1
    c.eval_every_steps = c.checkpoint_every_steps = 2
    c.optimizer.warmup_steps = 1  # load_run must build the optimizer for it (it did not)
    c.model.width = 4
    workdir = str(root / "run")
    return workdir, loop.train_and_evaluate(c, workdir)


@pytest.mark.slow
def test_fewshot_demo_config_trains_and_evaluates_on_tiny(tiny_run):
    from segjax.train.metric_writers import read_metrics

    workdir, result = tiny_run
    records = read_metrics(workdir)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    (ev,) = [r for r in records if r["split"] == "validation"]
    assert ev["num_episodes"] == 6 and ev["fg_miou"] == pytest.approx(result["fg_miou"])
    per_class = {k: v for k, v in ev.items() if k.startswith("fg_iou_class_")}
    assert set(per_class) <= {"fg_iou_class_1"}
    # fg mIoU is the mean IoU over the held-out classes that were scored (0 with none).
    assert ev["fg_miou"] == pytest.approx(np.mean(list(per_class.values())) if per_class else 0.0)


@pytest.mark.slow
def test_fewshot_eval_scores_the_same_episodes_as_the_trainer(tiny_run):
    """experiments.fewshot_eval: its prototype row is the trainer's evaluation of the same
    checkpoint (same episodes, same metric code); the baselines score those episodes too."""
    from experiments import fewshot_eval

    workdir, result = tiny_run
    got = fewshot_eval.evaluate_run(workdir, checkpoint="best", batch=4, finetune_steps=2,
                                    finetune_lr=0.01)
    assert got["prototype"]["fg_miou"] == pytest.approx(result["fg_miou"], abs=1e-9)
    assert got["prototype"]["fb_iou"] == pytest.approx(result["fb_iou"], abs=1e-9)
    for m in ("nearest_neighbour", "finetune"):
        assert got[m]["num_episodes"] == 6 and 0.0 <= got[m]["fg_miou"] <= 1.0
    full = fewshot_eval.evaluate_run(workdir, checkpoint="latest", batch=4, finetune_steps=2,
                                     finetune_lr=0.01, finetune_encoder=True)
    assert full["prototype"] == got["prototype"] and full["finetune"]["num_episodes"] == 6
    text = fewshot_eval.markdown({workdir: got}, [workdir])
    assert f"| prototype | {got['prototype']['fg_miou']:.3f} |" in text


def test_sample_pixels_draws_distinct_valid_pixels_of_each_side(np_rng):
    from segjax.tasks.fewshot import sample_pixels

    for trial in range(5):
        labels = np_rng.integers(0, 3, (6, 7)) * (np_rng.random((6, 7)) < 0.3)
        valid = np_rng.random((6, 7)) < 0.8
        per = int(np_rng.integers(1, 12))
        index, ok = map(np.asarray, sample_pixels(jax.random.key(trial), jnp.asarray(labels),
                                                  jnp.asarray(valid), per))
        fl, fv = labels.reshape(-1), valid.reshape(-1)
        for side, want in ((slice(0, per), (fl > 0) & fv), (slice(per, 2 * per), (fl == 0) & fv)):
            got = index[side][ok[side]]
            assert len(got) == min(per, want.sum()) == len(set(got.tolist()))
            assert want[got].all()
    # Another key draws another subset (when there is a choice).
    labels, valid = jnp.zeros((8, 8), jnp.int32), jnp.ones((8, 8), bool)
    a, _ = sample_pixels(jax.random.key(0), labels, valid, 4)
    b, _ = sample_pixels(jax.random.key(1), labels, valid, 4)
    assert set(np.asarray(a[4:]).tolist()) != set(np.asarray(b[4:]).tolist())


def metric_batch(np_rng, b=8, s=16, cell=4, c=5):
    """Episodes at s x s with stride-`cell` features (one way, one shot) and a loss-relevant
    spread of classes, ignored pixels and feature values."""
    outputs = {"logits": np_rng.normal(size=(b, s, s, 2)).astype(np.float32),
               "query_features": np_rng.normal(size=(b, s // cell, s // cell, c)).astype(np.float32),
               "support_features": np_rng.normal(size=(b, 1, 1, s // cell, s // cell, c)).astype(np.float32)}
    batch = {"query_target": np_rng.integers(0, 2, (b, s, s)),
             "query_valid": np_rng.random((b, s, s)) < 0.8,
             "support_mask": np_rng.integers(0, 2, (b, 1, 1, s, s)).astype(np.float32),
             "support_valid": np_rng.random((b, 1, 1, s, s)) < 0.8,
             "classes": np_rng.integers(1, 4, (b, 1)).astype(np.int32)}
    return outputs, batch


@pytest.mark.parametrize("mining", ["all", "hard", "semi_hard"])
def test_triplet_term_is_the_loss_of_every_cell_centre_pixel_by_hand(np_rng, mining):
    """With more sampled pixels than cells every valid cell is taken: the term equals the triplet
    loss of the rows assembled by hand (label = the way's class id at the cell centre, 0 for
    background), and the 4-device pmap (mining over the gathered batch) equals one device.
    Four episodes (one per device): "all" mining is O(rows^3), and 8 episodes' 512 rows made this
    the suite's third-slowest test at LLVM level 0."""
    from segjax.losses import triplet_loss
    from segjax.tasks.base import StepContext
    from segjax.tasks.fewshot import FewShotTask

    kw = {"mining": mining, "margin": 0.3, "normalize": True}
    task = FewShotTask(num_classes=6, ignore_label=IGNORE, test_classes=(4, 5), proto_weight=0.0,
                       triplet_weight=1.0, triplet=kw, triplet_pixels=16)
    outputs, batch = metric_batch(np_rng, b=4)
    rows, labels = [], []
    for i in range(4):
        for feats, mask, valid, cls in (
                (outputs["support_features"][i, 0, 0], batch["support_mask"][i, 0, 0],
                 batch["support_valid"][i, 0, 0], batch["classes"][i, 0]),
                (outputs["query_features"][i], batch["query_target"][i], batch["query_valid"][i],
                 batch["classes"][i, 0])):
            centre = (slice(2, None, 4), slice(2, None, 4))
            keep = valid[centre]
            rows.append(feats[keep])
            labels.append(np.where(mask[centre] > 0, cls, 0)[keep])
    want_sum, want_count = triplet_loss(np.concatenate(rows), np.concatenate(labels), **kw)
    # Each term under jit: one compile instead of op-by-op dispatch (several times faster here).
    terms = lambda t: jax.jit(lambda o, b: t.triplet_terms(  # noqa: E731
        o, b, StepContext(rng=jax.random.key(0))))
    got_sum, got_count = terms(task)(outputs, batch)
    np.testing.assert_allclose(got_sum, want_sum, rtol=1e-5)
    assert got_count == want_count > 0
    # Foreground pixels only.
    fg = np.concatenate(labels) > 0
    fg_sum, fg_count = triplet_loss(np.concatenate(rows)[fg], np.concatenate(labels)[fg], **kw)
    fg_task = FewShotTask(num_classes=6, ignore_label=IGNORE, test_classes=(4, 5), proto_weight=0.0,
                          triplet_weight=1.0, triplet=kw, triplet_pixels=16,
                          triplet_background=False)
    got = terms(fg_task)(outputs, batch)
    np.testing.assert_allclose(got[0], fg_sum, rtol=1e-5)
    assert got[1] == fg_count > 0

    def share(o, bt):
        s, n = task.triplet_terms(o, bt, StepContext(rng=jax.random.key(0), axis_name="d"))
        return jax.lax.psum(s, "d"), jax.lax.psum(n, "d")

    split = lambda x: x.reshape(4, 1, *x.shape[1:])  # noqa: E731
    s4, n4 = jax.pmap(share, axis_name="d")(jax.tree.map(split, outputs), jax.tree.map(split, batch))
    np.testing.assert_allclose(s4[0], want_sum, rtol=1e-5)
    assert n4[0] == want_count
    # Mining each device's share alone (no gather) gives another loss.
    term = terms(task)
    alone = [term(jax.tree.map(lambda x: x[i:i + 1], outputs), jax.tree.map(lambda x: x[i:i + 1], batch))
             for i in range(4)]
    assert not np.isclose(sum(float(s) for s, _ in alone), float(want_sum), rtol=1e-3)
    # The total: proto_weight x prototype CE + triplet rescaled to the query's global pixel count.
    both = FewShotTask(num_classes=6, ignore_label=IGNORE, test_classes=(4, 5), align_weight=0.0,
                       triplet_weight=0.5, triplet=kw, triplet_pixels=16)
    loss = lambda t: jax.jit(lambda o, b: t.loss(o, b, StepContext(rng=jax.random.key(0))))  # noqa: E731
    total, n = loss(both)(outputs, batch)
    ce_only = FewShotTask(num_classes=6, ignore_label=IGNORE, test_classes=(4, 5), align_weight=0.0)
    ce_sum, ce_n = loss(ce_only)(outputs, batch)
    np.testing.assert_allclose(total / n, ce_sum / ce_n + 0.5 * want_sum / want_count, rtol=1e-5)


@pytest.fixture(scope="module")
def metric_run():
    """A tiny prototype segmenter trained 2 steps by prototypes + a batch-all triplet term on
    2 sampled pixels a side (the sampling keyed by episode position), on 1 device.

    Batch-all, not a mining that selects: with semi-hard mining the mesh run's loss matched but
    its gradient norm was 0.26% off, as when two (nearly) tied candidates swap under float32
    rounding that XLA's partitioning of the distance matrix changes (the gradient then goes to
    another pixel). Each mining over the gathered batch is checked by value above."""
    from segjax.models import create_model
    from segjax.tasks.fewshot import FewShotTask
    from tests.train.test_device_invariance import one_device, sgd_state

    rng = np.random.default_rng(8)
    model = create_model("fewshot_resnet18", num_classes=6, width=4)
    state = sgd_state(model, (1, 16, 16, 3), 0.05)
    task = FewShotTask(num_classes=6, ignore_label=IGNORE, test_classes=(4, 5), triplet_weight=1.0,
                       triplet={"mining": "all", "margin": 0.3, "normalize": True},
                       triplet_pixels=2)
    batches = []
    for _ in range(2):
        _, b = metric_batch(rng)
        b["support_image"] = rng.normal(size=(8, 1, 1, 16, 16, 3)).astype(np.float32)
        b["query_image"] = rng.normal(size=(8, 16, 16, 3)).astype(np.float32)
        batches.append(b)
    return state, batches, task, one_device(state, batches, task)


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_fewshot_train_step_on_four_devices_equals_one_device(metric_run, mode):
    """The whole few-shot step (prototypes, alignment, sampled-pixel triplets mined over
    the global batch, synchronised BatchNorm, SGD) for two steps: 4 devices = 1 device (the
    smallest BatchNorm offsets to 1e-6 absolute: float32 summation order)."""
    from tests.train.test_device_invariance import assert_same_run, devices
    from tests.train.test_parallel import rel_diff

    state, batches, task, ref = metric_run
    assert rel_diff(ref[0].params, state.params) > 1e-3  # it trained
    assert_same_run(devices(mode, state, batches, task), ref, param_atol=1e-6)
