"""Keys of the dict every segjax model returns (shared constants, as in deeplab2)."""

LOGITS = "logits"  # [N, H, W, num_classes] float32, at the input resolution.
AUX_LOGITS = "aux_logits"  # same shape, from an auxiliary head (FCN/DeepLab aux, PSPNet).
EMBEDDINGS = "embeddings"  # [N, H, W, D] float32 per-pixel instance embeddings (embedding models).
