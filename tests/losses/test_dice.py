"""V-Net's Dice loss (eq. 1, squared denominators) and the plain soft Dice, on NDHWC volumes with ignored
voxels: values and gradients against monai's DiceLoss (torch autograd) and values against a NumPy
transcription of the paper's formula, under jit; global normalisation over shards; generated bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from monai.losses import DiceLoss

from segjax import losses

IGNORE = 255
N, D, H, W, K = 4, 3, 4, 5, 3
# One compile per shape and option instead of op-by-op dispatch (several times faster here).
_loss = jax.jit(losses.vnet_dice_loss, static_argnames=("ignore_label", "squared", "smooth"))
_stats = jax.jit(losses.dice_statistics, static_argnames=("ignore_label", "squared"))


def _volumes(rng, n=N):
    """Logits, labels with ~20 % ignored voxels (volume 1 wholly ignored) and a per-voxel valid mask."""
    logits = rng.normal(0, 2, size=(n, D, H, W, K)).astype(np.float32)
    labels = rng.integers(0, K, size=(n, D, H, W)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = IGNORE
    labels[1] = IGNORE
    valid = rng.random(labels.shape) < 0.9
    return logits, labels, valid


def _counted(labels, valid):
    return (labels != IGNORE) & valid


def _monai(logits, labels, valid, *, squared, smooth, batch=False):
    """monai's DiceLoss on p = softmax(logits) and one-hot g, both zeroed at uncounted voxels (NCDHW,
    float64): per-volume loss sum over counted volumes (or the batch-wide loss) and d/d logits."""
    counted = torch.from_numpy(_counted(labels, valid)[:, None].astype(np.float64))
    t = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(t, -1).permute(0, 4, 1, 2, 3) * counted
    g = torch.nn.functional.one_hot(torch.from_numpy(np.where(labels == IGNORE, 0, labels)).long(), K)
    g = g.permute(0, 4, 1, 2, 3).double() * counted
    loss = DiceLoss(squared_pred=squared, smooth_nr=smooth, smooth_dr=smooth, batch=batch, reduction="none")(p, g)
    if batch:
        total = loss.mean()
    else:
        has = counted.flatten(1).any(1)
        total = torch.where(has, loss.flatten(1).mean(1), 0.0).sum()
    total.backward()
    return total.item(), t.grad.numpy()


def _numpy_eq1(logits, labels, valid, *, squared, smooth):
    """The paper's eq. 1 per volume and class, written with NumPy in float64 (values only)."""
    counted = _counted(labels, valid)
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    total = 0.0
    for n in range(len(labels)):
        if not counted[n].any():
            continue
        dice = []
        for k in range(K):
            pk, gk = p[n][counted[n], k], (labels[n][counted[n]] == k).astype(np.float64)
            den = (pk**2).sum() + (gk**2).sum() if squared else pk.sum() + gk.sum()
            dice.append((2 * (pk * gk).sum() + smooth) / (den + smooth))
        total += 1 - np.mean(dice)
    return total


@pytest.mark.parametrize("squared, smooth", [(True, 1e-5), (False, 1.0)], ids=["vnet", "plain"])
def test_matches_monai_and_the_papers_formula(np_rng, squared, smooth):
    """Under jit (optax's dice_loss(apply_softmax=False) checks values and fails there, DESIGN.md)."""
    logits, labels, valid = _volumes(np_rng)
    fn = functools.partial(losses.vnet_dice_loss, ignore_label=IGNORE, squared=squared, smooth=smooth)

    @jax.jit
    def loss_and_grad(x):
        return jax.value_and_grad(lambda x: (fn(x, labels, valid_mask=valid)[0], fn(x, labels, valid_mask=valid)),
                                  has_aux=True)(x)

    (_, (value, count)), grad = loss_and_grad(jnp.asarray(logits))
    want, want_grad = _monai(logits, labels, valid, squared=squared, smooth=smooth)
    assert float(count) == N - 1  # volume 1 is wholly ignored
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    np.testing.assert_allclose(float(value), _numpy_eq1(logits, labels, valid, squared=squared, smooth=smooth),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-6 * np.abs(want_grad).max())
    assert np.all(np.asarray(grad)[1] == 0)  # the ignored volume gets no gradient


def test_plain_form_is_the_dice_loss_kind(np_rng):
    """`pixel.dice_loss` (kind "dice", smooth 1) is the plain form with smooth=1."""
    logits, labels, valid = _volumes(np_rng)
    a = _loss(logits, labels, ignore_label=IGNORE, valid_mask=valid, squared=False, smooth=1.0)
    b = jax.jit(losses.dice_loss, static_argnames=("ignore_label", "smooth"))(
        logits, labels, ignore_label=IGNORE, valid_mask=valid, smooth=1.0)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert losses.LOSSES["vnet_dice"] is losses.vnet_dice_loss


