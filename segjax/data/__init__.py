"""Data: TFDS builders (registered on import), the dataset registry and tf.data pipelines.

Importing this package imports TensorFlow (CPU only, threads configured in `_tf`) and registers
the `voc2012_segmentation` and `synthetic_shapes` TFDS builders.
"""
from segjax.data._tf import tf  # noqa: F401  (first: configures TensorFlow)
from segjax.data import builders  # noqa: F401  (registers the TFDS builders)
from segjax.data.datasets import (DatasetInfo, available_datasets, get_dataset_info,
                                  register_dataset)
from segjax.data.pipeline import (IMAGE_MEAN, IMAGE_STD, eval_batches, fold_indices,
                                  num_examples, prepare, preprocess_image, train_batches)

__all__ = ["DatasetInfo", "available_datasets", "get_dataset_info", "register_dataset", "IMAGE_MEAN", "IMAGE_STD",
           "eval_batches", "fold_indices", "num_examples", "prepare", "preprocess_image",
           "train_batches"]
