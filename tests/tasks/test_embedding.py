"""The embedding task (proposal-free instances): renumbered targets, the U-Net's two heads against
a hand computation, the loss against torch (cross-entropy) plus the torch transcription of the
discriminative loss, global on 4 devices, the whole train step on 4 devices = 1 device, and the
clustering-to-COCO evaluation path on planted embeddings."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.tasks.base import StepContext
from segjax.tasks.embedding import (EmbeddingAccumulator, EmbeddingTask, embedding_instances,
                                    renumber_instances)
from tests.tasks.test_instance import IGNORE, maps

K, M = 5, 6


def test_renumber_instances_keeps_the_partition(np_rng):
    label, instance = maps(np_rng, b=4)
    instance = np.where(instance > 0, instance * 7 + 3, 0)  # sparse, unordered-looking ids
    label[1, 2:5, :] = IGNORE  # ignored pixels lose their instance
    out = renumber_instances(label, instance, max_instances=M, ignore_label=IGNORE)
    for i in range(len(label)):
        kept = np.where(label[i] == IGNORE, 0, instance[i])
        ids = [k for k in np.unique(kept) if k > 0]
        assert sorted(np.unique(out[i][out[i] > 0]).tolist()) == list(range(1, len(ids) + 1))
        for rank, k in enumerate(ids, 1):  # increasing original id -> 1, 2, ...
            np.testing.assert_array_equal(out[i] == rank, kept == k)
        assert not out[i][kept == 0].any()
    with pytest.raises(ValueError, match=r"example index 1\d has \d+ instances.*max_instances=1"):
        renumber_instances(label, instance, max_instances=1, ignore_label=IGNORE,
                           indices=[9, 10, 11, 12])


def test_unet_embedding_heads_are_1x1_convs_of_the_last_decoder_features(np_rng):
    from segjax.models import create_model

    model = create_model("unet_embedding", num_classes=3, embedding_dim=4, base_features=4, depth=2)
    x = jnp.asarray(np_rng.normal(size=(2, 12, 10, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    out, inter = model.apply(variables, x, capture_intermediates=True)
    # The last decoder BatchNorm's output, through the ReLU, feeds both heads.
    feats = np.maximum(np.asarray(inter["intermediates"]["dec0_bn2"]["__call__"][0]), 0.0)
    p = variables["params"]
    for key, head in (("logits", "classifier"), ("embeddings", "embedding")):
        want = feats @ np.asarray(p[head]["kernel"])[0, 0] + np.asarray(p[head]["bias"])
        np.testing.assert_allclose(out[key], want, rtol=1e-5, atol=1e-5)
    assert out["embeddings"].shape == (2, 12, 10, 4)
    # The semantic path is the plain U-Net's: same parameters minus the embedding head.
    plain = create_model("unet", num_classes=3, base_features=4, depth=2)
    params = {k: v for k, v in p.items() if k != "embedding"}
    ref = plain.apply({**variables, "params": params}, x)["logits"]
    np.testing.assert_array_equal(out["logits"], ref)
    with pytest.raises(ValueError, match="embedding_dim"):
        create_model("unet_embedding", num_classes=3, embedding_dim=0)


def batch(np_rng, n=8, h=10, w=12, d=3):
    """Outputs and a batch whose instances and ignored pixels sit very unevenly over the rows."""
    label, instance = maps(np_rng, b=n, h=h, w=w, n_max=3, sizes=(2, 5))
    label[:3] = 0  # the first device's share has no instance at all
    instance[:3] = 0
    label[5, :6] = IGNORE  # and one row is mostly ignored
    instance = renumber_instances(label, instance, max_instances=M, ignore_label=IGNORE)
    outputs = {"logits": np_rng.normal(size=(n, h, w, K)).astype(np.float32),
               "embeddings": (np_rng.normal(size=(n, h, w, d)) * 1.5).astype(np.float32)}
    return outputs, {"image": np.zeros((n, h, w, 3), np.float32), "label": label,
                     "instance": instance}


def test_loss_is_torch_ce_plus_the_discriminative_loss_globally_on_four_devices(np_rng):
    import torch

    from tests.losses.test_metric_learning import torch_discriminative

    task = EmbeddingTask(num_classes=K, ignore_label=IGNORE, max_instances=M, disc_weight=0.7)
    outputs, b = batch(np_rng)
    ce = torch.nn.functional.cross_entropy(
        torch.tensor(outputs["logits"]).permute(0, 3, 1, 2), torch.tensor(b["label"]).long(),
        ignore_index=IGNORE).item()
    ids = np.where(b["label"] == IGNORE, IGNORE, b["instance"])
    d_sum, d_images = torch_discriminative(torch.tensor(outputs["embeddings"], dtype=torch.float64), ids)
    want = ce + 0.7 * float(d_sum) / d_images

    s, c = task.loss(outputs, b, StepContext(rng=jax.random.key(0)))
    np.testing.assert_allclose(s / c, want, rtol=1e-5)
    assert c == np.sum(b["label"] != IGNORE)

    def share(o, bb):
        s, c = task.loss(o, bb, StepContext(rng=jax.random.key(0), axis_name="d"))
        return jax.lax.psum(s, "d") / jax.lax.psum(c, "d")

    split = lambda t: jax.tree.map(lambda v: v.reshape(4, -1, *v.shape[1:]), t)  # noqa: E731
    got = jax.pmap(share, axis_name="d")(split(outputs), split(b))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # A per-device normalisation of the discriminative term would not match (device 0 has none).
    per_device = [task.loss(jax.tree.map(lambda v: v[i:i + 2], outputs),
                            jax.tree.map(lambda v: v[i:i + 2], b), StepContext(rng=jax.random.key(0)))
                  for i in range(0, 8, 2)]
    naive = sum(float(s) for s, _ in per_device) / sum(float(c) for _, c in per_device)
    assert abs(naive - want) > 1e-3


@pytest.fixture(scope="module")
def embedding_run():
    from segjax.models import create_model
    from tests.train.test_device_invariance import one_device, sgd_state

    rng = np.random.default_rng(4)
    model = create_model("unet_embedding", num_classes=K, embedding_dim=3, base_features=4, depth=2)
    state = sgd_state(model, (1, 10, 12, 3), 0.1)
    batches = []
    for _ in range(2):
        _, b = batch(rng)
        b["image"] = rng.normal(size=b["image"].shape).astype(np.float32)
        batches.append(b)
    task = EmbeddingTask(num_classes=K, ignore_label=IGNORE, max_instances=M)
    return state, batches, task, one_device(state, batches, task)


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_embedding_train_step_on_four_devices_equals_one_device(embedding_run, mode):
    """Two SGD steps of the U-Net with both heads (synchronised BatchNorm, cross-entropy and the
    discriminative loss over their global counts): 4 devices = 1 device.

    The biases of the convolutions followed by BatchNorm hold only float32 noise (exactly zero
    gradient): parameters are compared to 1e-5 relative plus 1e-6 absolute per leaf."""
    from tests.train.test_device_invariance import assert_same_run, devices
    from tests.train.test_parallel import rel_diff

    state, batches, task, ref = embedding_run
    assert rel_diff(ref[0].params, state.params) > 1e-3  # it trained
    assert_same_run(devices(mode, state, batches, task), ref, param_atol=1e-6)


def planted(np_rng, h=20, w=24, d=4, merge=False):
    """Three instances (two touching ones of class 1, one of class 2) with embeddings within 0.3
    of well-separated means (or, `merge`, the two class-1 instances at one mean)."""
    label = np.zeros((h, w), np.int32)
    instance = np.zeros((h, w), np.int32)
    for k, (c, ys, xs) in enumerate([(1, slice(2, 9), slice(2, 10)), (1, slice(6, 14), slice(10, 18)),
                                     (2, slice(12, 18), slice(3, 9))], 1):
        label[ys, xs], instance[ys, xs] = c, k
    means = np.array([[0, 0, 0, 0], [4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]], np.float32)
    if merge:
        means[2] = means[1]
    noise = np_rng.uniform(-1, 1, (h, w, d)).astype(np.float32)
    emb = means[instance] + 0.3 * noise / np.linalg.norm(noise, axis=-1, keepdims=True)
    conf = np_rng.uniform(0.6, 0.95, (h, w))
    probs = np.full((h, w, 3), 0.0, np.float32)
    probs[np.arange(h)[:, None], np.arange(w)[None, :], label] = conf
    probs += ((1 - conf) / 3)[..., None]
    probs /= probs.sum(-1, keepdims=True)
    return label, instance, probs, emb


def test_embedding_instances_recover_planted_instances(np_rng):
    label, instance, probs, emb = planted(np_rng)
    det = embedding_instances(probs, emb, method="threshold", radius=1.5, min_pixels=4)
    assert len(det["classes"]) == 3
    for k in (1, 2, 3):
        m = instance == k
        j = [i for i, dm in enumerate(det["masks"]) if np.array_equal(dm, m)]
        assert len(j) == 1, k
        j = j[0]
        assert det["classes"][j] == label[m][0]
        np.testing.assert_allclose(det["scores"][j], probs[..., label[m][0]][m].mean(), rtol=1e-6)
        ys, xs = np.nonzero(m)
        np.testing.assert_array_equal(det["boxes"][j], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert np.all(np.diff(det["scores"]) <= 0)  # by decreasing score
    ms = embedding_instances(probs, emb, method="mean_shift", bandwidth=1.5, min_pixels=4)
    assert sorted(map(np.count_nonzero, ms["masks"])) == sorted(map(np.count_nonzero, det["masks"]))


def test_accumulator_scores_clustered_instances_with_coco_ap(np_rng, tmp_path):
    from PIL import Image

    def run(merge):
        acc = EmbeddingAccumulator(3, IGNORE, {"method": "threshold", "radius": 1.5, "min_pixels": 4})
        rows = [planted(np_rng, merge=merge) for _ in range(2)]
        pad = lambda a: np.pad(a, [(0, 4), (0, 4)] + [(0, 0)] * (a.ndim - 2))  # noqa: E731
        b = {"label": np.stack([pad(r[0]) for r in rows] + [pad(rows[0][0])]),
             "instance": np.stack([pad(r[1]) for r in rows] + [pad(rows[0][1])]),
             "height": np.array([20, 20, 20]), "width": np.array([24, 24, 24]),
             "valid": np.array([True, True, False])}
        per_example = {"probs": np.stack([pad(r[2]) for r in rows] + [pad(rows[0][2])]),
                       "embeddings": np.stack([pad(r[3]) for r in rows] + [pad(rows[0][3])])}
        acc.update({}, per_example, b)
        if not merge:  # the pictures: truth | instances | embedding colours, valid rows only
            b["image"] = np.zeros((3, 24, 28, 3), np.float32)
            task = EmbeddingTask(num_classes=3, ignore_label=IGNORE, max_instances=M,
                                 cluster_kwargs={"radius": 1.5, "min_pixels": 4})
            assert task.save_examples(str(tmp_path), 0, b, per_example, limit=5) == 2
            assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.png", "00001.png"]
            assert Image.open(tmp_path / "00000.png").size[0] >= 3 * 24
        return acc.result()

    good = run(False)
    assert good["num_images"] == 2 and good["mask_ap"] == pytest.approx(1.0)
    merged = run(True)  # the touching class-1 pair becomes one detection: AP drops for class 1
    assert merged["num_detections"] == 4 and merged["mask_ap"] < 0.8


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The demo preset, shrunk, trained 2 steps on synthetic_shapes/tiny."""
    from experiments.configs import embedding as recipes
    from segjax.data import pipeline
    from segjax.train import loop

    root = tmp_path_factory.mktemp("embedding")
    data_dir = str(root / "tfds")
    pipeline.prepare("synthetic_shapes/tiny", data_dir)
    c = recipes.get_config("demo")
    c.dataset.name, c.dataset.crop_size, c.dataset.data_dir = "synthetic_shapes/tiny", 32, data_dir
    c.eval.pad_to = 48
    c.model.base_features, c.model.depth = 4, 2
    c.batch_size, c.eval.batch_size = 4, 4
    c.num_train_steps, c.log_every_steps = 2, 1
    c.eval_every_steps = c.checkpoint_every_steps = 2
    c.optimizer.warmup_steps = 1
    c.embedding.cluster.min_pixels = 2
    workdir = str(root / "run")
    return workdir, loop.train_and_evaluate(c, workdir)


