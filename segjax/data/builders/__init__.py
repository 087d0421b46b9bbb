"""TFDS builders defined by segjax; importing this module registers them with TFDS."""
from segjax.data.builders import coco_instances  # noqa: F401
from segjax.data.builders import synthetic_shapes  # noqa: F401
from segjax.data.builders import voc2012_segmentation  # noqa: F401
