"""The uda task: each method's loss against a NumPy transcription of its paper's objective (the
building blocks, FDA, ClassMix, the pseudo-labels, AdaIN, DACS's jitter and blur, have their own
tests in tests/style), the discriminator against a torch transcription of AdaptSegNet's, whole
train steps on 4 devices equal to 1 device, and a run through the trainer with two streams."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segjax.data.records import IMAGE_MEAN, IMAGE_STD
from segjax.models.discriminator import FCDiscriminator
from segjax.style.classmix import select_classes
from segjax.tasks import uda
from segjax.tasks.base import StepContext
from segjax.train import optim, parallel, steps
from segjax.train.state import create_train_state, init_variables
from segjax.style.dacs_augment import draw_strong_params
from tests.style.test_classmix import dacs_class_mask, dacs_mix
from tests.style.test_dacs_augment import torch_dacs_blur, torch_jitter
from tests.style.test_fda import reference as fda_reference
from tests.train.test_device_invariance import assert_same_run
from tests.train.test_parallel import rel_diff
from tests.train.tiny import IGNORE, TinySegNet, make_batch

K, CROP = 3, 32
RNG = jax.random.key(5)


def make_task(method, crop_size=CROP, **kwargs):
    return uda.UDATask(method=method, target=None, crop_size=crop_size, num_steps=10,
                       num_classes=K, ignore_label=IGNORE, boundary_iou=False,
                       disc_features=4, **kwargs)


@pytest.fixture(scope="module")
def setup():
    model = TinySegNet(num_classes=K, features=4)
    variables = init_variables(model, jax.random.key(0), (1, CROP, CROP, 3))
    data = np.random.default_rng(3)
    batches = []
    for _ in range(2):
        b = make_batch(data, n=8, h=CROP, w=CROP, k=K)
        b["target_image"] = (0.7 * data.normal(size=b["image"].shape) + 0.3).astype(np.float32)
        batches.append(b)
    return model, variables, batches


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ce(logits, labels):
    """Per-pixel cross entropy, 0 at ignored pixels; and the valid mask."""
    valid = labels != IGNORE
    logp = np.log(softmax(logits.astype(np.float64)))
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return np.where(valid, -picked, 0.0), valid


def loss_of(task, model, variables, batch, task_state, rng=RNG):
    """The task's loss (total / count) with the model applied deterministically (train=False),
    and the inputs the model saw."""
    seen = []

    def apply(x):
        seen.append(np.asarray(x))
        return model.apply(variables, x, train=False)

    ctx = StepContext(rng=rng, task_state=task_state, apply_fn=model.apply)
    outputs = task.train_forward(apply, batch, ctx)
    total, count = task.loss(outputs, batch, ctx)
    return float(total / count), outputs, seen


def logits_of(model, variables, x):
    return np.asarray(model.apply(variables, jnp.asarray(x, jnp.float32), train=False)["logits"],
                      np.float64)


def test_fda_trains_on_the_source_in_the_target_amplitude_plus_the_robust_entropy(setup):
    model, variables, batches = setup
    b = batches[0]
    task = make_task("fda", fda_beta=0.1, entropy_weight=0.3)
    got, _, seen = loss_of(task, model, variables, b, None)
    pixels = lambda x: x * IMAGE_STD + IMAGE_MEAN
    styled = (fda_reference(pixels(b["image"]), pixels(b["target_image"]), 0.1) - IMAGE_MEAN) / IMAGE_STD
    np.testing.assert_allclose(seen[0], styled, atol=2e-4)
    np.testing.assert_allclose(seen[1], b["target_image"])
    src, valid = ce(logits_of(model, variables, styled), b["label"])
    p = softmax(logits_of(model, variables, b["target_image"]))
    ent = -np.sum(p * np.log(p), -1) / np.log(K)
    want = src.sum() / valid.sum() + 0.3 * np.mean((ent ** 2 + 1e-8) ** 2.0)
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_adversarial_adds_the_bce_of_target_maps_labelled_source(setup):
    model, variables, batches = setup
    b = batches[0]
    task = make_task("adversarial", adv_weight=0.5)
    state = task.init_task_state(jax.random.key(2), variables)
    got, _, _ = loss_of(task, model, variables, b, state)
    src, valid = ce(logits_of(model, variables, b["image"]), b["label"])
    probs = softmax(logits_of(model, variables, b["target_image"]))
    d = np.asarray(task.discriminator.apply({"params": state["disc"]}, probs), np.float64)
    bce_source = np.mean(np.log1p(np.exp(d)))  # label 0: -log(1 - sigmoid(d))
    np.testing.assert_allclose(got, src.sum() / valid.sum() + 0.5 * bce_source, rtol=2e-4)


def test_dacs_mixes_with_the_teachers_confident_pseudo_labels(setup):
    model, variables, batches = setup
    b = batches[0]
    task = make_task("dacs", pseudo_threshold=0.5)
    teacher = jax.tree.map(lambda x: x * 1.5, variables)  # a teacher unlike the student
    state = {"teacher": teacher, "step": jnp.zeros((), jnp.int32)}
    got, _, seen = loss_of(task, model, variables, b, state)
    t_probs = softmax(logits_of(model, teacher, b["target_image"]))
    pseudo, weight = t_probs.argmax(-1), np.mean(t_probs.max(-1) >= 0.5)
    assert 0.05 < weight < 0.95  # the threshold matters here
    mixed, labels, weights = [], [], []
    keys = jax.vmap(lambda i: jax.random.fold_in(RNG, i))(jnp.arange(8))
    for i in range(8):
        chosen = np.asarray(select_classes(keys[i], b["label"][i], K, ignore_label=IGNORE))
        values = [c for c in range(K) if chosen[c]] + ([IGNORE] if chosen[K] else [])
        mask = dacs_class_mask(b["label"][i], values)
        mixed.append(dacs_mix(mask, b["image"][i], b["target_image"][i]))
        labels.append(dacs_mix(mask, b["label"][i], pseudo[i]).astype(np.int64))
        weights.append(np.where(mask == 1, 1.0, weight))
    np.testing.assert_allclose(seen[1], np.stack(mixed), atol=1e-6)
    src, valid = ce(logits_of(model, variables, b["image"]), b["label"])
    mix, _ = ce(logits_of(model, variables, np.stack(mixed)), np.stack(labels))
    want = src.sum() / valid.sum() + np.mean(np.stack(weights) * mix)
    np.testing.assert_allclose(got, want, rtol=2e-4)


def example_key(i):
    """The key of the example at global position i (ctx.example_keys)."""
    return jax.random.fold_in(RNG, i)


def pixels(x):
    return x * IMAGE_STD + IMAGE_MEAN


def normalised(x):
    return (x - IMAGE_MEAN) / IMAGE_STD


def test_adain_trains_on_the_source_in_its_targets_channel_statistics(setup):
    """Pixel AdaIN with alpha ~ U(0.3, 1) per example: the model sees the formula's images."""
    model, variables, batches = setup
    b = batches[0]
    task = make_task("adain", adain_alpha_min=0.3)
    got, _, seen = loss_of(task, model, variables, b, None)
    alphas = np.array([jax.random.uniform(example_key(i), (), jnp.float32, 0.3, 1.0) for i in range(8)])
    assert alphas.min() >= 0.3 and np.ptp(alphas) > 0.2
    src, tgt = pixels(b["image"]).astype(np.float64), pixels(b["target_image"]).astype(np.float64)
    mean = lambda x: x.mean((1, 2), keepdims=True)
    std = lambda x: np.sqrt(x.var((1, 2), ddof=1, keepdims=True) + 1e-5)
    a = alphas[:, None, None, None]
    styled = np.clip(a * ((src - mean(src)) / std(src) * std(tgt) + mean(tgt)) + (1 - a) * src, 0, 255)
    np.testing.assert_allclose(seen[0], normalised(styled), atol=2e-4)
    assert len(seen) == 1  # the styled source only
    loss, valid = ce(logits_of(model, variables, normalised(styled)), b["label"])
    np.testing.assert_allclose(got, loss.sum() / valid.sum(), rtol=2e-4)


