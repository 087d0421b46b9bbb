"""segjax.losses.pixel (and the LOSSES table) against torch and plainly written references, values and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segjax import losses
from segjax.tasks.base import StepContext
from segjax.tasks.semantic import SemanticTask

IGNORE = 255
K = 4


CTX = StepContext(rng=jax.random.key(0))  # one device: sums and gathers are the identity


def make(np_rng, n=2, h=5, w=7, k=K, ignore_frac=0.3):
    logits = np_rng.normal(size=(n, h, w, k)).astype(np.float32) * 2
    labels = np_rng.integers(0, k, size=(n, h, w)).astype(np.int32)
    labels[np_rng.random((n, h, w)) < ignore_frac] = IGNORE
    return logits, labels


def mean_and_grad(fn, logits, labels, **kw):
    """Value of sum / count and its gradient w.r.t. the logits."""

    def mean(x):
        s, c = fn(x, jnp.asarray(labels), ignore_label=IGNORE, **kw)
        return s / c

    value, grad = jax.jit(jax.value_and_grad(mean))(jnp.asarray(logits))
    return float(value), np.asarray(grad)


def torch_mean_and_grad(fn, logits):
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = fn(x)
    loss.backward()
    return float(loss.detach()), x.grad.numpy()


def nchw(x):
    return x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch(np_rng, weighted, smoothing):
    logits, labels = make(np_rng)
    weights = np_rng.uniform(0.2, 3.0, size=K).astype(np.float32) if weighted else None
    value, grad = mean_and_grad(losses.cross_entropy, logits, labels, class_weights=weights, label_smoothing=smoothing)
    tw = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    ref, ref_grad = torch_mean_and_grad(
        lambda x: F.cross_entropy(
            nchw(x), torch.tensor(labels, dtype=torch.long), weight=tw, ignore_index=IGNORE, label_smoothing=smoothing
        ),
        logits,
    )
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_cross_entropy_pair_is_sum_and_valid_count(np_rng):
    logits, labels = make(np_rng)
    s, c = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), ignore_label=IGNORE)
    ref = F.cross_entropy(
        nchw(torch.tensor(logits, dtype=torch.float64)), torch.tensor(labels, dtype=torch.long),
        ignore_index=IGNORE, reduction="sum",
    )
    np.testing.assert_allclose(float(s), float(ref), rtol=1e-5)
    assert float(c) == np.sum(labels != IGNORE)


def test_valid_mask_per_image_equals_ignoring_those_images(np_rng):
    logits, labels = make(np_rng, n=3)
    mask = np.array([True, False, True])
    masked_labels = labels.copy()
    masked_labels[~mask] = IGNORE
    for fn in losses.LOSSES.values():
        fn = jax.jit(functools.partial(fn, ignore_label=IGNORE))
        got = fn(logits, labels, valid_mask=mask)
        want = fn(logits, masked_labels)
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-6)


@pytest.mark.parametrize("kind", sorted(losses.LOSSES))
def test_all_ignored_batch_gives_zero_count_and_finite_grads(np_rng, kind):
    logits, labels = make(np_rng)
    labels[:] = IGNORE

    task = SemanticTask(num_classes=K, ignore_label=IGNORE, loss_kind=kind)

    def normalised(x):
        s, c = task.loss({"logits": x}, {"label": jnp.asarray(labels)}, CTX)
        return s / jnp.maximum(c, 1.0), (s, c)

    grad, (s, c) = jax.jit(jax.grad(normalised, has_aux=True))(jnp.asarray(logits))
    assert float(c) == 0.0 and float(s) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_torch_reference(np_rng, gamma):
    logits, labels = make(np_rng)

    def ref_fn(x):
        lab = torch.tensor(labels, dtype=torch.long)
        valid = lab != IGNORE
        log_p = torch.log_softmax(x, dim=-1)[valid]  # [M, K]
        y = lab[valid]
        log_py = log_p[torch.arange(len(y)), y]
        return torch.mean(-((1 - log_py.exp()) ** gamma) * log_py)

    value, grad = mean_and_grad(losses.focal_loss, logits, labels, gamma=gamma)
    ref, ref_grad = torch_mean_and_grad(ref_fn, logits)
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_focal_gamma_zero_is_cross_entropy(np_rng):
    logits, labels = make(np_rng)
    a = losses.focal_loss(jnp.asarray(logits), jnp.asarray(labels), ignore_label=IGNORE, gamma=0.0)
    b = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), ignore_label=IGNORE)
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6)
    w = np_rng.uniform(0.5, 2.0, size=K).astype(np.float32)
    a = losses.focal_loss(logits, labels, ignore_label=IGNORE, gamma=0.0, class_weights=w)
    b = losses.cross_entropy(logits, labels, ignore_label=IGNORE, class_weights=w)
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6)


def test_dice_matches_torch_reference(np_rng):
    logits, labels = make(np_rng, n=3)
    labels[2] = IGNORE  # an image without counted pixels is left out of the mean.
    smooth = 1.0

    def ref_fn(x):
        per_image = []
        for n in range(x.shape[0]):
            lab = torch.tensor(labels[n].reshape(-1), dtype=torch.long)
            valid = lab != IGNORE
            if not valid.any():
                continue
            p = torch.softmax(x[n].reshape(-1, K), dim=-1)[valid]
            g = F.one_hot(lab[valid], K).double()
            dice = [(2 * (p[:, c] * g[:, c]).sum() + smooth) / (p[:, c].sum() + g[:, c].sum() + smooth) for c in range(K)]
            per_image.append(1 - torch.stack(dice).mean())
        return torch.stack(per_image).mean()

    value, grad = mean_and_grad(losses.dice_loss, logits, labels, smooth=smooth)
    ref, ref_grad = torch_mean_and_grad(ref_fn, logits)
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)
    assert float(losses.dice_loss(jnp.asarray(logits), jnp.asarray(labels), ignore_label=IGNORE)[1]) == 2.0


def test_dice_under_jit(np_rng):
    logits, labels = make(np_rng)
    fn = jax.jit(functools.partial(losses.dice_loss, ignore_label=IGNORE))
    np.testing.assert_allclose(
        np.array(fn(logits, labels)), np.array(losses.dice_loss(logits, labels, ignore_label=IGNORE)), rtol=1e-6
    )


def lovasz_reference(probs, labels):
    """Berman et al.'s Lovász-softmax, per image over present classes, written plainly (torch)."""
    per_image = []
    for n in range(probs.shape[0]):
        lab = torch.tensor(labels[n].reshape(-1), dtype=torch.long)
        valid = lab != IGNORE
        p = probs[n].reshape(-1, probs.shape[-1])[valid]
        lab = lab[valid]
        class_losses = []
        for c in range(probs.shape[-1]):
            fg = (lab == c).double()
            if fg.sum() == 0:
                continue
            errors = (fg - p[:, c]).abs()
            errors_sorted, perm = torch.sort(errors, descending=True)
            fg_sorted = fg[perm]
            gts = fg_sorted.sum()
            intersection = gts - fg_sorted.cumsum(0)
            union = gts + (1 - fg_sorted).cumsum(0)
            jaccard = 1.0 - intersection / union
            jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
            class_losses.append(torch.dot(errors_sorted, jaccard))
        if class_losses:
            per_image.append(torch.stack(class_losses).mean())
    return torch.stack(per_image).mean()


