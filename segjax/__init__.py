"""segjax: image segmentation in JAX/Flax.

Subpackages: `segjax.ops` (explicit operators), `segjax.models` (architectures and the model
registry), `segjax.data` (TFDS builders and tf.data pipelines), `segjax.train` (steps, parallelism,
checkpoints, the training loop). Import the subpackage you need; `import segjax` alone is cheap
and does not import TensorFlow.
"""

__version__ = "0.1.0"
