"""TFDS builders defined by segjax.

The pipelines import a dataset's builder through its `DatasetInfo.builder_module`, so a new
dataset (segjax's or the user's) needs no line here; importing this package registers segjax's
builders with TFDS for code that calls `tfds.builder(name)` directly.
"""
from segjax.data.builders import coco_instances  # noqa: F401
from segjax.data.builders import gta5  # noqa: F401
from segjax.data.builders import msd  # noqa: F401
from segjax.data.builders import pascal_context  # noqa: F401
from segjax.data.builders import ph2  # noqa: F401
from segjax.data.builders import synthetic_lesions  # noqa: F401
from segjax.data.builders import synthetic_shapes  # noqa: F401
from segjax.data.builders import synthetic_volumes  # noqa: F401
from segjax.data.builders import voc2012_segmentation  # noqa: F401
