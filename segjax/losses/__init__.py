"""Losses, every one a `(sum, count)` pair so that sharded and partial batches normalise globally.

- `pixel`: per-pixel classification losses (cross-entropy, focal, Dice, Lovász-softmax, OHEM),
  registered in `LOSSES` under the names `config.loss.kind` selects.
- `metric_learning`: losses on embeddings (triplet, contrastive, discriminative).
- `detection`: the detectors' losses (RPN objectness and boxes, Fast R-CNN classification and
  boxes, mask BCE) as per-image (sum, count) pairs, and their global normalisation; the
  detection wing (`segjax.models.detection`) computes its targets and calls them.
- `dice`: V-Net's (squared) and the plain soft Dice per volume, registered as "vnet_dice", and the
  per-class sums (`dice_statistics`) for a Dice over the whole global batch.
- `presence`: image-level class presence and EncNet's SE-loss (`se_loss`), applied by the
  semantic task on a model's "se_logits".
- `registry`: `register("name")` adds a per-pixel loss to `LOSSES` from anywhere; `gathers(name)`
  says whether it ranks pixels over the whole batch.
"""

from segjax.losses.registry import LOSSES, Pair, gathers, register
from segjax.losses.pixel import (cross_entropy, dice_loss, focal_loss, lovasz_softmax,
                                 ohem_cross_entropy, valid_pixels)
from segjax.losses.dice import dice_from_statistics, dice_statistics, vnet_dice_loss
from segjax.losses.presence import class_presence, se_loss
from segjax.losses.metric_learning import (contrastive_loss, discriminative_loss,
                                           pair_contrastive_loss, triplet_loss)

__all__ = ["LOSSES", "Pair", "class_presence", "contrastive_loss", "cross_entropy", "dice_from_statistics",
           "dice_loss", "dice_statistics", "discriminative_loss", "focal_loss", "gathers", "lovasz_softmax",
           "ohem_cross_entropy", "pair_contrastive_loss", "register", "se_loss", "triplet_loss",
           "valid_pixels", "vnet_dice_loss"]
