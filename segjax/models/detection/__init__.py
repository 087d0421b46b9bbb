"""The detection wing, split as detectron2's `modeling/`: each part a reusable module or pure function
that the instance models (Mask R-CNN; TensorMask, PANet) compose.

* `fpn` — the feature pyramid (torchvision's FeaturePyramidNetwork + LastLevelMaxPool).
* `backbone` — ResNet + FPN (`resnet_fpn`, `pyramid`), input padding, torchvision's stage freezing.
* `anchors` — torchvision's AnchorGenerator (cell anchors, grid anchors), as constants.
* `matching` — the Matcher, the balanced sampler and the per-image sampling keys.
* `rpn` — the proposal generator: RPN head, static-shaped proposal filtering, anchor labelling and
  sampling.
* `poolers` — FPN level assignment + the gathered ROI Align operator (`segjax.ops.roi_align`).
* `roi_heads` — proposal labelling and ROI sampling, box head and predictor, detection
  post-processing.
* `mask_head` — mask head and predictor, mask targets, the (chunked) mask loss, mask inference.
* the training losses (per-image (sum, count) pairs, their global normalisation) are
  `segjax.losses.detection`.
* `instances` — the instance models' output keys and ground-truth target contract.
* `maskrcnn` — the Mask R-CNN meta-architecture and its registered variants.
* `panet` — PANet: Mask R-CNN with a bottom-up path, adaptive feature pooling and the fused mask
  branch (a `MaskRCNN` subclass).
"""
