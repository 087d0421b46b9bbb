"""ReNet (Visin et al. 2015) and ReSeg (Visin et al., CVPR Workshops 2016): recurrent sweeps over
an image instead of convolution and pooling.

* `gru_sweep`: one direction of a GRU over a sequence, with exactly `torch.nn.GRU`'s equations
  (gate order r, z, n; h_0 = 0):

      r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)      z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
      n = tanh(W_in x + b_in + r * (W_hn h + b_hn))   h' = (1 - z) * n + z * h

  The input projections of all steps are one matmul before the `lax.scan`, which carries only the
  hidden state (of several GRUs at once: `BiGRU` runs both directions in one scan). (torch's form: the reset gate multiplies `W_hn h + b_hn`, bias included, where
  Cho et al.'s and Lasagne's multiply `W_hn h` only.)
* `BiGRU`: a forward and a backward sweep over the same input, outputs concatenated per step
  `[forward, backward]` (`torch.nn.GRU(bidirectional=True)`).
* `ReNetLayer` (ReNet Sec. 2, Eqs. 1-2): the map is split into non-overlapping hp x wp patches,
  each flattened (in (row, column, channel) order) to one vector; a bidirectional GRU sweeps every
  column of patches top-down and bottom-up (the vertical sweep, Eq. 1) and a second one sweeps
  every row of that result left-right and right-left (the horizontal sweep, Eq. 2):
  `[N, H, W, C] -> [N, ceil(H / hp), ceil(W / wp), 2 * hidden]`. Each output cell depends on the
  whole image. A map that is not a multiple of the patch is zero-padded at the bottom/right first
  (as the authors' `DynamicPaddingLayer`); the sweeps read those zeros.
* `ReSegVGG16` (`reseg_vgg16`, ReSeg Sec. 3 and Fig. 1): VGG-16's first `vgg_stages` stages
  (3x3 conv + ReLU, 2x2 ceil-mode pools between the stages; torchvision's parameter names, so
  ImageNet weights load with `vgg16_variables_from_torch`), `num_renet_layers` ReNet layers,
  transposed convolutions (kernel = stride, ReLU) back to the input resolution, and a 1x1 conv
  classifier (the softmax is the loss's). Any H x W: the ceil-mode pools and the ReNet padding round
  sizes up, so the upsampled map covers the image and is cropped at the bottom/right.

  Defaults are the authors' CamVid model (the paper defers its hyperparameters to the code:
  github.com/fvisin/reseg, `evaluate_camvid_with_cb.py` of the commit "Add evaluate files used in
  the paper"): VGG-16 up to conv3_3 (output stride 4; frozen ImageNet weights there), 2 ReNet
  layers of 100 GRU units per direction with 1 x 1 patches, 2 transposed convolutions of 50
  filters, 2 x 2 stride 2, ReLU. Reported on CamVid (11 classes, 360 x 480, median-frequency class
  balancing): 58.8% mIoU, 88.7% global accuracy. Differences from the authors' Theano code,
  where the paper does not settle them: their backward GRU reads the forward GRU's output instead
  of the layer's input and their first sweep is the horizontal one; here both directions read the
  same input and the vertical sweep comes first (ReNet Eqs. 1-2); the GRU is torch's (above), with
  torch's U(-1/sqrt(hidden), 1/sqrt(hidden)) initialisation.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segjax.models.backbones.vgg import VGG16_STAGES, conv_relu_stack, max_pool_2x2
from segjax.models.layers import ConvTranspose, check_images
from segjax.models.outputs import LOGITS
from segjax.models.registry import register
from segjax.ops._args import positive_pair

# The authors' CamVid model (module docstring).
RESEG_CAMVID = dict(vgg_stages=3, num_renet_layers=2, hidden=100, patch=1, upsample_filters=(50, 50))


def gru_sweep(gates_x: jax.Array, hidden_kernel: jax.Array, hidden_bias: jax.Array) -> jax.Array:
    """Hidden states of GRUs (torch's equations, h_0 = 0) run over a time-major sequence.

    Args:
      gates_x: `x_t W_i + b_i` for every step, `[T, *G, B, 3 * H]` in torch's gate order (r, z, n);
        `G` are optional leading axes of independent GRUs (`BiGRU` runs its two directions as G = 2).
      hidden_kernel: `W_h` `[*G, H, 3 * H]` (torch's `weight_hh_l0.T`).
      hidden_bias: `b_h` `[*G, 3 * H]` (torch's `bias_hh_l0`).

    Returns:
      `[T, *G, B, H]`: the hidden state after reading step t, at index t.
    """
    hidden = hidden_kernel.shape[-2]
    bias = hidden_bias[..., None, :]

    def step(h, gx):
        gh = h @ hidden_kernel + bias
        r = jax.nn.sigmoid(gx[..., :hidden] + gh[..., :hidden])
        z = jax.nn.sigmoid(gx[..., hidden:2 * hidden] + gh[..., hidden:2 * hidden])
        n = jnp.tanh(gx[..., 2 * hidden:] + r * gh[..., 2 * hidden:])
        h = (1 - z) * n + z * h
        return h, h

    h0 = jnp.zeros(gates_x.shape[1:-1] + (hidden,), gates_x.dtype)
    return lax.scan(step, h0, gates_x)[1]


def _torch_gru_init(hidden: int) -> nn.initializers.Initializer:
    """U(-1/sqrt(hidden), 1/sqrt(hidden)): torch.nn.GRU's init of every weight and bias."""
    bound = 1.0 / math.sqrt(hidden)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class BiGRU(nn.Module):
    """Bidirectional GRU over a time-major sequence: `[T, B, D] -> [T, B, 2 * hidden]`.

    Per step the output is `[forward state, backward state]`, as `torch.nn.GRU(D, hidden,
    bidirectional=True)`. Parameters, for each direction `{forward,backward}_`: `input_kernel`
    `[D, 3 * hidden]` (= torch's `weight_ih_l0{,_reverse}.T`), `input_bias`, `hidden_kernel`
    `[hidden, 3 * hidden]`, `hidden_bias` `[3 * hidden]`; gate order r, z, n.

    Attributes:
      hidden: units per direction.
      dtype: compute dtype (parameters are float32).
    """

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init, h3 = _torch_gru_init(self.hidden), 3 * self.hidden
        gates_x, kernels, biases = [], [], []
        for name in ("forward", "backward"):
            p = {k: self.param(f"{name}_{k}", init, shape).astype(self.dtype) for k, shape in (
                ("input_kernel", (x.shape[-1], h3)), ("input_bias", (h3,)),
                ("hidden_kernel", (self.hidden, h3)), ("hidden_bias", (h3,)))}
            gates_x.append(x.astype(self.dtype) @ p["input_kernel"] + p["input_bias"])
            kernels.append(p["hidden_kernel"])
            biases.append(p["hidden_bias"])
        # One scan for both directions: the backward GRU reads the time-reversed sequence.
        states = gru_sweep(jnp.stack([gates_x[0], gates_x[1][::-1]], axis=1), jnp.stack(kernels), jnp.stack(biases))
        return jnp.concatenate([states[:, 0], states[::-1, 1]], axis=-1)


def split_patches(x: jax.Array, patch: tuple[int, int]) -> jax.Array:
    """`[N, H, W, C] -> [N, ceil(H/hp), ceil(W/wp), hp * wp * C]`: non-overlapping patches, each
    flattened in (row, column, channel) order, after zero-padding the bottom/right to a multiple."""
    (hp, wp), (n, h, w, c) = patch, x.shape
    ph, pw = -h % hp, -w % wp
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    rows, cols = (h + ph) // hp, (w + pw) // wp
    x = x.reshape(n, rows, hp, cols, wp, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, rows, cols, hp * wp * c)


class ReNetLayer(nn.Module):
    """One ReNet layer (module docstring): `[N, H, W, C] -> [N, ceil(H/hp), ceil(W/wp), 2 * hidden]`.

    Attributes:
      hidden: GRU units per direction (the output has 2 * hidden channels).
      patch: int or (hp, wp), the patch height and width.
      dtype: compute dtype.

    Children: `vertical` (`BiGRU` over each column of patches, top to bottom and back) and
    `horizontal` (`BiGRU` over each row of the vertical sweep's output).
    """

    hidden: int
    patch: Any = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not (isinstance(self.hidden, int) and self.hidden > 0):
            raise ValueError(f"ReNetLayer hidden must be a positive int, got {self.hidden!r}")
        patches = split_patches(x, positive_pair(self.patch, "patch"))
        n, rows, cols, d = patches.shape
        # Vertical sweep: one sequence per (image, column), time = the row.
        seq = patches.transpose(1, 0, 2, 3).reshape(rows, n * cols, d)
        v = BiGRU(self.hidden, self.dtype, name="vertical")(seq).reshape(rows, n, cols, -1)
        # Horizontal sweep over the vertical features: one sequence per (image, row), time = the column.
        seq = v.transpose(2, 1, 0, 3).reshape(cols, n * rows, -1)
        out = BiGRU(self.hidden, self.dtype, name="horizontal")(seq).reshape(cols, n, rows, -1)
        return out.transpose(1, 2, 0, 3)


def split_stride(total: int, n: int) -> list[int]:
    """`n` integer strides, largest first, whose product is `total`, as even as the prime factors
    allow (16 over 2 layers: 4, 4; over 3: 4, 2, 2)."""
    factors, f, rest = [], 2, total
    while rest > 1:
        while rest % f == 0:
            factors.append(f)
            rest //= f
        f += 1
    strides = [1] * n
    for f in sorted(factors, reverse=True):
        strides[strides.index(min(strides))] *= f
    return sorted(strides, reverse=True)


class VGG16Features(nn.Module):
    """VGG-16's first `stages` stages: `[N, H, W, C] -> [N, ceil(H / 2^(s-1)), ..., width * mult]`.

    The convs (3x3, pad 1, ReLU) of stage s follow a 2x2 ceil-mode max pool for s > 1; the output
    is the last stage's conv output, before its pool (conv3_3 for 3 stages). Parameter names are
    `segjax.models.backbones.vgg.VGG16`'s (`conv{s}_{i}`), a prefix of its parameters.
    """

    stages: int = 3
    width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(self.dtype)
        for s, (num_convs, mult) in enumerate(VGG16_STAGES[:self.stages], start=1):
            if s > 1:
                x = max_pool_2x2(x)
            x = conv_relu_stack(x, [mult * self.width] * num_convs, [f"conv{s}_{i}" for i in range(1, num_convs + 1)],
                                train=False, batch_norm=False, dtype=self.dtype)
        return x


class ReSegVGG16(nn.Module):
    """ReSeg: VGG-16 features, ReNet layers, transposed-conv upsampling, 1x1 classifier (module
    docstring; defaults are the authors' CamVid model).

    Attributes:
      num_classes: output classes.
      vgg_stages: VGG-16 stages used, 1..5 (3: up to conv3_3, output stride 4).
      num_renet_layers: stacked ReNet layers (>= 1).
      hidden: GRU units per direction in every ReNet layer.
      patch: int or (hp, wp), the patch of every ReNet layer.
      upsample_filters: channels of each transposed conv (ReLU after each). Their strides
        (`split_stride`, kernel = stride) multiply to the total stride `2^(vgg_stages - 1) *
        patch^num_renet_layers` per axis: the map comes back to (at least) the input size.
      backbone_width: VGG-16's stage-1 width (64; smaller for tests).
      dtype: compute dtype (logits are float32).
      in_channels: channels of the input images.
      axis_name: the trainer's pmap axis, accepted as every model's (no BatchNorm to synchronise).

    Children: `backbone` (`VGG16Features`), `renet_{i}` (`ReNetLayer`), `upsample_{i}`
    (`ConvTranspose`), `classifier` (1x1 conv).
    """

    num_classes: int
    vgg_stages: int = RESEG_CAMVID["vgg_stages"]
    num_renet_layers: int = RESEG_CAMVID["num_renet_layers"]
    hidden: int = RESEG_CAMVID["hidden"]
    patch: Any = RESEG_CAMVID["patch"]
    upsample_filters: Sequence[int] = RESEG_CAMVID["upsample_filters"]
    backbone_width: int = 64
    dtype: Any = jnp.float32
    in_channels: int = 3
    axis_name: str | None = None  # the trainer's pmap axis; no BatchNorm here to synchronise

    def upsample_strides(self) -> list[tuple[int, int]]:
        """(sh, sw) of each transposed conv; raises ValueError naming a bad option."""
        if not (isinstance(self.vgg_stages, int) and 1 <= self.vgg_stages <= len(VGG16_STAGES)):
            raise ValueError(f"vgg_stages must be an int in 1..{len(VGG16_STAGES)}, got {self.vgg_stages!r}")
        if not (isinstance(self.num_renet_layers, int) and self.num_renet_layers >= 1):
            raise ValueError(f"num_renet_layers must be a positive int, got {self.num_renet_layers!r}")
        if not (isinstance(self.hidden, int) and self.hidden > 0):
            raise ValueError(f"hidden must be a positive int, got {self.hidden!r}")
        if not (isinstance(self.backbone_width, int) and self.backbone_width > 0):
            raise ValueError(f"backbone_width must be a positive int, got {self.backbone_width!r}")
        filters = tuple(self.upsample_filters)
        if not filters or not all(isinstance(f, int) and f > 0 for f in filters):
            raise ValueError(f"upsample_filters must be a non-empty tuple of positive ints, got {filters!r}")
        per_axis = [split_stride(2 ** (self.vgg_stages - 1) * p ** self.num_renet_layers, len(filters))
                    for p in positive_pair(self.patch, "patch")]
        return list(zip(*per_axis))

    def validate(self) -> None:
        """Raises ValueError naming an unsupported option."""
        self.upsample_strides()

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        del train  # no dropout or normalisation
        strides = self.upsample_strides()
        check_images(images, self.in_channels, "reseg_vgg16")
        x = VGG16Features(self.vgg_stages, self.backbone_width, self.dtype, name="backbone")(images)
        for i in range(self.num_renet_layers):
            x = ReNetLayer(self.hidden, self.patch, self.dtype, name=f"renet_{i}")(x)
        for i, (features, stride) in enumerate(zip(self.upsample_filters, strides)):
            x = nn.relu(ConvTranspose(features, stride, stride, dtype=self.dtype, name=f"upsample_{i}")(x))
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                         name="classifier")(x)
        h, w = images.shape[1:3]
        return {LOGITS: logits[:, :h, :w].astype(jnp.float32)}


@register("reseg_vgg16")
def reseg_vgg16(
    *, num_classes: int, vgg_stages: int = RESEG_CAMVID["vgg_stages"],
    num_renet_layers: int = RESEG_CAMVID["num_renet_layers"], hidden: int = RESEG_CAMVID["hidden"],
    patch: Any = RESEG_CAMVID["patch"], upsample_filters: Sequence[int] = RESEG_CAMVID["upsample_filters"],
    backbone_width: int = 64, dtype: Any = jnp.float32, in_channels: int = 3, axis_name: str | None = None,
) -> ReSegVGG16:
    """ReSeg (VGG-16 to conv3_3, 2 ReNet layers of 100 GRU units, 1x1 patches, 2 transposed convs of
    50): the authors' CamVid model, 58.8% mIoU / 88.7% global accuracy reported on CamVid."""
    model = ReSegVGG16(
        num_classes=num_classes, vgg_stages=vgg_stages, num_renet_layers=num_renet_layers, hidden=hidden,
        patch=patch, upsample_filters=tuple(upsample_filters), backbone_width=backbone_width, dtype=dtype,
        in_channels=in_channels, axis_name=axis_name,
    )
    model.validate()  # fail in create_model, not at the first init
    return model
