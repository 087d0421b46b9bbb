"""Same seed => the same training run on 1 device and on 4 (pmap and mesh), for every loss kind,
with an aux head, class weights and dropout (DESIGN §4).

The tiny model has an aux head and dropout 0.5, and the batch's ignored pixels are spread very
unevenly over the devices, so any per-device normalisation, per-device OHEM selection or
device-dependent dropout mask shows up far above the 1e-5 tolerance (the negative controls
below measure how far).
"""

import functools

import jax
import numpy as np
import pytest

from segjax.models.layers import Dropout
from segjax.tasks.base import StepContext
from segjax.tasks.semantic import SemanticTask
from segjax.train import optim, parallel, steps
from segjax.train.state import create_train_state, init_variables
from tests.train.test_parallel import rel_diff
from tests.train.tiny import IGNORE, TinySegNet, make_batch, make_task

K = 3
RNG = jax.random.key(3)
LOSSES = {
    "ce": dict(loss_kind="ce"),
    "ce_weighted": dict(loss_kind="ce", loss_kwargs={"class_weights": (0.5, 1.0, 2.0),
                                                     "label_smoothing": 0.1}),
    "focal": dict(loss_kind="focal", loss_kwargs={"gamma": 0.5}),
    "dice": dict(loss_kind="dice"),
    "lovasz": dict(loss_kind="lovasz"),
    "ohem_min_kept": dict(loss_kind="ohem", loss_kwargs={"thresh": 0.5, "min_kept": 40}),
    "ohem_top_k": dict(loss_kind="ohem", loss_kwargs={"thresh": None, "top_k": 0.3,
                                                      "min_kept": 10}),
}


def sgd_state(model, shape, base_lr):
    """A fresh train state of `model` (initialised for inputs of `shape`, key 0) with SGD
    momentum 0.9 at `base_lr` (poly schedule over 10 steps)."""
    variables = init_variables(model, jax.random.key(0), shape)
    tx, _ = optim.create_optimizer(variables["params"], base_lr=base_lr, num_steps=10, momentum=0.9)
    return create_train_state(model, None, shape, tx, variables=variables)


@pytest.fixture(scope="module")
def setup():
    model = TinySegNet(num_classes=K, features=4, dropout=0.5, aux=True)
    state = sgd_state(model, (1, 9, 11, 3), 0.3)
    data = np.random.default_rng(5)
    batches = [make_batch(data, n=8, k=K) for _ in range(2)]
    return state, batches


def one_device(state, batches, task):
    step = jax.jit(functools.partial(steps.train_step, task=task))
    history = []
    for b in batches:
        state, m = step(state, b, RNG)
        history.append(jax.device_get(m))
    return state, history


def devices(mode, state, batches, task):
    par = parallel.Parallel(mode)
    dstate = par.replicate(state)
    step = par.train_step(task)
    history = []
    for b in batches:
        dstate, m = step(dstate, par.shard_batch(b), RNG)
        history.append(jax.device_get(m))
    return par.unreplicate(dstate), history


def assert_same_run(got, want, param_atol=0.0):
    """Losses, gradient norms and BatchNorm statistics to 1e-5; each parameter leaf to 1e-5 of its
    norm plus `param_atol` (for leaves that hold float32 noise: the bias of a convolution before
    BatchNorm has an exactly zero gradient, the smallest BatchNorm offsets sum every pixel's
    gradient with cancellation, ~1e-7 absolute either way)."""
    (state, history), (ref, ref_history) = got, want
    for m, r in zip(history, ref_history):
        for key in ("loss", "grad_norm", "valid_pixels"):
            np.testing.assert_allclose(m[key], r[key], rtol=1e-5, atol=1e-7, err_msg=key)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state.params),
                            jax.tree.leaves(ref.params)):
        gap = np.linalg.norm(np.asarray(a) - np.asarray(b))
        assert gap <= 1e-5 * np.linalg.norm(np.asarray(b)) + param_atol, jax.tree_util.keystr(path)
    if jax.tree.leaves(ref.batch_stats):  # (PixelNet's VGG has none)
        assert rel_diff(state.batch_stats, ref.batch_stats) <= 1e-5


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_pmap_on_four_devices_equals_one_device(setup, kind):
    state, batches = setup
    task = make_task(K, aux_weight=0.4, **LOSSES[kind])
    ref = one_device(state, batches, task)
    assert rel_diff(ref[0].params, state.params) > 1e-3  # it trained
    assert_same_run(devices("pmap", state, batches, task), ref)


