"""Segmentation architectures: `create_model(name, num_classes=..., **overrides)`.

Backbones (`segjax.models.backbones`) return dicts of named feature maps; heads and decoders
(`segjax.models.heads`) consume them; each model file wires one architecture family and registers
its variants in `segjax.models.registry`.
"""

from segjax.models.outputs import AUX_LOGITS, LOGITS
from segjax.models.registry import available_models, create_model, register

__all__ = ["AUX_LOGITS", "LOGITS", "available_models", "create_model", "register"]