def test_dacs_mix_augment_jitters_and_blurs_the_mixed_images(setup):
    """With mix_augment the student sees DACS's strong transform (torch transcription of kornia's
    jitter and DACS's blur) of the ClassMix images, each example with its parameters drawn from
    fold_in(its ClassMix key, 1); without it, the mixed images themselves (the test above).
    (The forward pass is jitted: one compile instead of hundreds of eager ones.)"""
    model, variables, batches = setup
    b = batches[0]
    task = make_task("dacs", pseudo_threshold=0.5, mix_augment=True)
    ctx = StepContext(rng=RNG, task_state={"teacher": variables, "step": jnp.zeros((), jnp.int32)},
                      apply_fn=model.apply)

    def model_inputs(batch):
        seen = []
        task.train_forward(lambda x: seen.append(x) or model.apply(variables, x, train=False),
                           batch, ctx)
        return seen

    source, mixed = (np.asarray(x) for x in jax.jit(model_inputs)(b))
    np.testing.assert_array_equal(source, b["image"])  # the source images are not augmented
    keys = jax.vmap(example_key)(jnp.arange(8))
    chosen = np.asarray(jax.jit(jax.vmap(lambda k, y: select_classes(k, y, K, ignore_label=IGNORE)))(
        keys, b["label"]))
    params = jax.tree.map(np.asarray, jax.jit(jax.vmap(
        lambda k: draw_strong_params(jax.random.fold_in(k, 1))))(keys))
    for i in range(8):
        values = [c for c in range(K) if chosen[i, c]] + ([IGNORE] if chosen[i, K] else [])
        image = dacs_mix(dacs_class_mask(b["label"][i], values), b["image"][i], b["target_image"][i])
        p = {k: v[i] for k, v in params.items()}
        want = torch.tensor(pixels(image)[None], dtype=torch.float64).permute(0, 3, 1, 2)
        if p["jitter"]:
            want = torch_jitter(want / 255, float(p["brightness"]), float(p["contrast"]),
                                float(p["saturation"]), float(p["hue"]), p["order"].tolist()) * 255
        if p["blur"]:
            want = torch_dacs_blur(want, float(p["sigma"]))
        np.testing.assert_allclose(mixed[i], normalised(want[0].permute(1, 2, 0).numpy()), atol=5e-4)
    assert 0 < params["jitter"].sum() < 8 and 0 < params["blur"].sum() < 8  # both branches occur