def test_lovasz_softmax_matches_reference(np_rng):
    logits, labels = make(np_rng, n=3)
    labels[1, :, :] = np.where(labels[1] == 0, 1, labels[1])  # an absent class in one image.
    value, grad = mean_and_grad(losses.lovasz_softmax, logits, labels)
    ref, ref_grad = torch_mean_and_grad(lambda x: lovasz_reference(torch.softmax(x, dim=-1), labels), logits)
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_lovasz_of_a_perfect_prediction_is_zero(np_rng):
    _, labels = make(np_rng)
    logits = 50.0 * jax.nn.one_hot(jnp.where(labels == IGNORE, 0, labels), K)
    s, c = jax.jit(functools.partial(losses.lovasz_softmax, ignore_label=IGNORE))(logits, labels)
    assert float(c) == 2 and abs(float(s)) < 1e-6


def ohem_reference(logits, labels, thresh=None, top_k=None, min_kept=0):
    """Mask of the pixels OHEM keeps, written with numpy sorting: mmsegmentation's
    OHEMPixelSampler, whose batch keeps at least min_kept pixels per image."""
    min_kept = min_kept * labels.shape[0]
    flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    lab = labels.reshape(-1)
    valid = lab != IGNORE
    log_p = flat - np.log(np.exp(flat).sum(-1, keepdims=True))
    nll = -log_p[np.arange(len(lab)), np.where(valid, lab, 0)]
    idx = np.flatnonzero(valid)
    keep = np.zeros(len(lab), bool)
    if top_k is not None:
        k = max(int(np.ceil(top_k * len(idx))), min(min_kept, len(idx)))
        kth = np.sort(nll[idx])[::-1][k - 1]
        keep[idx[nll[idx] >= kth]] = True  # ties with the k-th hardest are kept too
    else:
        prob = np.exp(-nll[idx])
        sorted_prob = np.sort(prob)
        threshold = max(sorted_prob[min(min_kept, len(idx) - 1)], thresh)
        keep[idx[prob < threshold]] = True
    return keep.reshape(labels.shape), nll.reshape(labels.shape)


@pytest.mark.parametrize(
    "kw", [dict(thresh=0.7), dict(thresh=0.3, min_kept=20), dict(top_k=0.25), dict(top_k=0.1, min_kept=15)]
)
def test_ohem_matches_numpy_selection(np_rng, kw):
    logits, labels = make(np_rng)
    keep, nll = ohem_reference(logits, labels, **kw)
    s, c = losses.ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), ignore_label=IGNORE, **{"thresh": None, **kw})
    assert float(c) == keep.sum() > 0
    np.testing.assert_allclose(float(s), nll[keep].sum(), rtol=1e-5)
    # Gradient: that of cross-entropy restricted to the kept pixels.
    value, grad = mean_and_grad(losses.ohem_cross_entropy, logits, labels, **{"thresh": None, **kw})
    kept_labels = np.where(keep, labels, IGNORE)
    _, ref_grad = mean_and_grad(losses.cross_entropy, logits, kept_labels)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-8)


