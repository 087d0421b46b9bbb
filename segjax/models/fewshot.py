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
features (PANet uses VGG-16's conv5 at stride 8). Registered as `fewshot_resnet18` (output kind
"episode"). Episodes are drawn on the host by `segjax.data.episodes`; the few-shot task is
`segjax.tasks.fewshot`.

The prototype maths (PANet: Wang, Liew, Zou, Zhou & Feng, ICCV 2019), public functions of this
module: **masked average pooling** (`masked_average_pool`) of a support image's features under
its (resized) mask gives a class prototype, and under the complement a background prototype;
with K shots the prototypes are averaged over the shots (`prototypes`). The query is segmented
pixel by pixel by the **scaled cosine similarity** to the prototypes (`cosine_logits`;
background first, then the N way classes), trained with cross-entropy. **Prototype alignment**
(PAR) reverses the roles: prototypes pooled from the query under its *predicted* mask segment
the support images, a second cross-entropy term. Shapes: `ways` N, `shots` K; features
[..., h, w, C], masks [..., H, W] in {0, 1} (or soft); pixels marked invalid (the dataset's
ignore label, padding) are excluded from every pool.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet
from segjax.models.layers import check_images
from segjax.models.registry import register
from segjax.ops import resize

EPS = 1e-5  # PANet's denominator guard in masked average pooling


def masked_average_pool(features: jax.Array, masks: jax.Array) -> jax.Array:
    """Mean feature under each mask: features [B, h, w, C], masks [B, H, W] -> [B, C].

    As PANet, the features are resized bilinearly (half-pixel centres) to the mask's size first,
    then `sum(F * M) / (sum(M) + 1e-5)`: an empty mask gives a zero prototype.
    """
    size = masks.shape[-2:]
    up = resize(features, size, method="bilinear", align_corners=False)
    m = masks.astype(up.dtype)[..., None]
    return jnp.sum(up * m, axis=(1, 2)) / (jnp.sum(m, axis=(1, 2)) + EPS)


def prototypes(features: jax.Array, fg_masks: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Background + N class prototypes from N-way K-shot support features.

    Args:
      features: [N, K, h, w, C] support features (way n's K shots).
      fg_masks: [N, K, H, W] foreground masks of way n's class in its support images.
      valid: [N, K, H, W] bool, pixels that count (None: all).

    Returns:
      [1 + N, C]: row 0 the background prototype (the mean over all N * K support images of the
      pool under valid & not foreground), rows 1..N each way's foreground prototype (mean over
      its K shots).
    """
    n, k = fg_masks.shape[:2]
    flat_f = features.reshape(n * k, *features.shape[2:])
    fg = fg_masks.reshape(n * k, *fg_masks.shape[2:]).astype(jnp.float32)
    v = jnp.ones_like(fg) if valid is None else valid.reshape(fg.shape).astype(jnp.float32)
    fg_p = masked_average_pool(flat_f, fg * v).reshape(n, k, -1).mean(axis=1)
    bg_p = masked_average_pool(flat_f, (1.0 - fg) * v).mean(axis=0)
    return jnp.concatenate([bg_p[None], fg_p], axis=0)


def cosine_logits(features: jax.Array, protos: jax.Array, scale: float = 20.0) -> jax.Array:
    """`scale * cos(feature, prototype)`: features [..., C], prototypes [P, C] -> [..., P].

    The norms are clamped at 1e-8 as `torch.nn.functional.cosine_similarity` does, inside the
    square root so that a zero vector (an empty mask's prototype) has a finite gradient."""
    def unit(x):
        return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-16))

    return scale * jnp.einsum("...c,pc->...p", unit(features), unit(protos))


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
        protos = jax.vmap(prototypes)(s_feat, support_masks, valid)  # [B, 1 + N, C]
        q_logits = jax.vmap(lambda f, p: cosine_logits(f, p, self.scale))(q_feat, protos)
        out = {"logits": resize(q_logits, (h, w), method="bilinear", align_corners=False)}
        if not train:
            return out
        out["query_features"], out["support_features"] = q_feat, s_feat  # metric-learning losses
        # Prototype alignment: query prototypes under the predicted query mask segment the support.
        pred = jax.lax.stop_gradient(jnp.argmax(out["logits"], axis=-1))  # [B, H, W]
        onehot = jax.nn.one_hot(pred, n + 1, dtype=jnp.float32)  # [B, H, W, 1 + N]
        q_protos = jax.vmap(lambda f, m: masked_average_pool(
            jnp.broadcast_to(f, (n + 1, *f.shape)), jnp.moveaxis(m, -1, 0)))(q_feat, onehot)  # [B, 1+N, C]
        pairs = jnp.stack([jnp.broadcast_to(q_protos[:, :1], (b, n, q_protos.shape[-1])),
                           q_protos[:, 1:]], axis=2)  # [B, N, 2, C]: (background, way n)
        s_logits = jax.vmap(jax.vmap(lambda f, p: cosine_logits(f, p, self.scale)))(
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


__all__ = ["PrototypeSegmenter", "cosine_logits", "fewshot_resnet18", "masked_average_pool",
           "prototypes"]
