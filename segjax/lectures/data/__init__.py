"""The numbers behind the lecture figures, each computed with segjax's own operators and models.

One function per figure, one module per figure or topic (`operators`: figures 1-4, `dilation`: 5,
`roi_align`: 7, `difficulty`: 8, `metric_learning`: 9, `tensormask`: 10, `patches`: 11,
`spatial3d`: 12, `adaptation`: 13; `_common`: the decks' example); each returns a dict whose
values are numpy arrays, numbers, strings or nested lists/dicts of them (`to_json` turns one
into what `numbers.json` stores). Nothing here draws: `segjax.lectures.draw` (and `draw3d`,
`draw_adaptation`) turn these dicts into PNGs. The functions take no flags, so the tests call
them directly.

  1 `convolution`            conv2d, conv_as_matrix, conv_transpose2d on the decks' 4x4 example
  2 `interpolation`          resize: nearest / linear / cubic in 1-D and 2-D
  3 `unpooling`              nearest_unpool, bed_of_nails_unpool, max_pool_with_argmax + max_unpool
  4 `fractionally_strided`   conv_transpose2d at stride 2 = zeros inserted + an ordinary conv
  5 `dilation`               receptive fields from gradients of atrous_conv2d stacks, and
                             `deeplab_heads`: the heads of the registered DeepLab models
  6 `fcn_skips`              (segjax.lectures.fcn_demo) FCN-32s/16s/8s trained briefly
  7 `roi_align_sampling`     roi_align's bilinear sampling points, re-derived and checked
  8 `difficulty`             one synthetic_shapes image per difficulty factor
  9 `metric_learning`        triplet_loss geometry and a class-imbalance decision boundary
 10 `tensormask`             a trained TensorMask's window masks, bipyramid, natural vs aligned
                             (`tensormask_windows` on any model and image)
 11 `patch_vs_fcn`           the patch classifier by sliding window vs its FCN twin: reads, time, FLOPs
 12 `deep3d`                 a synthetic_volumes volume's orthogonal slices through its lesions and a
                             synthetic_parts point cloud, each with a trained run's prediction if given
 13 `style_adaptation`       experiments.style runs' results, FDA's amplitude swap at three betas, and a
                             domain_adaptation study's seed-0 predictions on each target domain
"""

from segjax.lectures.data._common import (DECK_INPUT, DECK_KERNEL, DECK_OUTPUT_GRADIENT,
                                          shapes_config, to_json)
from segjax.lectures.data.adaptation import STYLE_METHODS, style_adaptation, style_command
from segjax.lectures.data.spatial3d import deep3d
from segjax.lectures.data.difficulty import difficulty
from segjax.lectures.data.dilation import (DEEPLAB_MODELS, RF_LAYERS, RF_RATES, conv_layers,
                                           deeplab_heads, dilation, extent, receptive_field)
from segjax.lectures.data.metric_learning import has_triplet_loss, metric_learning
from segjax.lectures.data.operators import (INTERPOLATION_IMAGE, INTERPOLATION_SAMPLES,
                                            STRIDED_INPUT, UNPOOL_INPUT, convolution,
                                            fractionally_strided, interpolation,
                                            sample_positions, unpooling)
from segjax.lectures.data.patches import patch_vs_fcn
from segjax.lectures.data.roi_align import (ROI_BOX, bilinear_at, roi_align_sampling,
                                            roi_sampling_points)
from segjax.lectures.data.tensormask import tensormask, tensormask_windows

__all__ = ["DECK_INPUT", "DECK_KERNEL", "DECK_OUTPUT_GRADIENT", "DEEPLAB_MODELS",
           "INTERPOLATION_IMAGE", "INTERPOLATION_SAMPLES", "RF_LAYERS", "RF_RATES", "ROI_BOX",
           "STRIDED_INPUT", "STYLE_METHODS", "UNPOOL_INPUT", "bilinear_at", "conv_layers",
           "convolution", "deep3d", "deeplab_heads", "difficulty", "dilation", "extent",
           "fractionally_strided", "has_triplet_loss", "interpolation", "metric_learning",
           "patch_vs_fcn", "receptive_field", "roi_align_sampling", "roi_sampling_points",
           "sample_positions", "style_adaptation", "style_command", "tensormask",
           "tensormask_windows", "to_json", "unpooling", "shapes_config"]
