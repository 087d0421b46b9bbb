"""Fixtures for the data tests: a small synthetic_shapes dataset built once per test module."""
import dataclasses

import pytest


@pytest.fixture(scope="module")
def shapes_info():
    """A DatasetInfo for a 40x40, 24 train / 10 validation synthetic_shapes config."""
    from segjax.data import get_dataset_info
    from segjax.data.builders.synthetic_shapes import SyntheticShapesConfig

    config = SyntheticShapesConfig(name="test40", image_size=40, num_train=24,
                                   num_validation=10, max_objects=3)
    return dataclasses.replace(get_dataset_info("synthetic_shapes"),
                               name="synthetic_shapes/test40",
                               builder_kwargs={"config": config})


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory, shapes_info):
    """data_dir holding the prepared `shapes_info` dataset."""
    import tensorflow_datasets as tfds

    from segjax.data import prepare

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.disable_progress_bar()
    prepare(shapes_info, data_dir)
    return data_dir
