"""The one place segjax imports TensorFlow: hide GPUs from it and fix its thread pools.

TensorFlow only feeds the input pipeline; JAX owns the accelerators. Thread counts can only be
set before TensorFlow runs its first op (setting them later raises), so every module of
`segjax.data` imports `tf` from here. `SEGJAX_TF_THREADS` overrides the thread count
(default: all CPUs visible to this process).
"""
import contextlib
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _quiet_stderr():
    """Sends the C++ stderr (fd 2) to /dev/null: TensorFlow's import prints lines that no
    TF_CPP_MIN_LOG_LEVEL reaches (absl's pre-InitializeLog banner, the oneDNN notice) on every
    command's first screen. Python errors are unaffected (they are raised, then printed)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (e.g. an embedded interpreter)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_QUIET = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") >= "2"  # the user did not ask for TF's logs

with _quiet_stderr() if _QUIET else contextlib.nullcontext():
    import tensorflow as tf
    import tensorflow_datasets  # noqa: F401  (loads the rest of TF's libraries, quietly too)


def _drop_tfds_deprecation(record: logging.LogRecord) -> bool:
    """TFDS warns that its own feature code reads `FeatureConnector.dtype`: nothing a user of
    segjax can act on."""
    return "FeatureConnector.dtype` is deprecated" not in record.getMessage()


logging.getLogger("absl").addFilter(_drop_tfds_deprecation)


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


with _quiet_stderr() if _QUIET else contextlib.nullcontext():
    _configure()

__all__ = ["tf"]
