"""VGGFeatures against torchvision's vgg19 / vgg16 `features` (copied random weights): every named
layer's values and the input gradient; conversion, weight files, lazy depth, clear failures."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from segjax.models.torchvision_import import convert, model_config
from segjax.style import VGGFeatures, layer_names, load_vgg_weights, vgg_features_variables_from_torch
from tests.style.torch_vgg import named_activations, nchw, nhwc, prepare, state_dict, torch_vgg


def _check_layers_and_gradient(features, variables, depth, x, rng, *, width=64, pooling="max"):
    """Every layer of VGGFeatures equals torch's; d(Σ_l <r_l, f_l>)/dx equals torch's."""
    names = tuple(layer_names(depth))
    model = VGGFeatures(depth=depth, layers=names, width=width, pooling=pooling)
    shapes = jax.eval_shape(model.apply, variables, jnp.asarray(x))
    probes = {n: rng.standard_normal(shapes[n].shape).astype(np.float32) for n in names}

    def probe(x, variables, probes):  # weights as arguments: folding them as constants doubles compile time
        f = model.apply(variables, x)
        return sum(jnp.vdot(f[n], probes[n]) for n in names), f

    (_, out), grad = jax.jit(jax.value_and_grad(probe, has_aux=True))(jnp.asarray(x), variables, probes)
    xt = nchw(x).requires_grad_(True)
    ref = named_activations(features, xt)
    assert set(out) == set(ref) == set(names)
    for n in names:
        want = nhwc(ref[n])
        np.testing.assert_allclose(np.asarray(out[n]), want, atol=2e-5 * np.abs(want).max() + 1e-7, err_msg=n)
    sum(torch.sum(ref[n] * nchw(probes[n])) for n in names).backward()
    want = nhwc(xt.grad)
    np.testing.assert_allclose(np.asarray(grad), want, atol=2e-5 * np.abs(want).max())


def test_vgg19_matches_torchvision_vgg19_at_every_layer(np_rng):
    """The real layout and width: torchvision.models.vgg19(weights=None) through `convert`."""
    torch.manual_seed(0)
    tv = torchvision.models.vgg19(weights=None)
    variables = convert("vgg19", {k: v.detach().numpy() for k, v in tv.state_dict().items()})
    x = np_rng.uniform(size=(1, 34, 35, 3)).astype(np.float32)  # odd sizes: floor-mode pools
    _check_layers_and_gradient(prepare(tv.features), variables, 19, x, np_rng)


def test_tiny_vgg16_with_average_pooling_matches_torchvision_layout(np_rng):
    """Width 8 of torchvision's own `make_layers` (configuration D); average pooling =
    nn.AvgPool2d(2, 2). (VGG-16 with max pooling is checked through the perceptual loss.)"""
    features = torch_vgg(16, 8, pooling="avg", seed=16)
    variables = vgg_features_variables_from_torch(state_dict(features), depth=16)
    x = np_rng.uniform(size=(2, 33, 40, 3)).astype(np.float32)
    _check_layers_and_gradient(features, variables, 16, x, np_rng, width=8, pooling="avg")


def test_random_init_is_torchvisions():
    """Kaiming normal with fan-out and zero bias, as torchvision's VGG.__init__: the empirical
    std of a 64->64 kernel matches torchvision vgg19's conv1_2 and sqrt(2 / (9 * 64)) (a
    fan-in or lecun init would shrink deep activations)."""
    with jax.threefry_partitionable(False):
        params = jax.jit(VGGFeatures(depth=19, layers=("conv1_2",)).init)(
            jax.random.key(0), jnp.zeros((1, 2, 2, 3)))["params"]["conv1_2"]
    torch.manual_seed(0)
    theirs = torch.empty(64, 64, 3, 3)
    torch.nn.init.kaiming_normal_(theirs, mode="fan_out", nonlinearity="relu")
    expected = np.sqrt(2 / (9 * 64))
    assert abs(float(jnp.std(params["kernel"])) / expected - 1) < 0.02
    assert abs(float(theirs.std()) / expected - 1) < 0.02
    assert abs(float(jnp.mean(params["kernel"]))) < 0.01 * expected and not np.any(params["bias"])


def test_only_layers_up_to_the_deepest_requested_are_built():
    shapes = jax.eval_shape(VGGFeatures(depth=19, layers=("relu2_1", "conv1_2"), width=4).init,
                            jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    assert sorted(shapes["params"]) == ["conv1_1", "conv1_2", "conv2_1"]
    out = jax.eval_shape(VGGFeatures(depth=19, layers=("pool5", "relu3_4"), width=4).init_with_output,
                         jax.random.key(0), jnp.zeros((1, 37, 64, 3)))[0]
    assert {k: v.shape for k, v in out.items()} == {"pool5": (1, 1, 2, 32), "relu3_4": (1, 9, 16, 16)}


@settings(max_examples=12)
@given(h=st.integers(1, 40), w=st.integers(1, 40), layer=st.sampled_from(layer_names(19)))
def test_any_image_size_either_works_or_is_refused_by_name(h, w, layer):
    model = VGGFeatures(depth=19, layers=(layer,), width=1)
    stage = int(layer[4] if layer.startswith("pool") else layer[-3])
    need = 2 ** (stage if layer.startswith("pool") else stage - 1)
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    if min(h, w) < need:
        with pytest.raises(ValueError, match=f"{layer} needs images of at least {need}x{need}"):
            jax.eval_shape(model.init, jax.random.key(0), x)
    else:
        out = jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0][layer]
        assert out.shape[1:3] == (h // need, w // need)


@pytest.mark.parametrize("kwargs, words", [
    (dict(layers=("relu5_4",), depth=16), "unknown VGG-16 layer(s) ['relu5_4']"),
    (dict(layers=("relu9_1",)), "relu9_1"),
    (dict(layers="relu1_1"), "non-empty sequence"),
    (dict(pooling="min"), "pooling"),
    (dict(width=0), "width"),
    (dict(depth=11), "depth must be one of [16, 19]"),
])
def test_bad_arguments_are_named(kwargs, words):
    with pytest.raises(ValueError) as e:
        jax.eval_shape(VGGFeatures(**kwargs).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert words in str(e.value)


def test_convert_refuses_other_vggs_and_describes_vgg19():
    vgg16 = state_dict(torch_vgg(16, 4))
    with pytest.raises(ValueError, match="unexpected keys"):  # VGG-16's indices differ from 19's
        convert("vgg19", vgg16)
    bn = {"features.1.running_mean": np.zeros(4, np.float32), **state_dict(torch_vgg(19, 4))}
    with pytest.raises(ValueError, match="features.1.running_mean"):
        convert("vgg19", bn)
    assert model_config("vgg19", {}) == {"model": "vgg19", "backbone_only": True, "depth": 19}


@pytest.fixture(scope="module")
def tiny_vgg19_variables():
    return vgg_features_variables_from_torch(state_dict(torch_vgg(19, 4, seed=3)), depth=19)


def test_weight_files_load_in_every_format(tmp_path, tiny_vgg19_variables):
    """An .npz, a flax .msgpack and a convert_torchvision --workdir (the command, run here) all
    load to the converted arrays; the width is read from the file."""
    from tests.command_runner import run_command

    flat = flax.traverse_util.flatten_dict(tiny_vgg19_variables, sep="/")
    np.savez(tmp_path / "w.npz", **flat)
    (tmp_path / "w.msgpack").write_bytes(flax.serialization.msgpack_serialize(tiny_vgg19_variables["params"]))
    features = torch_vgg(19, 4, seed=3)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "w.pth")
    code, _, err = run_command("segjax.tools.convert_torchvision",
                               ["--model=vgg19", f"--weights={tmp_path / 'w.pth'}", f"--workdir={tmp_path / 'conv'}"])
    assert code == 0, err
    for path in ("w.npz", "w.msgpack", "conv"):
        variables, width = load_vgg_weights(str(tmp_path / path), depth=19)
        assert width == 4
        for name, leaves in tiny_vgg19_variables["params"].items():
            for leaf, value in leaves.items():
                np.testing.assert_array_equal(variables["params"][name][leaf], value, err_msg=f"{path} {name}")


def test_weight_files_that_do_not_fit_are_refused_by_name(tmp_path, tiny_vgg19_variables):
    params = dict(tiny_vgg19_variables["params"])
    np.savez(tmp_path / "vgg16.npz", **flax.traverse_util.flatten_dict(
        {k: v for k, v in params.items() if k not in ("conv3_4", "conv4_4", "conv5_4")}, sep="/"))
    with pytest.raises(ValueError, match="conv3_4/kernel missing"):
        load_vgg_weights(str(tmp_path / "vgg16.npz"), depth=19)
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="w.txt: expected a convert_torchvision"):
        load_vgg_weights(str(tmp_path / "w.txt"))
    with pytest.raises(FileNotFoundError, match="absent.npz does not exist"):
        load_vgg_weights(str(tmp_path / "absent.npz"))
    assert not os.path.exists(tmp_path / "absent.npz")


@settings(max_examples=10)
@given(data=st.binary(max_size=64), suffix=st.sampled_from([".npz", ".msgpack"]))
def test_corrupt_weight_files_are_refused_by_name(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("corrupt") / f"w{suffix}"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"weights {path}"):
        load_vgg_weights(str(path))
