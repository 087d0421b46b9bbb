"""Style transfer and domain adaptation (issue 26), each piece checked against its authors' code.

* VGG features and the losses: `VGGFeatures`, `vgg19` (segjax.style.vgg; ImageNet normalisation
  inside, images NHWC RGB in [0, 1]); `gram_matrix`, `content_loss`, `style_loss`,
  `total_variation_loss`, `perceptual_loss` (segjax.style.losses); Gatys et al.'s L-BFGS
  optimisation `gatys` (segjax.style.gatys).
* AdaIN (segjax.style.adain): `adain`, `adain_blend`, `feature_mean_std`, `AdaINDecoder`,
  `adain_content_loss`, `adain_style_loss`; its reflection-padded VGG-19 encoder `AdaINEncoder`
  (segjax.style.adain_encoder).
* Johnson et al.'s fast-style `TransformerNet` (segjax.style.transformer_net).
* FDA (segjax.style.fda): `fda`, `fda_entropy_loss`, `ensemble_probabilities`.
* DACS: ClassMix (segjax.style.classmix: `select_classes`, `class_mask`, `classmix`,
  `classmix_batch`), the pseudo-labels (segjax.style.pseudo_labels:
  `confident_pseudo_labels`, `mix_pixel_weights`, `ema_update`) and the strong augmentation of
  the mixed images (segjax.style.dacs_augment: `draw_strong_params`, `strong_augment`,
  `color_jitter`, `gaussian_blur`, `rgb_to_hsv`, `hsv_to_rgb`).
* Style randomisation with AdaIN (segjax.style.style_randomization: `pixel_adain`,
  `AdaINStyliser`, `load_adain_styliser`, `draw_alphas`).

Example:
  >>> vgg = vgg19(layers=("relu1_1", "relu4_2"))
  >>> variables = vgg.init(jax.random.key(0), images)      # or load_vgg_weights(path)
  >>> grams = {k: gram_matrix(f) for k, f in vgg.apply(variables, images).items()}
"""

from segjax.style.adain import (AdaINDecoder, adain, adain_blend, adain_content_loss,
                                adain_style_loss, feature_mean_std)
from segjax.style.adain_encoder import AdaINEncoder
from segjax.style.classmix import class_mask, classmix, classmix_batch, select_classes
from segjax.style.dacs_augment import (color_jitter, draw_strong_params, gaussian_blur, hsv_to_rgb,
                                       rgb_to_hsv, strong_augment)
from segjax.style.fda import ensemble_probabilities, fda, fda_entropy_loss
from segjax.style.gatys import GatysResult, gatys, gatys_objective
from segjax.style.losses import (JOHNSON_CONTENT_LAYER, JOHNSON_CONTENT_WEIGHT, JOHNSON_LAYERS,
                                 JOHNSON_STYLE_LAYERS, JOHNSON_STYLE_WEIGHT, content_loss,
                                 gram_matrix, perceptual_loss, style_loss, total_variation_loss)
from segjax.style.pseudo_labels import confident_pseudo_labels, ema_update, mix_pixel_weights
from segjax.style.style_randomization import (AdaINStyliser, draw_alphas, load_adain_styliser,
                                              pixel_adain)
from segjax.style.transformer_net import TransformerNet
from segjax.style.vgg import (GATYS_CONTENT_LAYER, GATYS_STYLE_LAYERS, IMAGENET_MEAN, IMAGENET_STD,
                              VGGFeatures, imagenet_normalize, layer_names, load_vgg_weights,
                              vgg19, vgg_features_variables_from_torch)

__all__ = [
    "AdaINDecoder", "AdaINEncoder", "AdaINStyliser", "GATYS_CONTENT_LAYER", "GATYS_STYLE_LAYERS",
    "GatysResult", "IMAGENET_MEAN", "IMAGENET_STD", "JOHNSON_CONTENT_LAYER",
    "JOHNSON_CONTENT_WEIGHT", "JOHNSON_LAYERS", "JOHNSON_STYLE_LAYERS", "JOHNSON_STYLE_WEIGHT",
    "TransformerNet", "VGGFeatures", "adain", "adain_blend", "adain_content_loss",
    "adain_style_loss", "class_mask", "classmix", "classmix_batch", "color_jitter",
    "confident_pseudo_labels", "content_loss", "draw_alphas", "draw_strong_params", "ema_update",
    "ensemble_probabilities", "fda", "fda_entropy_loss", "feature_mean_std", "gatys",
    "gatys_objective", "gaussian_blur", "gram_matrix", "hsv_to_rgb", "imagenet_normalize",
    "layer_names", "load_adain_styliser", "load_vgg_weights", "mix_pixel_weights",
    "perceptual_loss", "pixel_adain", "rgb_to_hsv", "select_classes", "strong_augment",
    "style_loss", "total_variation_loss", "vgg19", "vgg_features_variables_from_torch",
]