def test_semantic_task_adds_weighted_aux(np_rng):
    logits, labels = make(np_rng)
    aux = np_rng.normal(size=logits.shape).astype(np.float32)

    def task_loss(kind, aux_weight=0.4, aux=aux, **kw):
        task = SemanticTask(num_classes=K, ignore_label=IGNORE, loss_kind=kind, loss_kwargs=kw,
                            aux_weight=aux_weight)
        return task.loss({"logits": logits, "aux_logits": aux}, {"label": labels}, CTX)

    for kind in ("ce", "focal", "dice", "lovasz"):
        s, c = task_loss(kind)
        fn = losses.LOSSES[kind]
        ms, mc = fn(logits, labels, ignore_label=IGNORE)
        as_, ac = fn(aux, labels, ignore_label=IGNORE)
        np.testing.assert_allclose(float(s / c), float(ms / mc + 0.4 * as_ / ac), rtol=1e-5)
    s, c = task_loss("ce", aux_weight=0.0)
    np.testing.assert_allclose(np.array([s, c]), np.array(losses.cross_entropy(logits, labels, ignore_label=IGNORE)))
    # OHEM: main and aux select different pixels; each is normalised by its own count. The aux
    # head is made unsure (every p_true < 0.5: all counted pixels kept) while the main head is
    # sure of some pixels, so the two counts differ whatever the random draw.
    aux = aux * 0.01
    s, c = task_loss("ohem", aux=aux, thresh=0.5)
    ms, mc = losses.ohem_cross_entropy(logits, labels, ignore_label=IGNORE, thresh=0.5)
    as_, ac = losses.ohem_cross_entropy(aux, labels, ignore_label=IGNORE, thresh=0.5)
    assert float(mc) != float(ac)
    np.testing.assert_allclose(float(s / c), float(ms / mc + 0.4 * as_ / ac), rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 0.99, 2.0])
def test_focal_is_finite_with_confident_pixels(np_rng, gamma):
    """In float32 1 - p rounds to 0 at a logit margin of ~17; the derivative of (1 - p)^gamma
    there is infinite for gamma < 1. The loss and its gradient must stay finite, and a pixel
    with p = 1 must contribute exactly zero gradient (gamma > 0)."""
    logits, labels = make(np_rng)
    safe = np.where(labels == IGNORE, 0, labels)
    logits = logits + 40.0 * np.eye(K, dtype=np.float32)[safe] * (np.arange(logits.shape[2]) < 3)[:, None]
    value, grad = mean_and_grad(losses.focal_loss, logits, labels, gamma=gamma)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    confident = (np.arange(logits.shape[2]) < 3)[None, None, :] & (labels != IGNORE)
    if gamma > 0:
        assert np.all(grad[confident] == 0.0)
    # Elsewhere it is torch's value (the reference of test_focal_matches_torch_reference).
    far = ~confident & (labels != IGNORE)
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(x, -1)
    lab = torch.tensor(safe, dtype=torch.long)
    logpy = logp.gather(-1, lab[..., None])[..., 0]
    per = -((1 - logpy.exp()).clamp(min=0) ** gamma) * logpy
    per = per * torch.tensor(labels != IGNORE)
    (per.sum() / float((labels != IGNORE).sum())).backward()
    np.testing.assert_allclose(grad[far], x.grad.numpy()[far], rtol=2e-4, atol=1e-7)
    with pytest.raises(ValueError, match="gamma"):
        losses.focal_loss(logits, labels, ignore_label=IGNORE, gamma=-1.0)


def test_bad_inputs_raise_value_error(np_rng):
    logits, labels = make(np_rng)
    with pytest.raises(ValueError, match="logits shape"):
        losses.cross_entropy(logits[:, :4], labels, ignore_label=IGNORE)
    with pytest.raises(ValueError, match="integer"):
        losses.cross_entropy(logits, labels.astype(np.float32), ignore_label=IGNORE)
    with pytest.raises(ValueError, match="class_weights"):
        losses.cross_entropy(logits, labels, ignore_label=IGNORE, class_weights=np.ones(K + 1))
    with pytest.raises(ValueError, match="valid_mask"):
        losses.cross_entropy(logits, labels, ignore_label=IGNORE, valid_mask=np.ones(5, bool))
    with pytest.raises(ValueError, match="unknown loss kind"):
        SemanticTask(num_classes=K, ignore_label=IGNORE, loss_kind="hinge")
    with pytest.raises(ValueError, match="top_k"):
        losses.ohem_cross_entropy(logits, labels, ignore_label=IGNORE, top_k=1.5)
