"""Style transfer and domain adaptation building blocks (issue 26), each checked against its
authors' code:

* AdaIN (segjax.style.adain): `adain`, `adain_blend`, `feature_mean_std`, `AdaINDecoder`,
  `adain_content_loss`, `adain_style_loss`; its reflection-padded VGG-19 encoder `AdaINEncoder`
  (segjax.style.adain_encoder)
* Johnson et al.'s fast-style `TransformerNet` (segjax.style.transformer_net)
* FDA (segjax.style.fda): `fda`, `fda_entropy_loss`, `ensemble_probabilities`
* DACS: ClassMix (segjax.style.classmix: `select_classes`, `class_mask`, `classmix`,
  `classmix_batch`) and the pseudo-labels (segjax.style.pseudo_labels:
  `confident_pseudo_labels`, `mix_pixel_weights`, `ema_update`)
"""

from segjax.style.adain import (AdaINDecoder, adain, adain_blend, adain_content_loss, adain_style_loss,
                                feature_mean_std)
from segjax.style.adain_encoder import AdaINEncoder
from segjax.style.classmix import class_mask, classmix, classmix_batch, select_classes
from segjax.style.fda import ensemble_probabilities, fda, fda_entropy_loss
from segjax.style.pseudo_labels import confident_pseudo_labels, ema_update, mix_pixel_weights
from segjax.style.transformer_net import TransformerNet
