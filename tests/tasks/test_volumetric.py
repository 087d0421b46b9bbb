"""The volumetric task: its losses (values and gradients) against a torch transcription of
nnU-Net's CE + batch soft Dice and of V-Net's eq. 1, a train step of a tiny 3D U-Net on 4 devices
(pmap and mesh) equal to 1 device, the patch stream split over processes as one global batch,
and two steps through the trainer whose Dice and HD95 equal a direct recomputation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segjax.models.norm import BatchNorm
from segjax.tasks import volumetric
from segjax.tasks.base import StepContext
from segjax.train import optim, parallel, steps
from segjax.train.state import create_train_state, init_variables
from tests.train.test_device_invariance import assert_same_run
from tests.train.test_parallel import rel_diff

K, IGNORE, PATCH = 3, 255, (4, 6, 6)
RNG = jax.random.key(7)


def make_task(loss="ce_dice", **kwargs):
    return volumetric.VolumetricTask(num_classes=K, ignore_label=IGNORE, info=None,
                                     data_dir=None, patch_size=PATCH, in_channels=1, loss=loss,
                                     **kwargs)


def torch_reference(logits, labels, loss):
    """The loss and its gradient w.r.t. the logits, written from the papers in torch (float64).

    ce_dice (nnU-Net's DC_and_CE_loss with batch Dice, do_bg=False, smooth 1e-5): mean CE over
    labelled voxels + 1 - mean over foreground classes of (2 sum p g + s) / (sum p + sum g + s),
    sums over every labelled voxel of the batch. vnet_dice (V-Net eq. 1, monai's squared Dice
    with smooth 1e-5): per volume 1 - mean over all classes of (2 sum p g + s) / (sum p^2 +
    sum g^2 + s), averaged over the volumes."""
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor(labels.astype(np.int64))
    valid = lab != IGNORE
    p = torch.softmax(x, -1) * valid[..., None]
    g = torch.nn.functional.one_hot(torch.where(valid, lab, 0), K).double() * valid[..., None]
    s = 1e-5
    if loss == "ce_dice":
        ce = torch.nn.functional.cross_entropy(x[valid], lab[valid])
        axes = tuple(range(labels.ndim))  # batch and voxels
        dice = (2 * (p * g).sum(axes) + s) / (p.sum(axes) + g.sum(axes) + s)
        value = ce + 1 - dice[1:].mean()
    else:
        axes = tuple(range(1, labels.ndim))
        dice = (2 * (p * g).sum(axes) + s) / ((p * p).sum(axes) + (g * g).sum(axes) + s)
        value = (1 - dice.mean(-1)).mean()
    value.backward()
    return value.item(), x.grad.numpy()


def random_batch(rng, n=4):
    labels = rng.integers(0, K, size=(n, *PATCH)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = IGNORE
    labels[0, :2] = 2  # class 2 crowds one patch, misses others
    labels[1:][labels[1:] == 2] = 0
    logits = (2 * rng.normal(size=(n, *PATCH, K))).astype(np.float32)
    return logits, labels


@pytest.mark.parametrize("loss", volumetric.LOSSES)
def test_loss_and_gradient_equal_a_torch_transcription(np_rng, loss):
    logits, labels = random_batch(np_rng)
    task = make_task(loss)

    def value(x):
        total, count = task.loss({"logits": x}, {"label": jnp.asarray(labels)},
                                 StepContext(rng=RNG))
        return total / count

    got, grad = jax.jit(jax.value_and_grad(value))(jnp.asarray(logits))
    want, want_grad = torch_reference(logits, labels, loss)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-8)


class Tiny3D(nn.Module):
    """A 3x3x3 conv + synchronised BatchNorm + ReLU + 1x1x1 classifier: the cheapest 3-D model
    with what device invariance needs (cross-device BatchNorm, a voxel-wise loss)."""

    num_classes: int = K
    axis_name: str | None = None

    @nn.compact
    def __call__(self, volumes, train: bool = False):
        x = nn.Conv(4, (3, 3, 3))(volumes)
        x = nn.relu(BatchNorm(not train, self.axis_name)(x))
        return {"logits": nn.Conv(self.num_classes, (1, 1, 1))(x)}


@pytest.fixture(scope="module")
def tiny_state():
    model, task = Tiny3D(), make_task()
    args, _ = task.init_inputs((1, 32, 32, 3))
    assert args[0].shape == (1, *PATCH, 1)  # the task's patch, not the trainer's 2-D shape
    variables = init_variables(model, jax.random.key(0), (1, 32, 32, 3), inputs=(args, {}))
    tx, _ = optim.create_optimizer(variables["params"], base_lr=0.1, num_steps=10, momentum=0.9)
    state = create_train_state(model, None, (1, 32, 32, 3), tx, variables=variables)
    data = np.random.default_rng(3)
    batches = []
    for _ in range(2):
        _, labels = random_batch(data, n=8)
        image = (labels[..., None] % 7 + data.normal(size=labels.shape + (1,))).astype(np.float32)
        batches.append({"image": image, "label": labels})
    ref = run("one", state, batches, task)
    assert rel_diff(ref[0].params, state.params) > 1e-3  # it trained
    return state, batches, task, ref


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


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_four_devices_equal_one_device(tiny_state, mode):
    """The batch Dice is psum'd before it enters the loss: 4 shares give the 1-device run."""
    state, batches, task, ref = tiny_state
    assert_same_run(run(mode, state, batches, task), ref, param_atol=1e-7)


def test_patch_stream_is_one_global_batch_split_over_processes(monkeypatch):
    """Process p of P gets rows [p B, (p + 1) B) of the global batch of the same step."""
    rng = np.random.default_rng(0)
    task = make_task()
    labels = [rng.integers(0, K, size=(6, 9, 8)).astype(np.int32) for _ in range(3)]
    task._cache["train"] = [
        {"image": rng.normal(size=l.shape + (1,)).astype(np.float32), "label": l,
         "locations": None} for l in labels]
    whole = next(task.train_batches(None, batch_size=4, seed=1, start_step=5))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for p in range(2):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        part = task.train_batches(None, batch_size=2, seed=1, start_step=4)
        next(part)  # step 4
        rows = next(part)  # step 5
        for key in ("image", "label"):
            np.testing.assert_array_equal(rows[key], whole[key][2 * p:2 * p + 2])


def test_normalize_volume_is_a_per_channel_zscore():
    rng = np.random.default_rng(1)
    image = rng.normal(3.0, 2.0, size=(4, 5, 6, 2)).astype(np.float32)
    image[0] = 0.0  # "outside the brain"
    out = volumetric.normalize_volume(image, "zscore")
    np.testing.assert_allclose(out.reshape(-1, 2).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out.reshape(-1, 2).std(0), 1, atol=1e-5)
    out = volumetric.normalize_volume(image, "zscore_nonzero")
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_allclose(out[1:].reshape(-1, 2).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out[1:].reshape(-1, 2).std(0), 1, atol=1e-5)
    with pytest.raises(ValueError, match="volumetric.normalize"):
        volumetric.normalize_volume(image, "minmax")


def test_config_check_names_the_key():
    from experiments.configs.unet3d import get_config

    c = get_config("demo")
    volumetric.check(c)
    c.volumetric.loss = "focal"
    with pytest.raises(ValueError, match="volumetric.loss"):
        volumetric.check(c)
    c.volumetric.loss, c.volumetric.patch_size = "ce_dice", (16, 32)
    with pytest.raises(ValueError, match="volumetric.patch_size"):
        volumetric.check(c)


@pytest.mark.slow
def test_two_steps_through_the_trainer_score_dice_and_hd95(tmp_path, monkeypatch):
    """2 steps of a depth-1 3D U-Net on synthetic_volumes/tiny: the validation line's per-class
    Dice and HD95 equal `segjax.metrics.volumetric`'s functions on the predictions the
    evaluation made (recorded) and the truth and spacing read back from the dataset, averaged
    per class over the cases (NaN-aware) and over the foreground classes."""
    from experiments.configs.unet3d import get_config
    from segjax.data.volumes import read_volumes
    from segjax.metrics.volumetric import dice_per_class, hausdorff_distance_per_class
    from segjax.train.loop import train_and_evaluate
    from segjax.train.metric_writers import read_metrics

    predictions = []
    original = volumetric.VolumetricTask.predict_volume

    def recorded(self, *args, **kwargs):
        predictions.append(original(self, *args, **kwargs))
        return predictions[-1]

    monkeypatch.setattr(volumetric.VolumetricTask, "predict_volume", recorded)
    c = get_config("demo")
    c.dataset.name = "synthetic_volumes/tiny"
    c.model.base_features, c.model.depth = 2, 1
    c.volumetric.patch_size = (8, 16, 16)
    c.batch_size = 4
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = c.log_every_steps = 2
    c.eval.num_visualizations = 1
    train_and_evaluate(c, str(tmp_path))
    line = [r for r in read_metrics(str(tmp_path)) if r["split"] == "validation"][-1]
    assert (tmp_path / "predictions" / "step_0000002" / "00000.png").exists()

    cases = read_volumes("synthetic_volumes/tiny", "validation")
    assert line["num_cases"] == len(cases) == len(predictions) == 3
    dice = np.stack([dice_per_class(p, case["label"], 4) for p, case in zip(predictions, cases)])
    hd = np.stack([hausdorff_distance_per_class(p, case["label"], 4,
                                                spacing=tuple(case["spacing"]))
                   for p, case in zip(predictions, cases)])
    hd = np.where(np.isinf(hd), 75.0, hd)  # the demo's empty_distance
    for key, values in (("dice", dice), ("hd95", hd)):
        per_class = [np.nan if np.isnan(v).all() else np.nanmean(v) for v in values.T]
        np.testing.assert_allclose(np.array(line[f"{key}_per_class"], float), per_class,
                                   rtol=1e-6)
        np.testing.assert_allclose(line[f"mean_{key}"], np.nanmean(per_class[1:]), rtol=1e-6)
