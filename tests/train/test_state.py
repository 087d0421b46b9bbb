"""segjax.train.state: TrainState creation from a model."""

import jax
import numpy as np
import optax
import pytest

from segjax.train.state import TrainState, create_train_state, init_variables
from tests.train.tiny import TinySegNet


def test_create_train_state_holds_params_stats_and_apply():
    model = TinySegNet(num_classes=3, features=4)
    state = create_train_state(model, jax.random.key(0), (1, 7, 9, 3), optax.sgd(0.1))
    assert isinstance(state, TrainState) and int(state.step) == 0
    assert state.params["backbone"]["conv"]["kernel"].shape == (3, 3, 3, 4)
    assert state.params["head"]["kernel"].shape == (1, 1, 4, 3)
    np.testing.assert_array_equal(state.batch_stats["backbone"]["bn"]["mean"], np.zeros(4))
    np.testing.assert_array_equal(state.batch_stats["backbone"]["bn"]["var"], np.ones(4))
    assert state.apply_fn.__self__ is model  # model.apply, bound: parallel.py re-binds axis_name
    other = create_train_state(model, jax.random.key(1), (1, 7, 9, 3), optax.sgd(0.1))
    assert not np.allclose(other.params["head"]["kernel"], state.params["head"]["kernel"])


def test_given_variables_are_used_and_bad_shape_raises():
    model = TinySegNet(num_classes=3, features=4)
    variables = init_variables(model, jax.random.key(3), (1, 5, 5, 3))
    variables["params"]["head"]["bias"] = np.full(3, 7.0, np.float32)
    state = create_train_state(model, None, (1, 5, 5, 3), optax.sgd(0.1), variables=variables)
    np.testing.assert_array_equal(state.params["head"]["bias"], np.full(3, 7.0))
    with pytest.raises(ValueError, match="input_shape"):
        init_variables(model, jax.random.key(0), (5, 5, 3))
