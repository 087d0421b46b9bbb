"""Keys of the dict every segjax model returns (shared constants, as in deeplab2)."""

LOGITS = "logits"  # [N, H, W, num_classes] float32, at the input resolution.
AUX_LOGITS = "aux_logits"  # same shape, from an auxiliary head (FCN/DeepLab aux, PSPNet); or a tuple
# of such maps, one per auxiliary head (ICNet's two label-guidance heads), each trained with the weight.
EMBEDDINGS = "embeddings"  # [N, H, W, D] float32 per-pixel instance embeddings (embedding models).
PIXEL_INDEX = "pixel_index"  # [N, S] int32 flat positions y * W + x: "logits" is then [N, S, K], the
# scores of those pixels only (PixelNet's sparse training); the task reads the labels there.
SE_LOGITS = "se_logits"  # [N, num_classes] float32: logits of "class k is present in the image"
# (EncNet's SE-loss head); the semantic task adds `loss.se_weight` times their BCE.
