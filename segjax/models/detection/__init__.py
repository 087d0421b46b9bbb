"""The parts of the two-stage detector (Mask R-CNN), each a reusable module or pure function.

* `anchors` — torchvision's AnchorGenerator (cell anchors, grid anchors), as constants.
* `rpn` — the RPN head and static-shaped proposal filtering.
* `poolers` — multi-scale ROI Align with the FPN level mapper.
* `roi_heads` — box head, predictor, detection post-processing, mask head.
* `targets` — training targets: Matcher, anchor / proposal / mask targets, balanced sampling.
* `losses` — the training losses as per-image (sum, count) pairs and their global normalisation.
"""