@pytest.mark.parametrize("kind", ["ce_weighted", "ohem_min_kept"])
def test_mesh_on_four_devices_equals_one_device(setup, kind):
    state, batches = setup
    task = make_task(K, aux_weight=0.4, **LOSSES[kind])
    assert_same_run(devices("mesh", state, batches, task), one_device(state, batches, task))


def test_ohem_selecting_per_device_would_not_match(setup):
    """Negative control: OHEM's min_kept threshold from each device's share alone."""
    state, batches = setup
    task = make_task(K, aux_weight=0.4, **LOSSES["ohem_min_kept"])

    class NoGather(SemanticTask):
        def _head_loss(self, logits, labels, ctx):
            return super()._head_loss(logits, labels, StepContext(rng=ctx.rng))  # local only

    per_device = NoGather(num_classes=K, ignore_label=IGNORE, boundary_iou=False,
                          aux_weight=0.4, **LOSSES["ohem_min_kept"])
    _, history = devices("pmap", state, batches[:1], per_device)
    _, ref = one_device(state, batches[:1], task)
    assert abs(history[0]["loss"] - ref[0]["loss"]) > 1e-3 * abs(ref[0]["loss"])


def test_dropout_masks_depend_on_the_global_position_only(np_rng):
    """The layer alone: rows of a batch split over 4 pmap devices get the masks they get
    unsplit, and flax's Dropout (one mask per device's array) does not."""
    x = np.ones((8, 5, 3), np.float32)
    key = jax.random.key(9)
    layer = Dropout(0.5, axis_name=None)
    whole = layer.apply({}, x, False, rngs={"dropout": key})
    split = jax.pmap(lambda v: Dropout(0.5, axis_name="b").apply({}, v, False, rngs={"dropout": key}),
                     axis_name="b")(x.reshape(4, 2, 5, 3))
    np.testing.assert_array_equal(np.asarray(split).reshape(whole.shape), whole)
    assert 0.3 < float(np.mean(np.asarray(whole) == 0)) < 0.7
    import flax.linen as nn

    flax_split = jax.pmap(lambda v: nn.Dropout(0.5).apply({}, v, False, rngs={"dropout": key}),
                          axis_name="b")(x.reshape(4, 2, 5, 3))
    assert not np.array_equal(np.asarray(flax_split).reshape(whole.shape), whole)


def _model_case(name):
    """(model, task) of the models whose heads add their own cross-device terms: EncNet's SE-loss
    (class presence per image, BCE over the global count) and Encoding-layer BatchNorm over the
    codes; PixelNet's sparse pixel sampling (keys from each example's global position) and the
    task reading the labels at its `pixel_index`."""
    from segjax.models import create_model

    if name == "encnet":
        model = create_model("encnet_resnet18", num_classes=K, backbone_width=4, head_channels=8,
                             num_codes=4, se_loss=True, aux_loss=True)
        return model, make_task(K, aux_weight=0.4, se_weight=0.2)
    model = create_model("pixelnet_vgg16", num_classes=K, backbone_width=4, fc_dim=8,
                         mlp_dims=(16, 16), train_samples=24)
    return model, make_task(K)


@pytest.mark.parametrize("name", ["encnet", "pixelnet"])
def test_encnet_and_pixelnet_train_steps_on_four_devices_equal_one_device(name):
    """Two SGD steps of the whole semantic train step, pmap over 4 devices = 1 device.

    At this odd size (17 x 19) it also caught max_pool's backward routing each window's cotangent
    by bitwise equality with the forward's output: the single-device program recomputed the stem's
    BatchNorm output in another fusion, some windows matched no input and their gradient was lost
    (the stem's gradients differed by 4-40% between the two runs)."""
    model, task = _model_case(name)
    state = sgd_state(model, (1, 17, 19, 3), 0.05)
    data = np.random.default_rng(8)
    batches = [make_batch(data, n=8, h=17, w=19, k=K) for _ in range(2)]
    ref = one_device(state, batches, task)
    assert rel_diff(ref[0].params, state.params) > 1e-3  # it trained
    assert_same_run(devices("pmap", state, batches, task), ref, param_atol=1e-7)
