"""PANet-style few-shot segmenter (Wang et al., ICCV 2019): a shared encoder and prototypes.

`model.apply(variables, support_images, support_masks, query_images, train=...)` with

  support_images [B, N, K, H, W, 3]  (B episodes, N ways, K shots; ImageNet-normalised)
  support_masks  [B, N, K, H, W]     way n's class in its support images (1), else 0
  support_valid  [B, N, K, H, W]     optional: pixels that count (not ignored / padded)
  query_images   [B, H, W, 3]

returns `{"logits": [B, H, W, 1 + N]}` (background first; `scale` x cosine similarity of the
query features to the support prototypes, bilinearly upsampled to the image) and, in training,
`"align_logits": [B, N, K, H, W, 2]`: PANet's prototype alignment, each support image segmented
(background vs its way) by prototypes pooled from the query under the query's *predicted* mask
(argmax, no gradient through the mask; the gradient flows through the features), plus the
stride-8 features themselves, `"query_features"` [B, h, w, C] and `"support_features"`
[B, N, K, h, w, C] (for metric-learning losses on pixel embeddings).

The encoder is a ResNet (`segjax.models.backbones.resnet`) at output stride 8, its `layer3`
features (PANet uses VGG-16's conv5 at stride 8); the prototype pieces are `segjax.fewshot`.
Registered as `fewshot_resnet18` (output kind "fewshot").
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax import fewshot
from segjax.models.backbones.resnet import ResNet
from segjax.models.layers import check_images
from segjax.models.registry import register
from segjax.ops import resize


class PrototypeSegmenter(nn.Module):
    """Few-shot segmentation by masked average pooling and cosine similarity (see module doc).

    Attributes:
      num_classes: unused by the model (the episode decides the classes); kept for the registry.
      depth, width: the ResNet encoder.
      scale: the cosine similarity's multiplier (PANet: 20).
      dtype, axis_name: as the other models (BatchNorm synchronised over `axis_name`).
    """

    num_classes: int = 2
    depth: int = 18
    width: int = 16
    scale: float = 20.0
    dtype: Any = jnp.float32
    axis_name: str | None = None
    in_channels: int = 3

    def setup(self):
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        self.encoder = ResNet(depth=self.depth, width=self.width, output_stride=8, dtype=self.dtype,
                              axis_name=self.axis_name, in_channels=self.in_channels)

    def embed(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Features [..., h, w, C] (stride 8) of images [..., H, W, 3] (any leading axes)."""
        lead = images.shape[:-3]
        flat = images.reshape(-1, *images.shape[-3:])
        f = self.encoder(flat, train=train)["layer3"].astype(jnp.float32)
        return f.reshape(*lead, *f.shape[1:])

    def __call__(self, support_images, support_masks=None, query_images=None, support_valid=None,
                 train: bool = False):
        if support_masks is None:  # plain images [B, H, W, C]: their features (init, baselines)
            check_images(support_images, self.in_channels, "PrototypeSegmenter")
            return {"features": self.embed(support_images, train)}
        b, n, k, h, w = support_masks.shape
        # One encoder pass over every image of the batch (BatchNorm sees them together).
        allimg = jnp.concatenate([support_images.reshape(b * n * k, h, w, -1), query_images], axis=0)
        feats = self.embed(allimg, train)
        s_feat = feats[:b * n * k].reshape(b, n, k, *feats.shape[1:])
        q_feat = feats[b * n * k:]
        valid = jnp.ones_like(support_masks, bool) if support_valid is None else support_valid
        protos = jax.vmap(fewshot.prototypes)(s_feat, support_masks, valid)  # [B, 1 + N, C]
        q_logits = jax.vmap(lambda f, p: fewshot.cosine_logits(f, p, self.scale))(q_feat, protos)
        out = {"logits": resize(q_logits, (h, w), method="bilinear", align_corners=False)}
        if not train:
            return out
        out["query_features"], out["support_features"] = q_feat, s_feat  # metric-learning losses
        # Prototype alignment: query prototypes under the predicted query mask segment the support.
        pred = jax.lax.stop_gradient(jnp.argmax(out["logits"], axis=-1))  # [B, H, W]
        onehot = jax.nn.one_hot(pred, n + 1, dtype=jnp.float32)  # [B, H, W, 1 + N]
        q_protos = jax.vmap(lambda f, m: fewshot.masked_average_pool(
            jnp.broadcast_to(f, (n + 1, *f.shape)), jnp.moveaxis(m, -1, 0)))(q_feat, onehot)  # [B, 1+N, C]
        pairs = jnp.stack([jnp.broadcast_to(q_protos[:, :1], (b, n, q_protos.shape[-1])),
                           q_protos[:, 1:]], axis=2)  # [B, N, 2, C]: (background, way n)
        s_logits = jax.vmap(jax.vmap(lambda f, p: fewshot.cosine_logits(f, p, self.scale)))(
            s_feat, pairs)  # [B, N, K, h, w, 2]
        up = resize(s_logits.reshape(b * n * k, *s_logits.shape[3:]), (h, w), method="bilinear",
                    align_corners=False)
        out["align_logits"] = up.reshape(b, n, k, h, w, 2)
        return out


@register("fewshot_resnet18", output="episode")
def fewshot_resnet18(*, num_classes: int = 2, width: int = 16, scale: float = 20.0,
                     dtype: Any = jnp.float32, axis_name: str | None = None,
                     in_channels: int = 3) -> PrototypeSegmenter:
    """PANet-style prototype segmenter on a ResNet-18 encoder (width 16 by default: CPU-sized)."""
    return PrototypeSegmenter(num_classes=num_classes, depth=18, width=width, scale=scale,
                              dtype=dtype, axis_name=axis_name, in_channels=in_channels)


__all__ = ["PrototypeSegmenter", "fewshot_resnet18"]
