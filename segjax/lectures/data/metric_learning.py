"""Figure 9: triplet-loss geometry and a class-imbalance decision boundary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


# --------------------------------------------------------------------------------------------
# 9. Metric learning and class imbalance (needs segjax.losses.triplet_loss)


def has_triplet_loss() -> bool:
    """Whether `segjax.losses` provides `triplet_loss` (figure 9 is skipped without it)."""
    from segjax import losses

    return hasattr(losses, "triplet_loss")


def _fit_linear(points, labels, class_weights, steps: int = 300, lr: float = 0.1):
    """A linear 2-class classifier [2 -> 2] trained with `losses.cross_entropy` and optax SGD
    (full batch); returns (weights [2, 2], bias [2])."""
    import optax

    from segjax import losses

    params = {"w": jnp.zeros((2, 2), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
    opt = optax.sgd(lr, momentum=0.9)
    state = opt.init(params)
    x, y = jnp.asarray(points, jnp.float32), jnp.asarray(labels, jnp.int32)

    def loss_fn(p):
        total, count = losses.cross_entropy(x @ p["w"] + p["b"], y, ignore_label=-1,
                                            class_weights=class_weights)
        return total / count

    @jax.jit
    def step(p, s):
        g = jax.grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return np.asarray(params["w"]), np.asarray(params["b"])


def metric_learning(margin: float = 1.0, grid: int = 61) -> dict:
    """Figure 9: triplet-loss geometry and the class-imbalance decision boundary.

    Triplet: anchor a and positive p fixed in 2-D; `loss_map` [grid, grid] is
    `losses.triplet_loss([a, p, n], [0, 0, 1], margin, mining="all")`'s sum over the negative
    n's position on a grid over [-3, 3]^2: non-zero while n lies within d(a, p) + margin of the
    anchor or of the positive (both act as anchors), zero beyond.

    Imbalance: two Gaussian classes in 2-D, `balanced` (200 / 200) and `imbalanced` (200 / 10
    of class 1); linear classifiers trained with `losses.cross_entropy`, on the imbalanced set
    also with inverse-frequency `class_weights`. `boundary_x` is where each boundary crosses the
    x axis (the classes differ along x): the imbalanced one moves into the minority class.
    """
    from segjax import losses

    anchor, positive = np.array([-0.5, 0.0]), np.array([0.5, 0.0])
    coords = np.linspace(-3, 3, grid)
    negatives = np.stack(np.meshgrid(coords, coords, indexing="xy"), -1).reshape(-1, 2)
    labels = jnp.asarray([0, 0, 1])

    def loss_at(n):
        emb = jnp.stack([jnp.asarray(anchor, jnp.float32), jnp.asarray(positive, jnp.float32), n])
        total, _ = losses.triplet_loss(emb, labels, margin=margin, mining="all")
        return total

    loss_map = np.asarray(jax.vmap(loss_at)(jnp.asarray(negatives, jnp.float32))).reshape(grid, grid)

    rng = np.random.default_rng(0)

    def sample(n0, n1):
        pts = np.concatenate([rng.normal([-1.0, 0.0], 0.8, (n0, 2)),
                              rng.normal([1.0, 0.0], 0.8, (n1, 2))])
        return pts, np.concatenate([np.zeros(n0, int), np.ones(n1, int)])

    sets = {"balanced": sample(200, 200), "imbalanced": sample(200, 10)}
    fits = {"balanced": _fit_linear(*sets["balanced"], None),
            "imbalanced": _fit_linear(*sets["imbalanced"], None),
            "imbalanced_weighted": _fit_linear(*sets["imbalanced"], jnp.asarray([1.0, 20.0]))}
    boundary = {}
    for name, (w, b) in fits.items():
        dw, db = w[:, 1] - w[:, 0], b[1] - b[0]  # class 1 wins where dw . x + db > 0
        boundary[name] = {"w": dw, "b": float(db), "boundary_x": float(-db / dw[0])}
    return {"anchor": anchor, "positive": positive, "margin": margin, "grid": coords,
            "loss_map": loss_map, "d_ap": float(np.linalg.norm(anchor - positive)),
            "points": {k: v[0] for k, v in sets.items()},
            "labels": {k: v[1] for k, v in sets.items()}, "boundaries": boundary}
