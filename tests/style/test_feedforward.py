"""`python -m experiments.style --method=fast|adain`: training wiring and the command end to end.

The losses themselves are checked against torch in test_losses.py / test_adain.py; here the wiring:
Adam's first update (Kingma & Ba 2015, Sec. 2.1: with bias correction every parameter moves by
lr * g / (|g| + eps), i.e. by lr, at step 1), the loss falling over 3 steps on one batch, the
step's reported losses being the objective's, a saved network giving identical outputs when
loaded, the files and strict JSON, and clean failures. Everything is tiny (a width-2 network, a
width-4 VGG, 16 px crops, batch 2) and every test reuses the train steps the two command runs
compile (`fast_train_step` / `adain_train_step` are cached per configuration).
"""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from segjax.style import feedforward as ff
from segjax.style.adain import AdaINDecoder, adain, adain_content_loss, adain_style_loss
from segjax.style.adain_encoder import AdaINEncoder
from segjax.style.losses import JOHNSON_LAYERS, perceptual_loss
from segjax.style.transformer_net import TransformerNet
from segjax.style.vgg import VGGFeatures, imagenet_normalize, vgg_features_variables_from_torch
from tests.command_runner import run_command
from tests.style.torch_vgg import state_dict, torch_vgg

SIZE, BATCH, NET_WIDTH, VGG_WIDTH = 16, 2, 2, 4
FAST_NET = TransformerNet(width=NET_WIDTH)
FAST_VGG = VGGFeatures(depth=16, layers=JOHNSON_LAYERS, width=VGG_WIDTH)
ENCODER = AdaINEncoder(width=VGG_WIDTH, preprocess=False)
DECODER = AdaINDecoder(width=NET_WIDTH)


def _strict(text):
    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _random_variables(module, rng, *args):
    """Variables of `module` with `init`'s tree and shapes (no init compile), N(0, 0.3) values."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(scale=0.3, size=s.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 3-step training run per method with tiny VGGs as .npz (what --weights takes)."""
    root = tmp_path_factory.mktemp("feedforward")
    dirs = {}
    for method, depth in (("fast", 16), ("adain", 19)):
        weights = root / f"vgg{depth}_w{VGG_WIDTH}.npz"
        variables = vgg_features_variables_from_torch(state_dict(torch_vgg(depth, VGG_WIDTH, seed=1)), depth=depth)
        np.savez(weights, **flax.traverse_util.flatten_dict(variables, sep="/"))
        dirs[method] = root / method
        code, out, err = run_command("experiments.style", [
            f"--method={method}", "--content=astronaut", "--style=gravel", f"--workdir={dirs[method]}",
            f"--size={SIZE}", "--steps=3", f"--batch_size={BATCH}", f"--net_width={NET_WIDTH}",
            f"--weights={weights}"])
        assert code == 0, err
        assert "step    3" in out and "random" not in out
        dirs[method + "_weights"] = weights
    return dirs