def test_global_normalisation_over_shards(np_rng):
    """Two shards with unevenly spread ignored volumes (1 and 2 counted): the summed pairs give the whole
    batch's mean over counted volumes, and the summed statistics give monai's batch-wide Dice (batch=True)."""
    logits, labels, valid = _volumes(np_rng)
    shards = [slice(0, 2), slice(2, 4)]
    whole = _loss(logits, labels, ignore_label=IGNORE, valid_mask=valid)
    pairs = [_loss(logits[s], labels[s], ignore_label=IGNORE, valid_mask=valid[s]) for s in shards]
    total, count = (sum(float(p[i]) for p in pairs) for i in (0, 1))
    assert [float(p[1]) for p in pairs] == [1.0, 2.0] and count == float(whole[1])
    np.testing.assert_allclose(total / count, float(whole[0]) / float(whole[1]), rtol=1e-6)
    means = [float(p[0]) / float(p[1]) for p in pairs]
    assert abs(np.mean(means) - total / count) > 1e-3  # the mean of the shards' means is not it

    stats = [_stats(logits[s], labels[s], ignore_label=IGNORE, valid_mask=valid[s]) for s in shards]
    inter = sum(np.sum(i, 0) for i, _ in stats)
    denom = sum(np.sum(d, 0) for _, d in stats)
    batch_loss = 1 - np.mean(losses.dice_from_statistics(inter, denom))
    want, _ = _monai(logits, labels, valid, squared=True, smooth=1e-5, batch=True)
    np.testing.assert_allclose(float(batch_loss), want, rtol=1e-5)


def test_bad_arguments_raise():
    x, y = jnp.zeros((1, 2, 2, 2, K)), jnp.zeros((1, 2, 2, 2), jnp.int32)
    with pytest.raises(ValueError, match="smooth"):
        losses.vnet_dice_loss(x, y, ignore_label=IGNORE, smooth=-1.0)
    with pytest.raises(ValueError, match="labels shape"):
        losses.vnet_dice_loss(x, y[:, :1], ignore_label=IGNORE)
    with pytest.raises(ValueError, match="integer"):
        losses.vnet_dice_loss(x, y.astype(jnp.float32), ignore_label=IGNORE)
    with pytest.raises(ValueError, match="valid_mask"):
        losses.vnet_dice_loss(x, y, ignore_label=IGNORE, valid_mask=np.ones(3, bool))


_SMALL = (2, 2, 3, 2)  # N, D, H, W of the generated batches


@functools.partial(jax.jit, static_argnames="squared")
def _pair_and_grad(logits, labels, valid, squared):
    fn = functools.partial(losses.vnet_dice_loss, ignore_label=IGNORE, squared=squared)
    pair = fn(logits, labels, valid_mask=valid)
    return jax.value_and_grad(lambda x: fn(x, labels, valid_mask=valid)[0])(logits), pair


@given(scale=st.sampled_from([1.0, 1e3, 1e30]), mode=st.sampled_from(["mixed", "all_ignored", "one_class"]),
       squared=st.booleans(), seed=st.integers(0, 2**16))
def test_generated_volumes_finite_bounded_and_empty_cases(scale, mode, squared, seed):
    """Saturated or huge logits, all-ignored and one-class volumes: a finite pair with 0 <= sum <= count
    and finite gradients; nothing counted gives (0, 0) and a zero gradient."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=_SMALL + (K,)) * scale).astype(np.float32)
    labels = rng.integers(0, K, size=_SMALL).astype(np.int32)
    if mode == "all_ignored":
        labels[:] = IGNORE
    elif mode == "one_class":
        labels[:] = 1
    valid = rng.random(_SMALL) < 0.8
    (_, grad), (s, c) = _pair_and_grad(logits, labels, valid, squared)
    s, c, grad = float(s), float(c), np.asarray(grad)
    assert np.isfinite(s) and np.all(np.isfinite(grad))
    assert c == _counted(labels, valid).reshape(len(labels), -1).any(1).sum()
    assert -1e-6 <= s <= c + 1e-6
    if c == 0:
        assert s == 0.0 and not grad.any()


def test_an_empty_batch():
    """N = 0 (an empty shard): (0, 0) and an (empty) gradient."""
    x, y = jnp.zeros((0, D, H, W, K)), jnp.zeros((0, D, H, W), jnp.int32)
    s, c = _loss(x, y, ignore_label=IGNORE)
    g = jax.jit(jax.grad(lambda x: losses.vnet_dice_loss(x, y, ignore_label=IGNORE)[0]))(x)
    assert float(s) == 0.0 and float(c) == 0.0 and g.shape == x.shape