@pytest.mark.slow
def test_embedding_demo_trains_and_embedding_eval_rescores_it_alike(tiny_run):
    """The demo config trains and evaluates through the generic trainer, and
    experiments.embedding_eval with the run's own clustering reproduces the trainer's metrics."""
    from experiments import embedding_eval
    from segjax.train.metric_writers import read_metrics

    workdir, result = tiny_run
    records = read_metrics(workdir)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    (ev,) = [r for r in records if r["split"] == "validation"]
    assert ev["num_instances"] > 0 and 0.0 <= ev["mask_ap"] <= 1.0
    got = embedding_eval.evaluate_run(workdir, embedding_eval.parse_clusterings(
        "threshold:radius=1.5;mean_shift:bandwidth=1.5", min_pixels=2), batch=4)
    same = got["threshold:radius=1.5"]["predicted"]
    for key in ("mask_ap", "box_ap", "num_detections", "num_instances"):
        assert same[key] == pytest.approx(result[key], abs=1e-9), key
    assert got["mean_shift:bandwidth=1.5"]["true_semantic"]["num_instances"] == ev["num_instances"]
    assert "| threshold:radius=1.5 | predicted |" in embedding_eval.markdown(got)
    assert embedding_eval.parse_clusterings("mean_shift:bandwidth=2,min_pixels=5", 16) == {
        "mean_shift:bandwidth=2,min_pixels=5": {"method": "mean_shift", "bandwidth": 2.0,
                                                "min_pixels": 5}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        embedding_eval.parse_clusterings("threshold:radius", 16)


@pytest.mark.slow
def test_predict_writes_the_clustered_instances_of_an_embedding_run(tiny_run, tmp_path, np_rng):
    """experiments.predict on an embedding run: the instances of embedding_instances (the run's
    clustering) on the same padded image, those scoring >= the threshold, as PNG and JSON."""
    import json

    from PIL import Image

    from experiments import predict
    from segjax.data.pipeline import preprocess_image
    from segjax.train.restore import load_run

    workdir, _ = tiny_run
    image = np_rng.integers(0, 255, (30, 37, 3)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    written = predict.predict_files(workdir, [str(tmp_path / "a.png")], str(tmp_path / "out"),
                                    score_thresh=0.0)
    assert sorted(map(os.path.basename, written)) == ["a_instances.json", "a_instances.png"]
    listed = json.load(open(tmp_path / "out" / "a_instances.json"))
    run = load_run(workdir)
    config, model, variables = run.config, run.model, run.variables
    x = np.zeros((1, 32, 64, 3), np.float32)
    x[0, :30, :37] = preprocess_image(image)
    out = model.apply(variables, x)
    det = embedding_instances(np.asarray(jax.nn.softmax(out["logits"][0, :30, :37], -1)),
                              np.asarray(out["embeddings"][0, :30, :37]),
                              **{k: v for k, v in config.embedding.cluster.to_dict().items()
                                 if v is not None})  # unset: the method's default
    assert listed and [d["area"] for d in listed] == [int(m.sum()) for m in det["masks"]]
    np.testing.assert_allclose([d["score"] for d in listed], det["scores"], rtol=1e-5)
