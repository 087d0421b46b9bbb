"""Style transfer and domain adaptation building blocks (issue 26)."""

from segjax.style.adain import (AdaINDecoder, adain, adain_blend, adain_content_loss, adain_style_loss,
                                feature_mean_std)
from segjax.style.transformer_net import TransformerNet
from segjax.style.fda import ensemble_probabilities, fda, fda_entropy_loss
