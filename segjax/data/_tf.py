"""The one place segjax imports TensorFlow: hide GPUs from it and fix its thread pools.

TensorFlow only feeds the input pipeline; JAX owns the accelerators. Thread counts can only be
set before TensorFlow runs its first op (setting them later raises), so every module of
`segjax.data` imports `tf` from here. `SEGJAX_TF_THREADS` overrides the thread count
(default: all CPUs visible to this process).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def _configure() -> None:
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices (e.g. by another library).
        pass
    threads = int(os.environ.get("SEGJAX_TF_THREADS", "0")) or len(os.sched_getaffinity(0))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass


_configure()

__all__ = ["tf"]
