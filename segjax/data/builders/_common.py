"""What both segjax TFDS builders share."""
import os
import sys

from etils import epath
from tensorflow_datasets.core import utils as tfds_utils


class LocalCodePath:
    """Mixin: `code_path` is this module's file.

    TFDS 4.9.10 computes `code_path` through `importlib_resources.abc`, a package it does not
    install on Python >= 3.9, so preparing any builder defined outside TFDS fails with
    ModuleNotFoundError. The file path is all TFDS needs (it looks for `checksums.tsv` beside it).
    """

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The builder's source file."""
        return epath.Path(sys.modules[cls.__module__].__file__)


def manual_dir_of(dl_manager) -> str:
    """The builder's manual directory: TFDS's, or `<download_dir>/manual` when TFDS asserts that
    it does not exist or is empty (the builder then fails naming what is missing there)."""
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError:  # TFDS: the manual directory does not exist or is empty
        return os.fspath(dl_manager.download_dir / "manual")
