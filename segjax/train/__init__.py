"""Training: state, optimiser, pure steps, data parallelism, checkpoints and the loop.

Import the module you need (`segjax.train.steps`, `segjax.train.parallel`, ...); this package
imports nothing heavy by itself.
"""
