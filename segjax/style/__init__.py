"""Style transfer and domain adaptation: VGG features, Gram/perceptual losses, Gatys (and, from
their own modules, fast style, AdaIN, FDA).

Images are NHWC RGB in [0, 1]; `VGGFeatures` applies the ImageNet normalisation itself.

Example:
  >>> vgg = vgg19(layers=("relu1_1", "relu4_2"))
  >>> variables = vgg.init(jax.random.key(0), images)      # or load_vgg_weights(path)
  >>> grams = {k: gram_matrix(f) for k, f in vgg.apply(variables, images).items()}
"""

from segjax.style.gatys import GatysResult, gatys, gatys_objective
from segjax.style.losses import (
    JOHNSON_CONTENT_LAYER,
    JOHNSON_CONTENT_WEIGHT,
    JOHNSON_LAYERS,
    JOHNSON_STYLE_LAYERS,
    JOHNSON_STYLE_WEIGHT,
    content_loss,
    gram_matrix,
    perceptual_loss,
    style_loss,
    total_variation_loss,
)
from segjax.style.vgg import (
    GATYS_CONTENT_LAYER,
    GATYS_STYLE_LAYERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGGFeatures,
    imagenet_normalize,
    layer_names,
    load_vgg_weights,
    vgg19,
    vgg_features_variables_from_torch,
)

__all__ = [
    "GATYS_CONTENT_LAYER",
    "GATYS_STYLE_LAYERS",
    "GatysResult",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "JOHNSON_CONTENT_LAYER",
    "JOHNSON_CONTENT_WEIGHT",
    "JOHNSON_LAYERS",
    "JOHNSON_STYLE_LAYERS",
    "JOHNSON_STYLE_WEIGHT",
    "VGGFeatures",
    "content_loss",
    "gatys",
    "gatys_objective",
    "gram_matrix",
    "imagenet_normalize",
    "layer_names",
    "load_vgg_weights",
    "perceptual_loss",
    "style_loss",
    "total_variation_loss",
    "vgg19",
    "vgg_features_variables_from_torch",
]