@pytest.mark.parametrize("method, model_file", [("fast", "transformer_net.msgpack"), ("adain", "decoder.msgpack")])
def test_command_writes_files_and_strict_json(runs, method, model_file):
    workdir = runs[method]
    assert sorted(os.listdir(workdir)) == sorted(["content.png", "style.png", "result.png", "panel.png",
                                                  "metrics.jsonl", "run.json", model_file])
    assert Image.open(workdir / "result.png").size == Image.open(workdir / "content.png").size == (SIZE, SIZE)
    lines = [_strict(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert line["loss"] == pytest.approx(line["content"] + line["style"], rel=1e-5)
    summary = _strict((workdir / "run.json").read_text())
    assert summary["final"] == lines[-1] and summary["steps"] == 3 and summary["net_width"] == NET_WIDTH
    assert summary["batch_size"] == BATCH


@pytest.mark.parametrize("method, flag", [("fast", "--model"), ("adain", "--decoder")])
def test_saved_network_applies_identically_without_training(runs, tmp_path, method, flag):
    workdir = tmp_path / "applied"
    code, out, err = run_command("experiments.style", [
        f"--method={method}", "--content=astronaut", "--style=gravel", f"--workdir={workdir}",
        f"--size={SIZE}", f"{flag}={runs[method]}", f"--weights={runs[method + '_weights']}"])
    assert code == 0, err
    assert "no training" in out and "step" not in out
    assert (workdir / "metrics.jsonl").read_text() == ""
    np.testing.assert_array_equal(np.asarray(Image.open(workdir / "result.png")),
                                  np.asarray(Image.open(runs[method] / "result.png")))


def _check_first_adam_update_and_descent(step, opt, variables, batch_args, lr, moving):
    """Step 1 moves every parameter with a gradient by lr (Adam, bias-corrected: lr g / (|g| + 1e-8));
    at least `moving` of them have one. The loss of the same batch falls over 3 steps. Returns
    the first step's losses."""
    state = opt.init(variables)
    new, state, first = step(variables, state, *batch_args)
    moved = np.concatenate([np.abs(np.ravel(a - b)) for a, b in
                            zip(jax.tree.leaves(new), jax.tree.leaves(variables))])
    assert moved.max() <= lr * (1 + 1e-3)  # float32 rounding of param - update
    assert np.mean(moved > 0) >= moving, np.mean(moved > 0)
    assert np.mean(np.isclose(moved[moved > 0], lr, rtol=1e-2)) > 0.99, np.quantile(moved / lr, [0.01, 0.05, 0.5])
    losses = [float(first["total"])]
    for _ in range(2):
        new, state, now = step(new, state, *batch_args)
        losses.append(float(now["total"]))
    assert losses[2] < losses[1] < losses[0], losses
    return first


def test_fast_step_is_adam_on_the_perceptual_loss(runs, np_rng):
    # The conv biases before an instance norm have no gradient (the norm removes them): ~24% of
    # this tiny network's parameters.
    opt, step = ff.fast_train_step(FAST_NET, FAST_VGG)  # the command's, already compiled
    batch = jnp.asarray(np_rng.uniform(size=(BATCH, SIZE, SIZE, 3)), jnp.float32)
    net_variables = _random_variables(FAST_NET, np_rng, batch[:1])
    # All of VGG-16's convs, as load_vgg_weights gives the command: the same tree, the same compile.
    vgg_variables = _random_variables(VGGFeatures(depth=16, layers=("relu5_3",), width=VGG_WIDTH), np_rng,
                                      batch[:1])
    f = np.abs(np_rng.normal(size=(1, 64, 8 * VGG_WIDTH))).astype(np.float32)  # ReLU-like style features
    grams = {name: jnp.asarray(f[:, :, :c].transpose(0, 2, 1) @ f[:, :, :c] / (64 * c))
             for name, c in zip(JOHNSON_LAYERS, VGG_WIDTH * np.array([1, 2, 4, 8]))}
    first = _check_first_adam_update_and_descent(step, opt, net_variables, (vgg_variables, grams, batch),
                                                 ff.FAST_LR, moving=0.7)
    # The reported losses are Johnson's objective on that batch before the update, written here
    # from the torch-checked pieces: the net on [0, 255], two VGG passes, perceptual_loss.
    def objective(v, vv, x, g):
        y = FAST_NET.apply(v, x * 255.0) / 255.0
        return perceptual_loss(FAST_VGG.apply(vv, y), FAST_VGG.apply(vv, x), g)

    want = jax.jit(objective)(net_variables, vgg_variables, batch, grams)
    for key in ("total", "content", "style"):
        np.testing.assert_allclose(first[key], want[key], rtol=1e-4)


def test_adain_step_trains_the_decoder_only_with_adam(runs, np_rng):
    opt, step = ff.adain_train_step(ENCODER, DECODER)  # the command's, already compiled
    content = jnp.asarray(np_rng.uniform(size=(BATCH, SIZE, SIZE, 3)), jnp.float32)
    style = jnp.asarray(np_rng.uniform(size=(BATCH, SIZE, SIZE, 3)) ** 3, jnp.float32)
    encoder_variables = _random_variables(ENCODER, np_rng, content[:1])
    decoder_variables = _random_variables(DECODER, np_rng, jnp.zeros((1, 2, 2, 8 * VGG_WIDTH)))
    first = _check_first_adam_update_and_descent(step, opt, decoder_variables,
                                                 (encoder_variables, content, style), ff.ADAIN_LR,
                                                 moving=0.3)  # the random decoder has dead ReLUs
    # naoto0804 Net.forward from the torch-checked pieces: t = AdaIN(f(c), f(s)), L_c + 10 L_s.
    def objective(ev, dv, c, s):
        encode = lambda x: ENCODER.apply(ev, imagenet_normalize(x))  # noqa: E731
        fc, fs = encode(c), encode(s)
        t = adain(fc["relu4_1"], fs["relu4_1"])
        fg = encode(DECODER.apply(dv, t))
        lc, ls = adain_content_loss(fg, t), 10.0 * adain_style_loss(fg, fs)
        return {"total": lc + ls, "content": lc, "style": ls}

    want = jax.jit(objective)(encoder_variables, decoder_variables, content, style)
    for key in ("total", "content", "style"):
        np.testing.assert_allclose(first[key], want[key], rtol=1e-4)


def test_adain_learning_rate_decays_as_the_reference():
    """naoto0804 train.py: lr_t = lr / (1 + lr_decay t) at iteration t (0-based)."""
    opt, _ = ff.adain_train_step(ENCODER, DECODER)
    state = opt.init({"w": jnp.zeros(())})
    for t in range(3):
        updates, state = opt.update({"w": jnp.ones(())}, state)
        assert float(updates["w"]) == pytest.approx(-1e-4 / (1 + 5e-5 * t), rel=1e-5)


@pytest.mark.parametrize("args, words", [
    (["--method=fast", "--model={tmp}/absent"], ["--model={tmp}/absent: no such file"]),
    (["--method=adain", "--decoder={tmp}/bad.msgpack"], ["--decoder={tmp}/bad.msgpack: cannot read"]),
    (["--method=adain", "--decoder={tmp}/wrong.msgpack"], ["does not fit the network"]),
    (["--method=adain", "--alpha=1.5"], ["--alpha=1.5 must be in [0, 1]"]),
    (["--method=adain", "--alpha=-0.1"], ["--alpha=-0.1 must be in [0, 1]"]),
    (["--method=fast", "--alpha=0.5"], ["--alpha=0.5 is AdaIN's"]),
    (["--method=fast", "--decoder={tmp}/x"], ["--decoder is AdaIN's"]),
    (["--method=adain", "--model={tmp}/x"], ["--model is fast style's"]),
    (["--method=fast", "--batch_size=0"], ["--batch_size=0 must be a positive int"]),
    (["--method=adain", "--net_width=0"], ["--net_width=0 must be a positive int"]),
    (["--method=fast", "--size=8"], ["--size=8 must be at least 16"]),
    (["--method=adain", "--content={tmp}/absent.png"], ["absent.png is neither a file"]),
    (["--method=fast", "--weights={tmp}/absent.npz"], ["absent.npz does not exist"]),
])
def test_bad_input_fails_with_one_error_line(tmp_path, args, words):
    (tmp_path / "bad.msgpack").write_bytes(b"\xc1 not msgpack")
    ff.save_variables({"params": {"conv0": {"conv": {"kernel": np.zeros((3, 3, 5, 5), np.float32)}}}},
                      str(tmp_path / "wrong.msgpack"))
    workdir = tmp_path / "out"
    base = {"--content": "astronaut", "--style": "gravel", "--workdir": str(workdir), "--steps": "1"}
    for a in args:
        key, _, value = a.partition("=")
        base[key] = value.format(tmp=tmp_path)
    code, _, err = run_command("experiments.style", [f"{k}={v}" for k, v in base.items()])
    lines = err.strip().splitlines()
    assert code == 1 and lines and lines[-1].startswith("error: "), err
    for word in words:
        assert word.format(tmp=tmp_path) in lines[-1], (word, lines[-1])
    assert not workdir.exists()
