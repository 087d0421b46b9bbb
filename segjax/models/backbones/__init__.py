"""Backbones: modules mapping images [N, H, W, 3] to a dict of named feature maps.

Each backbone also exposes `feature_strides` (name -> stride w.r.t. the input) so decoders can
pick features by name and stride.
"""