def test_discriminator_equals_adaptsegnets(np_rng):
    probs = np_rng.random((2, 37, 45, K)).astype(np.float32)
    disc = FCDiscriminator(features=4)
    params = disc.init(jax.random.key(0), probs)["params"]
    layers = []
    for i in range(5):
        kernel = np.asarray(params[f"conv{i + 1}"]["kernel"])
        conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], 4, stride=2, padding=1)
        conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        conv.bias.data = torch.from_numpy(np.asarray(params[f"conv{i + 1}"]["bias"]).copy())
        layers += [conv] + ([torch.nn.LeakyReLU(0.2)] if i < 4 else [])
    x = torch.from_numpy(probs.transpose(0, 3, 1, 2).copy()).requires_grad_()
    want = torch.nn.Sequential(*layers)(x)
    want.sum().backward()
    got, grad = jax.value_and_grad(lambda p: disc.apply({"params": params}, p).sum())(probs)
    np.testing.assert_allclose(np.asarray(disc.apply({"params": params}, probs)),
                               want.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad, x.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-7)


def train_state(model, variables, task):
    tx, _ = optim.create_optimizer(variables["params"], base_lr=0.2, num_steps=10, momentum=0.9)
    return create_train_state(model, None, (1, CROP, CROP, 3), tx, variables=variables,
                              task_state=task.init_task_state(jax.random.key(1), variables))


