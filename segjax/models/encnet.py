"""EncNet (Zhang et al., CVPR 2018, "Context Encoding for Semantic Segmentation") on ResNet.

The Context Encoding Module on layer4 of a dilated ResNet (output stride 8), composed like segjax's
other ResNet segmenters (`resnet_segmenter`: logits bilinearly resized to the image, FCN aux
head on layer3):

1. `bottleneck`: 3x3 conv + BN + ReLU, layer4 -> D = 512 channels (mmseg `EncHead.bottleneck`,
   PyTorch-Encoding `EncHead.conv5`);
2. `context` (`ContextEncoding`): `project`, a 1x1 conv + BN + ReLU (D -> D), then the Encoding
   layer (`encoding`, `Encoding`): K = 32 learned codewords c_k [D] and smoothing factors; for
   every position i, residuals r_ik = x_i - c_k,
   soft assignment a_ik = softmax_k(-s_k ||r_ik||^2), codes e_k = sum_i a_ik r_ik [N, K, D];
   BatchNorm over the K codes (`codes_bn`, torch's BatchNorm1d(K) on [N, K, D]: statistics over N
   and D per code) + ReLU, and the mean over k: the encoded vector e [N, D];
3. `context/attention`: a fully connected layer D -> D + sigmoid: the channel attention gamma [N, D];
   the feature map becomes relu(x + x * gamma) as in both reference implementations
   (`residual_attention=True`); `residual_attention=False` is the paper's Eq. y = x * gamma;
4. Dropout 0.1 and the 1x1 classifier `cls`;
5. the SE-loss head `se`: a fully connected layer D -> num_classes on e, returned as
   `"se_logits"` [N, num_classes] (logits of "class k is present in the image"); the semantic
   task adds `loss.se_weight` times their binary cross-entropy against the presence vector of
   the label map (`segjax.losses.se_loss`).

Defaults are the authors' (PyTorch-Encoding, Hang Zhang: `EncModule`, `Encoding`) and
mmsegmentation's (`configs/_base_/models/encnet_r50-d8.py`, read with the search tool):
`channels=512`, `num_codes=32`, `use_se_loss=True`, `add_lateral=False`, `dropout_ratio=0.1`,
`loss_se_decode` a sigmoid cross-entropy with `loss_weight=0.2`, and an auxiliary `FCNHead` on
layer3 (1024 -> 256 channels) with `loss_weight=0.4` (PyTorch-Encoding's
`experiments/segmentation/option.py` defaults to `--aux-weight 0.2`, `--se-weight 0.2`). Initialisation as `Encoding` in both: codewords
~ U(-1/sqrt(K D), 1/sqrt(K D)), `scale` ~ U(-1, 0). The stored `scale` is the authors'
parameter, the *negative* smoothing factor: a_ik = softmax_k(scale_k ||r_ik||^2), so s_k = -scale_k
(weights copy one-to-one from either implementation).

Reported: 51.7% mIoU on PASCAL-Context (paper, ResNet-101, with SE-loss and multi-scale test)
and 85.9% on VOC 2012 test with COCO pretraining (both as cited in segjax issue 27);
mmsegmentation's model zoo lists EncNet R50-D8 75.67% and R101-D8 78.55% on Cityscapes val
(512x1024, 40k iterations). Not measured here (needs accelerators and the datasets).

The encoding sums over every cell of the layer4 map, so padding inside a padded evaluation batch
enters the codes (as the global pooling of DeepLab v3 and ParseNet).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segjax.models.backbones.resnet import ResNet
from segjax.models.compose import resnet_segmenter
from segjax.models.heads import ConvBNReLU, _conv
from segjax.models.layers import Dropout
from segjax.models.norm import BatchNorm
from segjax.models.outputs import SE_LOGITS
from segjax.models.registry import register

ENCNET_NUM_CODES = 32  # K, the authors' and mmseg's `num_codes`
ENCNET_CHANNELS = 512  # D, mmseg's `channels` (PyTorch-Encoding's EncHead conv5)


def _uniform(low: float, high: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, low, high)
    return init


class Encoding(nn.Module):
    """The Encoding layer: [N, h, w, D] -> codes e [N, K, D] (float32).

    a_ik = softmax_k(scale_k * ||x_i - c_k||^2) over the K codewords (scale = -s_k, the authors'
    parameter, initialised U(-1, 0)), e_k = sum_i a_ik (x_i - c_k) over the h * w positions.
    The squared distances are expanded as ||x||^2 - 2 x.c + ||c||^2 and e_k as
    (a^T x)_k - (sum_i a_ik) c_k, so memory stays O(N h w (D + K)) instead of O(N h w K D);
    both are computed in float32 at the highest matmul precision.

    Attributes:
      num_codes: K.
    Parameters: `codewords` [K, D] ~ U(-1/sqrt(K D), 1/sqrt(K D)), `scale` [K] ~ U(-1, 0).
    """

    num_codes: int = ENCNET_NUM_CODES

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, d = x.shape[0], x.shape[-1]
        std = 1.0 / (self.num_codes * d) ** 0.5
        codewords = self.param("codewords", _uniform(-std, std), (self.num_codes, d), jnp.float32)
        scale = self.param("scale", _uniform(-1.0, 0.0), (self.num_codes,), jnp.float32)
        x = x.astype(jnp.float32).reshape(n, -1, d)
        hi = lax.Precision.HIGHEST
        dist = (jnp.sum(x * x, -1, keepdims=True) - 2.0 * jnp.einsum("nld,kd->nlk", x, codewords, precision=hi)
                + jnp.sum(codewords * codewords, -1))
        assign = jax.nn.softmax(scale * dist, axis=-1)  # [N, L, K]
        return (jnp.einsum("nlk,nld->nkd", assign, x, precision=hi)
                - jnp.sum(assign, axis=1)[..., None] * codewords)


class ContextEncoding(nn.Module):
    """The Context Encoding Module: x [N, h, w, D] -> (features [N, h, w, D], encoded e [N, D]).

    `project` (1x1 conv + BN + ReLU) -> `encoding` (`Encoding`) -> `codes_bn` (BN over the K codes,
    statistics over N and D) + ReLU -> mean over k = e; gamma = sigmoid(`attention`(e));
    features = relu(x + x * gamma) (`residual_attention`, the reference code) or x * gamma (the
    paper's equation). Children: `project`, `encoding`, `codes_bn`, `attention` (Dense D -> D).
    """

    num_codes: int = ENCNET_NUM_CODES
    residual_attention: bool = True
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        d = x.shape[-1]
        y = ConvBNReLU(d, 1, dtype=self.dtype, axis_name=self.axis_name, name="project")(x, train)
        codes = Encoding(self.num_codes, name="encoding")(y)  # [N, K, D] float32
        # torch's BatchNorm1d(K) on [N, K, D]: per code, over N and D (segjax's BN is channels-last).
        codes = BatchNorm(not train, self.axis_name, name="codes_bn")(jnp.swapaxes(codes, 1, 2))
        encoded = jnp.mean(nn.relu(codes), axis=-1)  # [N, D]
        gamma = nn.sigmoid(nn.Dense(d, dtype=jnp.float32, name="attention")(encoded))
        gamma = gamma[:, None, None, :].astype(x.dtype)
        out = nn.relu(x + x * gamma) if self.residual_attention else x * gamma
        return out, encoded


class EncHead(nn.Module):
    """`bottleneck` (3x3 ConvBNReLU to `channels`) -> `context` (`ContextEncoding`) -> Dropout ->
    1x1 `cls`; with `se_loss` the `se` Dense on the encoded vector.

    `__call__(x [N, h, w, C], train)` -> (logits [N, h, w, K] float32, se_logits [N, K] float32 or
    None).
    """

    num_classes: int
    channels: int = ENCNET_CHANNELS
    num_codes: int = ENCNET_NUM_CODES
    se_loss: bool = True
    residual_attention: bool = True
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array | None]:
        kw = dict(dtype=self.dtype, axis_name=self.axis_name)
        x = ConvBNReLU(self.channels, 3, name="bottleneck", **kw)(x, train)
        x, encoded = ContextEncoding(self.num_codes, self.residual_attention, name="context", **kw)(x, train)
        x = Dropout(self.dropout_rate, self.axis_name)(x, not train)
        logits = _conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="cls")(x).astype(jnp.float32)
        se = nn.Dense(self.num_classes, dtype=jnp.float32, name="se")(encoded) if self.se_loss else None
        return logits, se


class EncNet(nn.Module):
    """EncNet on a ResNet backbone (see the module docstring).

    Attributes:
      num_classes: output classes.
      backbone_depth: ResNet depth.
      output_stride: 8 (as mmseg's -D8 models), 16 or 32.
      multi_grid: unit rates of layer4's blocks or None.
      num_codes: K codewords (32).
      head_channels: D, the encoded channels (512).
      se_loss: return SE_LOGITS from the `se` head.
      residual_attention: relu(x + x * gamma) (reference code) instead of x * gamma (paper).
      aux_loss: add `aux_classifier` (FCNHead) on layer3 and return AUX_LOGITS.
      backbone_width: ResNet stem width (64 = torchvision).
      dtype, axis_name, in_channels: the model contract's.

    Children: `backbone`, `classifier` (`EncHead`), `aux_classifier`.
    """

    num_classes: int
    backbone_depth: int = 50
    output_stride: int = 8
    multi_grid: Sequence[int] | None = None
    num_codes: int = ENCNET_NUM_CODES
    head_channels: int = ENCNET_CHANNELS
    se_loss: bool = True
    residual_attention: bool = True
    aux_loss: bool = True
    backbone_width: int = 64
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        se = {}

        def head(feats, train):
            logits, se[SE_LOGITS] = EncHead(
                self.num_classes, self.head_channels, self.num_codes, self.se_loss,
                self.residual_attention, dtype=self.dtype, axis_name=self.axis_name,
                name="classifier")(feats["layer4"], train)
            return logits

        out = resnet_segmenter(self, images, train, head, depth=self.backbone_depth,
                               multi_grid=self.multi_grid, label=f"encnet_resnet{self.backbone_depth}")
        if se.get(SE_LOGITS) is not None:
            out[SE_LOGITS] = se[SE_LOGITS]
        return out


def _encnet_factory(depth: int):
    def factory(
        *, num_classes: int, output_stride: int = 8, multi_grid: Sequence[int] | None = None,
        num_codes: int = ENCNET_NUM_CODES, head_channels: int = ENCNET_CHANNELS, se_loss: bool = True,
        residual_attention: bool = True, aux_loss: bool = True, backbone_width: int = 64,
        dtype: Any = jnp.float32, axis_name: str | None = None, in_channels: int = 3,
    ) -> EncNet:
        ResNet(depth=depth, output_stride=output_stride, multi_grid=multi_grid, width=backbone_width).validate()
        for key, value in (("num_codes", num_codes), ("head_channels", head_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        return EncNet(
            num_classes=num_classes, backbone_depth=depth, output_stride=output_stride,
            multi_grid=None if multi_grid is None else tuple(multi_grid), num_codes=num_codes,
            head_channels=head_channels, se_loss=se_loss, residual_attention=residual_attention,
            aux_loss=aux_loss, backbone_width=backbone_width, dtype=dtype, axis_name=axis_name,
            in_channels=in_channels,
        )

    factory.__doc__ = (f"EncNet on ResNet-{depth}: OS 8, context encoding (K=32, D=512), SE-loss head, "
                       "aux head on layer3.")
    return factory


encnet_resnet18 = register("encnet_resnet18")(_encnet_factory(18))
encnet_resnet50 = register("encnet_resnet50")(_encnet_factory(50))
encnet_resnet101 = register("encnet_resnet101")(_encnet_factory(101))
