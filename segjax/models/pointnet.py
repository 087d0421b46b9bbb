"""PointNet segmentation (Qi, Su, Mo & Guibas, CVPR 2017), Fig. 2 and Sec. 4.2 of the paper.

Points `[N, P, 3 + F]` (xyz first, then F extra per-point features such as normals) are scored
per point, `[N, P, K]`. Every "shared MLP" layer is the same dense layer applied to each point (a
1x1 convolution), followed by BatchNorm and ReLU, as the paper has after every layer but the last:

  input T-Net (3x3) -> xyz @ A_in, the F features appended unchanged
  -> shared MLP (64, 64) -> feature T-Net (64x64) -> local features f = x @ A_feat  [N, P, 64]
  -> shared MLP (64, 128, 1024) -> max pool over the points -> global feature g    [N, 1024]
  (part segmentation: g concatenated with the object category's one-hot, [N, 1024 + C])
  -> [f, g] at every point -> shared MLP (512, 256, 128, 128) -> dense K           [N, P, K]

A T-Net (Fig. 2's "mini-network") is a shared MLP (64, 128, 1024), max pool, dense (512, 256)
with BatchNorm and ReLU, and a dense layer to k * k values read as the row-major matrix A - I
(so A = I + that; the paper's code starts the last layer at zero weights and an identity bias,
pointnet.pytorch adds the identity to a randomly initialised last layer as here, so gradients reach
the whole T-Net from the first step). Points are rows: a transformed point is `p @ A`.

The feature transform is kept close to orthogonal by the regulariser of Eq. 2,
L_reg = ||I - A A^T||_F^2 (`feature_transform_regularizer`), weighted 0.001 in the paper; the
model returns A as `"feature_transform"` so the loss can add it.

`width` scales every hidden layer by `width / 64` (64, the paper's, is the first MLP's width); the
feature T-Net's k is the scaled 64. With `num_categories > 0` the model is the paper's ShapeNet-part
variant and takes `categories` int `[N]` (16 categories in ShapeNet-part).

Parameter names: `input_tnet` / `feature_tnet` (each with `mlp{i}`, `mlp{i}_bn`, `fc{i}`,
`fc{i}_bn`, `transform`), `mlp1`, `mlp1_bn` .. `mlp5`, `mlp5_bn` (64, 64, 64, 128, 1024),
`seg1`, `seg1_bn` .. `seg4`, `seg4_bn`, `classifier`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.norm import BatchNorm
from segjax.models.outputs import LOGITS
from segjax.models.registry import register

FEATURE_TRANSFORM = "feature_transform"  # [N, k, k] float32: the feature T-Net's matrix A
INPUT_TRANSFORM = "input_transform"  # [N, 3, 3] float32: the input T-Net's matrix
REGULARIZER_WEIGHT = 0.001  # the paper's weight of L_reg (Sec. 4.2 / supplementary)

TNET_MLP, TNET_FC = (64, 128, 1024), (512, 256)
POINT_MLP = (64, 64)  # before the feature transform
GLOBAL_MLP = (64, 128, 1024)  # after it, before the max pool
SEG_MLP = (512, 256, 128, 128)  # then the classifier


def feature_transform_regularizer(transform: jax.Array) -> jax.Array:
    """Eq. 2 of the paper, ||I - A A^T||_F^2 for each `transform` A `[N, k, k]` -> `[N]`.

    (The authors' TensorFlow code adds `tf.nn.l2_loss`, half of this, times 0.001.)"""
    k = transform.shape[-1]
    gram = jnp.einsum("nij,nkj->nik", transform, transform)
    return jnp.sum(jnp.square(jnp.eye(k, dtype=transform.dtype) - gram), axis=(1, 2))


def max_pool_points(x: jax.Array) -> jax.Array:
    """The symmetric function of Sec. 4.2: max over the points, `[N, P, C]` -> `[N, C]`.

    Written as a gather at the argmax (the first on ties, like torch's max) so the gradient goes to
    exactly one point per channel, as torch's. `jnp.max`'s gradient compiled with jit on XLA:CPU was
    measured wrong here (the input gradient 87% off a torch transcription's, right without jit)."""
    index = jnp.argmax(x, axis=1)
    return jnp.take_along_axis(x, index[:, None], axis=1)[:, 0]


def _scaled(channels: int, width: int) -> int:
    return max(1, channels * width // 64)


def _shared_mlp(x: jax.Array, features: tuple[int, ...], prefix: str, first: int, train: bool,
                dtype: Any, axis_name: str | None) -> jax.Array:
    """Dense + BatchNorm + ReLU per layer over the last axis of `[..., C]`, layers named
    `{prefix}{i}` / `{prefix}{i}_bn` from i = `first`; called inside a compact module."""
    for i, f in enumerate(features, start=first):
        x = nn.Dense(f, dtype=dtype, param_dtype=jnp.float32, name=f"{prefix}{i}")(x)
        x = nn.relu(BatchNorm(not train, axis_name, dtype=dtype, name=f"{prefix}{i}_bn")(x))
    return x


class TNet(nn.Module):
    """PointNet's alignment network: `[N, P, k]` -> `A` `[N, k, k]` float32 (module docstring)."""

    k: int
    width: int = 64
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        scaled = lambda channels: tuple(_scaled(c, self.width) for c in channels)  # noqa: E731
        x = _shared_mlp(x, scaled(TNET_MLP), "mlp", 1, train, self.dtype, self.axis_name)
        x = _shared_mlp(max_pool_points(x), scaled(TNET_FC), "fc", 1, train, self.dtype, self.axis_name)
        delta = nn.Dense(self.k * self.k, dtype=self.dtype, param_dtype=jnp.float32, name="transform")(x)
        return delta.astype(jnp.float32).reshape(-1, self.k, self.k) + jnp.eye(self.k, dtype=jnp.float32)


class PointNetSeg(nn.Module):
    """PointNet segmentation network (see the module docstring).

    `__call__(points [N, P, in_channels], train=False, categories=None)` ->
    `{"logits": [N, P, num_classes], "feature_transform": [N, k, k], "input_transform": [N, 3, 3]}`
    (float32 whatever `dtype`; k = `width`, 64 in the paper). `categories` int `[N]` in
    `[0, num_categories)` is required when `num_categories > 0`, refused otherwise.

    Attributes:
      num_classes: per-point classes K (50 global part ids in ShapeNet-part).
      num_categories: object categories whose one-hot joins the global feature (0: none, the
        paper's Fig. 2 network; 16 for its ShapeNet-part network).
      width: channels of the first shared MLP (64 in the paper); every hidden width scales by
        `width / 64` (e.g. 4 for tests).
      in_channels: 3 + F, xyz first (3: points only; 6: with normals).
      dtype: compute dtype; parameters and outputs are float32.
      axis_name: pmap axis for synchronised BatchNorm.
    """

    num_classes: int
    num_categories: int = 0
    width: int = 64
    in_channels: int = 3
    dtype: Any = jnp.float32
    axis_name: str | None = None

    def validate(self) -> None:
        """Raises ValueError naming a bad width, in_channels or num_categories."""
        if not (isinstance(self.width, int) and self.width >= 1):
            raise ValueError(f"pointnet_seg: width must be a positive int, got {self.width!r}")
        if not (isinstance(self.in_channels, int) and self.in_channels >= 3):
            raise ValueError(f"pointnet_seg: in_channels must be an int >= 3 (xyz first, then the extra "
                             f"per-point features), got {self.in_channels!r}")
        if not (isinstance(self.num_categories, int) and self.num_categories >= 0):
            raise ValueError(f"pointnet_seg: num_categories must be an int >= 0, got {self.num_categories!r}")

    @nn.compact
    def __call__(self, points: jax.Array, train: bool = False,
                 categories: jax.Array | None = None) -> dict[str, jax.Array]:
        self.validate()
        if points.ndim != 3 or points.shape[-1] != self.in_channels:
            raise ValueError(f"pointnet_seg expects points [N, P, {self.in_channels}] (xyz first), got shape "
                             f"{tuple(points.shape)}")
        if (categories is None) != (self.num_categories == 0):
            raise ValueError("pointnet_seg: pass categories [N] exactly when num_categories > 0 "
                             f"(num_categories={self.num_categories}, categories "
                             f"{'missing' if categories is None else 'given'})")
        common = dict(dtype=self.dtype, axis_name=self.axis_name)
        scaled = lambda channels: tuple(_scaled(c, self.width) for c in channels)  # noqa: E731

        x = points.astype(self.dtype)
        input_transform = TNet(3, self.width, name="input_tnet", **common)(x[..., :3], train)
        xyz = jnp.einsum("npi,nij->npj", x[..., :3], input_transform.astype(self.dtype))
        x = jnp.concatenate([xyz, x[..., 3:]], axis=-1)
        x = _shared_mlp(x, scaled(POINT_MLP), "mlp", 1, train, **common)
        feature_transform = TNet(x.shape[-1], self.width, name="feature_tnet", **common)(x, train)
        local = jnp.einsum("npi,nij->npj", x, feature_transform.astype(self.dtype))
        x = _shared_mlp(local, scaled(GLOBAL_MLP), "mlp", len(POINT_MLP) + 1, train, **common)
        global_feature = max_pool_points(x)
        if self.num_categories:
            one_hot = jax.nn.one_hot(categories, self.num_categories, dtype=self.dtype)
            global_feature = jnp.concatenate([global_feature, one_hot], axis=-1)
        tiled = jnp.broadcast_to(global_feature[:, None], (*local.shape[:2], global_feature.shape[-1]))
        x = jnp.concatenate([local, tiled], axis=-1)
        x = _shared_mlp(x, scaled(SEG_MLP), "seg", 1, train, **common)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="classifier")(x)
        return {LOGITS: logits.astype(jnp.float32), FEATURE_TRANSFORM: feature_transform,
                INPUT_TRANSFORM: input_transform}


@register("pointnet_seg", output="points")
def pointnet_seg(
    *, num_classes: int, num_categories: int = 0, width: int = 64, in_channels: int = 3,
    dtype: Any = jnp.float32, axis_name: str | None = None,
) -> PointNetSeg:
    """PointNet segmentation (`PointNetSeg`) on points `[N, P, in_channels]`; `num_categories` (the
    ShapeNet-part variant's one-hot), `width` and `in_channels` are the overrides."""
    model = PointNetSeg(num_classes=num_classes, num_categories=num_categories, width=width,
                        in_channels=in_channels, dtype=dtype, axis_name=axis_name)
    model.validate()  # fail in create_model, not at the first init
    return model