def run(mode, state, batches, task):
    if mode == "one":
        step, put, get = jax.jit(functools.partial(steps.train_step, task=task)), None, None
    else:
        par = parallel.Parallel(mode)
        step, put, get = par.train_step(task), par.shard_batch, par.unreplicate
        state = par.replicate(state)
    history = []
    for b in batches:
        state, m = step(state, b if put is None else put(b), RNG)
        history.append(jax.device_get(m))
    return (state if get is None else get(state)), history


@pytest.mark.parametrize("method,mode,options", [
    ("dacs", "pmap", {"mix_augment": True}), ("adversarial", "pmap", {}), ("dacs", "mesh", {}),
    ("adain", "pmap", {"adain_alpha_min": 0.3})])
def test_four_devices_equal_one_device(setup, method, mode, options):
    """(DACS with mix_augment on pmap, where each device's share has its own example offset;
    the default DACS on the mesh; AdaIN's per-example alphas on pmap.)"""
    model, variables, batches = setup
    task = make_task(method, pseudo_threshold=0.5, **options)
    state = train_state(model, variables, task)
    ref = run("one", state, batches, task)
    got = run(mode, state, batches, task)
    assert_same_run(got, ref, param_atol=1e-7)
    if method == "adain":  # keeps no task state
        return
    key = "teacher" if method == "dacs" else "disc"
    assert rel_diff(ref[0].task_state[key], state.task_state[key]) > 1e-3  # it moved
    assert rel_diff(got[0].task_state[key], ref[0].task_state[key]) < 1e-5
    metric = "pseudo_weight" if method == "dacs" else "disc_loss"
    np.testing.assert_allclose([h[metric] for h in got[1]], [h[metric] for h in ref[1]],
                               rtol=1e-5)


def test_config_names_the_target_and_a_known_method():
    from experiments.configs.uda import get_config

    c = get_config("shapes")
    uda.check(c)
    c.uda.method = "cycada"
    with pytest.raises(ValueError, match="uda.method"):
        uda.check(c)
    c.uda.method, c.uda.target = "dacs", ""
    with pytest.raises(ValueError, match="uda.target"):
        uda.build(c, None, None)
    with pytest.raises(ValueError, match="uda.adain_alpha_min"):
        make_task("adain", adain_alpha_min=1.5)
    with pytest.raises(ValueError, match="crop_size=16 .* at least 32"):
        make_task("adversarial", crop_size=16)


@pytest.mark.slow
def test_trains_through_the_loop_with_two_streams(tmp_path):
    """Two steps of DACS on synthetic_shapes/tiny as both domains: the target stream feeds the
    step, the teacher's confident fraction is logged, the target's validation split is scored."""
    from experiments.configs.common import base_config, use_synthetic_shapes
    from segjax.train.loop import train_and_evaluate
    from segjax.train.metric_writers import read_metrics

    c = base_config("uda")
    use_synthetic_shapes(c, "synthetic_shapes/tiny", crop_size=32)
    c.eval.pad_to = 48
    c.uda.target, c.uda.method = "synthetic_shapes/tiny", "dacs"
    c.model.name, c.model.base_features, c.model.depth = "unet", 4, 2
    c.batch_size = c.eval.batch_size = 4
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = c.log_every_steps = 2
    c.eval.num_visualizations = 0
    result = train_and_evaluate(c, str(tmp_path))
    lines = read_metrics(str(tmp_path))
    train = [r for r in lines if r["split"] == "train"]
    assert 0.0 <= train[-1]["pseudo_weight"] <= 1.0 and np.isfinite(train[-1]["loss"])
    assert result["num_pixels"] == 16 * 48 * 48  # the tiny validation split, all of it
