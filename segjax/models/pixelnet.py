"""PixelNet (Bansal, Chen, Russell, Gupta & Ramanan, 2017, "PixelNet: Representation of the
pixels, by the pixels, and for the pixels").

Each pixel is classified from its *hypercolumn*: the features of several layers of a VGG-16 read
at that pixel, concatenated, then a multi-layer perceptron per pixel:

- layers (the paper's): conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 and fc7 — segjax's
  `VGG16` maps `conv1` .. `conv5` (each stage's last conv, before its pool) and `fc7`, at strides
  1, 2, 4, 8, 16, 32 (ceil-mode pools: a stride-s map has ceil(H / s) rows and cell i covers
  pixels [s*i, s*i + s));
- sampling: pixel (y, x) reads a stride-s map bilinearly at ((y + 0.5) / s - 0.5, (x + 0.5) / s
  - 0.5), clamped to the map — exactly `F.interpolate(map, scale_factor=s, mode="bilinear",
  align_corners=False)[..., y, x]`, the same grid as `segjax.models.fcn.upsample`;
- MLP (the paper: fc layers of 4096, 4096, then the classifier; `mlp_dims` chooses them), ReLU
  and dropout after each hidden layer.

Training uses a sparse random sample of pixels per image (the paper: 2000); testing is dense.
`PixelNet.__call__(images, train, pixel_index=None)`:

- `pixel_index` [N, S] int32 given (flat positions `y * W + x`): `{"logits": [N, S, K],
  "pixel_index": pixel_index}` — the hypercolumns of those pixels only;
- else with `train=True` and `train_samples` S > 0: S positions per image drawn from the
  "dropout" rng (each example's key is that key folded with the example's global position in
  the batch, as `segjax.models.layers.Dropout`, so 1 and N devices draw the same pixels); without
  replacement when S <= H * W, else with replacement; the same output;
- else dense `{"logits": [N, H, W, K]}`. The first fc layer is linear, so it commutes with the
  bilinear read-out: each layer's slice of its kernel is applied at the layer's own resolution and
  the products are upsampled and summed (exactly the per-pixel MLP on every pixel, at a fraction
  of the cost of first upsampling every map to the image).

The semantic task (`segjax.tasks.semantic`) scores `"logits"` [N, S, K] against the labels at
`"pixel_index"` when a model returns it; evaluation calls `train=False` and gets dense logits.
Sample count, widths and image size are static, so nothing recompiles.

Reported (as cited in segjax issue 27's brief; not re-read from the paper here): 69.7% mIoU on
PASCAL VOC 2012 test. The paper's headline segmentation results are on PASCAL-Context.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segjax import ops
from segjax.models.backbones.vgg import VGG16
from segjax.models.layers import Dropout, check_images
from segjax.models.outputs import LOGITS, PIXEL_INDEX
from segjax.models.registry import register

HYPERCOLUMN_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc7")  # conv1_2 ... conv5_3, fc7
PAPER_TRAIN_SAMPLES = 2000  # pixels sampled per image at training time (Bansal et al.)


def sample_bilinear(feature: jax.Array, stride: int, pixel_index: jax.Array, image_width: int) -> jax.Array:
    """Reads `feature` [N, h, w, C] (a stride-`stride` map) at image pixels `pixel_index` [N, S].

    `pixel_index` holds flat positions `y * image_width + x`. Returns [N, S, C] in the feature's
    dtype (weights in float32): bilinear at ((y + 0.5) / stride - 0.5, (x + 0.5) / stride - 0.5)
    clamped to [0, h - 1] x [0, w - 1], which equals `F.interpolate(feature, scale_factor=stride,
    mode="bilinear", align_corners=False)` at (y, x).
    """
    n, h, w, c = feature.shape
    y = (pixel_index // image_width).astype(jnp.float32)
    x = (pixel_index % image_width).astype(jnp.float32)

    def axis(p, size):
        p = jnp.clip((p + 0.5) / stride - 0.5, 0.0, size - 1.0)
        p0 = jnp.floor(p)
        i0 = p0.astype(jnp.int32)
        return i0, jnp.minimum(i0 + 1, size - 1), p - p0

    y0, y1, wy = axis(y, h)
    x0, x1, wx = axis(x, w)
    flat = feature.reshape(n, h * w, c)

    def at(yi, xi):
        return jnp.take_along_axis(flat, (yi * w + xi)[..., None], axis=1).astype(jnp.float32)

    wy, wx = wy[..., None], wx[..., None]
    out = ((1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1))
           + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1)))
    return out.astype(feature.dtype)


def sample_pixel_index(key: jax.Array, batch: int, height: int, width: int, samples: int, *,
                       axis_name: str | None = None) -> jax.Array:
    """[batch, samples] int32 random flat pixel positions `y * width + x`, one draw per example.

    Example i uses `fold_in(key, offset + i)`, `offset` being the global position of this shard's
    first example (`axis_index(axis_name) * batch` under pmap, 0 under jit), so the draw does not
    depend on the device count. Without replacement when `samples <= height * width`.
    """
    total = height * width
    offset = 0 if axis_name is None else lax.axis_index(axis_name) * batch
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(batch))
    draw = lambda k: jax.random.choice(k, total, (samples,), replace=samples > total)  # noqa: E731
    return jax.vmap(draw)(keys).astype(jnp.int32)


class PixelNet(nn.Module):
    """PixelNet on VGG-16 (see the module docstring).

    Attributes:
      num_classes: output classes.
      layers: the VGG16 maps forming the hypercolumn (default the paper's six).
      mlp_dims: widths of the hidden fc layers ((4096, 4096) in the paper).
      train_samples: pixels per image at training time (2000); 0: train densely.
      dropout_rate: dropout after each hidden fc layer.
      fc6_kernel, fc_dim: VGG-16's fc6 kernel and fc6/fc7 channels (7, 4096: the
        convolutionalised ImageNet classifier).
      backbone_width, backbone_dropout: VGG-16's stage-1 width and fc6/fc7 dropout (64, 0.5).
      dtype, axis_name, in_channels: the model contract's.

    Parameters: `backbone` (VGG16, output stride 32), `fc1_kernel` [D, mlp_dims[0]] (rows: the
    concatenated hypercolumn in `layers` order) and `fc1_bias`, `fc2` .. (Dense), `classifier`
    (Dense).
    """

    num_classes: int
    layers: Sequence[str] = HYPERCOLUMN_LAYERS
    mlp_dims: Sequence[int] = (4096, 4096)
    train_samples: int = PAPER_TRAIN_SAMPLES
    dropout_rate: float = 0.5
    fc6_kernel: int = 7
    fc_dim: int = 4096
    backbone_width: int = 64
    backbone_dropout: float = 0.5
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    def _backbone(self, **kwargs: Any) -> VGG16:
        return VGG16(output_stride=32, fc6_kernel=self.fc6_kernel, fc_dim=self.fc_dim,
                     include_fc="fc7" in self.layers, dropout_rate=self.backbone_dropout,
                     width=self.backbone_width, dtype=self.dtype, axis_name=self.axis_name,
                     in_channels=self.in_channels, **kwargs)

    def validate(self) -> None:
        """Raises ValueError naming an unknown layer, a bad width or sample count."""
        backbone = self._backbone(parent=None)
        backbone.validate()
        known = tuple(f"conv{s}" for s in range(1, 6)) + ("fc7",)
        if not self.layers or any(name not in known for name in self.layers) or len(set(self.layers)) != len(
                self.layers):
            raise ValueError(f"layers={tuple(self.layers)!r} must be distinct names from {known}")
        if not self.mlp_dims or any(not isinstance(d, int) or d < 1 for d in self.mlp_dims):
            raise ValueError(f"mlp_dims must be positive ints, got {tuple(self.mlp_dims)!r}")
        if not isinstance(self.train_samples, int) or self.train_samples < 0:
            raise ValueError(f"train_samples must be an int >= 0, got {self.train_samples!r}")

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False,
                 pixel_index: jax.Array | None = None) -> dict[str, jax.Array]:
        self.validate()
        check_images(images, self.in_channels, "pixelnet_vgg16")
        n, height, width, _ = images.shape
        backbone = self._backbone(name="backbone")
        feats = backbone(images, train)
        strides, channels = backbone.feature_strides, backbone.feature_channels
        dims = [channels[name] for name in self.layers]
        kernel = self.param("fc1_kernel", nn.initializers.lecun_normal(), (sum(dims), self.mlp_dims[0]), jnp.float32)
        bias = self.param("fc1_bias", nn.initializers.zeros, (self.mlp_dims[0],), jnp.float32)
        kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)

        if pixel_index is None and train and self.train_samples > 0:
            pixel_index = sample_pixel_index(self.make_rng("dropout"), n, height, width, self.train_samples,
                                             axis_name=self.axis_name)
        if pixel_index is not None:  # sparse: hypercolumns of the chosen pixels [N, S, D]
            if pixel_index.ndim != 2 or pixel_index.shape[0] != n:
                raise ValueError(f"pixel_index must be [N={n}, S], got {tuple(pixel_index.shape)}")
            columns = jnp.concatenate([sample_bilinear(feats[name], strides[name], pixel_index, width)
                                       for name in self.layers], axis=-1)
            x = columns.astype(self.dtype) @ kernel + bias
        else:  # dense: fc1 per layer at its own resolution, then upsampled (linear ops commute)
            x = jnp.zeros((n, height, width, self.mlp_dims[0]), jnp.float32)
            start = 0
            for name, d in zip(self.layers, dims):
                z = (feats[name].astype(self.dtype) @ kernel[start:start + d]).astype(jnp.float32)
                start += d
                s, (h, w) = strides[name], z.shape[1:3]
                if s > 1:
                    z = ops.resize(z, (s * h, s * w), "bilinear", align_corners=False)
                x = x + z[:, :height, :width]
            x = x.astype(self.dtype) + bias
        for i, dim in enumerate(self.mlp_dims):
            if i > 0:
                x = nn.Dense(dim, dtype=self.dtype, param_dtype=jnp.float32, name=f"fc{i + 1}")(x)
            x = Dropout(self.dropout_rate, self.axis_name)(nn.relu(x), not train)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="classifier")(x)
        out = {LOGITS: logits.astype(jnp.float32)}
        if pixel_index is not None:
            out[PIXEL_INDEX] = pixel_index
        return out


@register("pixelnet_vgg16")
def pixelnet_vgg16(
    *, num_classes: int, layers: Sequence[str] = HYPERCOLUMN_LAYERS, mlp_dims: Sequence[int] = (4096, 4096),
    train_samples: int = PAPER_TRAIN_SAMPLES, dropout_rate: float = 0.5, fc6_kernel: int = 7, fc_dim: int = 4096,
    backbone_width: int = 64, backbone_dropout: float = 0.5, dtype: Any = jnp.float32,
    axis_name: str | None = None, in_channels: int = 3,
) -> PixelNet:
    """PixelNet: VGG-16 hypercolumns (conv1_2 .. conv5_3, fc7), a 4096-4096 MLP per pixel, 2000 sampled
    pixels per image in training, dense at test."""
    model = PixelNet(
        num_classes=num_classes, layers=tuple(layers), mlp_dims=tuple(mlp_dims), train_samples=train_samples,
        dropout_rate=dropout_rate, fc6_kernel=fc6_kernel, fc_dim=fc_dim, backbone_width=backbone_width,
        backbone_dropout=backbone_dropout, dtype=dtype, axis_name=axis_name, in_channels=in_channels,
    )
    model.validate()
    return model
