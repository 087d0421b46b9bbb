"""Every registered model: init, jit forward, gradients, bfloat16, BatchNorm updates, output strides, errors.

Small width overrides keep this cheap (the family tests compare each model with torch). Output
strides are checked on each architecture's smallest variant. The ResNet-101 models are the same
code as their ResNet-50 siblings but the block count, and are not run here (~60 CPU seconds each):
their converted torchvision weights give torchvision's logits (tests/models/test_torchvision_import.py)
and their parameter counts are checked against torchvision's (tests/models/test_deeplab.py). Likewise
a ResNet-50 model whose family has a ResNet-18 variant runs only at ResNet-18 here (20-30 CPU seconds
each): the head code is the same, and the ResNet-50 backbone (bottleneck blocks, dilation, train-mode
BatchNorm) is compared with torchvision in tests/models/test_resnet.py, with the FCN and DeepLab v3
ResNet-50 models as a whole in test_torchvision_import.py and test_deeplab.py. Volumetric models
(output kind "dense3d": unet3d, vnet) get a small odd NDHWC volume instead of an image; point models
(output kind "points": pointnet_seg) a small cloud [N, P, 3] (test_point_models).
"""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import AUX_LOGITS, LOGITS, available_models, create_model
from segjax.models.outputs import PIXEL_INDEX, SE_LOGITS
from segjax.models.registry import _REGISTRY, model_output

CONTRACT = (
    "fcn32s_vgg16 fcn16s_vgg16 fcn8s_vgg16 fcn_resnet50 fcn_resnet101 unet deconvnet segnet deeplabv1_vgg16 "
    "deeplabv2_resnet101 deeplabv3_resnet50 deeplabv3_resnet101 deeplabv3plus_resnet50 deeplabv3plus_resnet101 "
    "pspnet_resnet50 pspnet_resnet101"
).split()
OUTPUT_STRIDES = (8, 16, 32)
H, W = 37, 45  # odd and not multiples of 8/16/32
POINTS = 13  # points per cloud of the point models' ("points") [N, P, 3 + F] inputs
VOLUME = (9, 10, 11)  # D, H, W of the volumetric models' ("dense3d") NDHWC inputs: odd and even
NUM_CLASSES = 3
# Relative L2 error allowed between bfloat16-compute and float32 logits. Max-unpooling moves values to
# their argmax, and bfloat16 rounding flips near-ties between window entries (measured 0.09 / 0.17 for
# SegNet / DeconvNet at width 4, 0.01 with nearest unpooling), so those models get a looser bound;
# ENet max-unpools its upsampling shortcuts the same way (measured 0.11 at random init).
BF16_TOLERANCE = {"segnet": 0.3, "deconvnet": 0.3, "enet": 0.3}


def _one_depth_per_family(names):
    """ResNet-101 models differ from their ResNet-50 siblings only in block count, and ResNet-50
    models from their ResNet-18 siblings only in the backbone (module docstring)."""
    return [n for n in names if "resnet101" not in n
            and not (n.endswith("_resnet50") and n.replace("_resnet50", "_resnet18") in names)]


@pytest.fixture(autouse=True)
def _fast_init_compile():
    """jax's default partitionable threefry makes compiling `init` ~8x slower on CPU (measured)."""
    with jax.threefry_partitionable(False):
        yield


def _accepted(name):
    return set(inspect.signature(_REGISTRY[name]).parameters)


def small_overrides(name):
    """Narrow widths for every family that has one, and aux heads on where the model has them."""
    accepted, vgg = _accepted(name), ("vgg" in name or name in ("segnet", "deconvnet"))
    table = {"backbone_width": 4 if vgg else 8, "width": 4, "fc_dim": 16, "head_channels": 16, "base_features": 4,
             "aux_loss": True, "mlp_dims": (16, 16), "train_samples": 64}
    if model_output(name) == "dense3d":  # one down-sampling: 3-D compiles cost ~0.1 CPU s per conv; the
        table["depth"] = 1  # family tests (test_unet3d.py, test_vnet.py) run the paper's depths on odd sizes
    return {k: v for k, v in table.items() if k in accepted}


def _input_size(name, model):
    """The input's spatial size and channels: a volume with the model's channels for volumetric
    models (V-Net's default input is one-channel), a point cloud for point models, else an RGB image."""
    kind = model_output(name)
    return (VOLUME, model.in_channels) if kind == "dense3d" else ((POINTS,), 3) if kind == "points" else ((H, W), 3)


def _has_output_stride(name):
    return "output_stride" in _accepted(name)


def _maps(out):
    """(key, array) pairs of an output dict, a tuple of maps (ICNet's "aux_logits") as key[i]."""
    for key, value in out.items():
        if isinstance(value, (tuple, list)):
            yield from ((f"{key}[{i}]", v) for i, v in enumerate(value))
        else:
            yield key, value


def _weighted_sum(out, cot):
    """sum(output * cot) over the score maps in `out`; logits of sampled pixels (`PIXEL_INDEX`,
    PixelNet in training) are weighted by the cotangent at their pixels, per-image class logits
    (`SE_LOGITS`, EncNet) by its spatial mean."""
    total = jnp.sum(out[SE_LOGITS] * cot.mean((1, 2))) if SE_LOGITS in out else 0.0
    index = out.get(PIXEL_INDEX)
    if index is not None:
        cot = jnp.take_along_axis(cot.reshape(cot.shape[0], -1, cot.shape[-1]), index[..., None], axis=1)
    return total + sum(jnp.sum(v * cot) for k, v in _maps(out) if k not in (PIXEL_INDEX, SE_LOGITS))


def _compiled(fun, *args):
    """`jax.jit(fun)` compiled for `args` at XLA backend optimisation level 0: about a third less
    compile time (measured on DeepLab-ResNet50 train steps), and these tiny inputs run in milliseconds."""
    return jax.jit(fun).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def _leaves_with_paths(tree):
    return [(jax.tree_util.keystr(p), np.asarray(v)) for p, v in jax.tree_util.tree_leaves_with_path(tree)]


def test_contract_names_are_registered():
    missing = sorted(set(CONTRACT) - set(available_models()))
    assert not missing, f"not registered: {missing}"


@pytest.mark.parametrize("name", _one_depth_per_family(available_models("dense")) + available_models("dense3d"))
def test_init_forward_gradients_bfloat16_and_batch_stats(np_rng, name):
    overrides = small_overrides(name)
    model = create_model(name, num_classes=NUM_CLASSES, **overrides)
    model_bf16 = create_model(name, num_classes=NUM_CLASSES, dtype="bfloat16", **overrides)
    spatial, channels = _input_size(name, model)
    # batch 2: train-mode BN of pooled features
    x = jnp.asarray(np_rng.normal(size=(2, *spatial, channels)), jnp.float32)
    cot = jnp.asarray(np_rng.normal(size=(2, *spatial, NUM_CLASSES)), jnp.float32)

    def run(key, x):  # one compile: init, eval forward (float32 and bfloat16), train forward + backward
        variables = model.init(key, x[:1])
        params, stats = variables["params"], variables.get("batch_stats", {})
        eval_out = model.apply({"params": params, "batch_stats": stats}, x)
        bf16_out = model_bf16.apply({"params": params, "batch_stats": stats}, x)

        def loss_fn(params):
            out, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
            return _weighted_sum(out, cot), upd

        grads, upd = jax.grad(loss_fn, has_aux=True)(params)
        return params, stats, eval_out, bf16_out, grads, upd.get("batch_stats", {})

    key = jax.random.key(0)
    params, stats, eval_out, bf16_out, grads, new_stats = _compiled(run, key, x)(key, x)

    expected_keys = {LOGITS, AUX_LOGITS} if overrides.get("aux_loss") else {LOGITS}
    if getattr(model, "se_loss", False):  # EncNet's per-image class-presence logits
        expected_keys.add(SE_LOGITS)
    assert set(eval_out) == expected_keys
    bf16_maps = dict(_maps(bf16_out))
    for key, value in _maps(eval_out):
        shape = (2, NUM_CLASSES) if key == SE_LOGITS else (2, *spatial, NUM_CLASSES)
        assert value.shape == shape and value.dtype == jnp.float32, key
        assert np.all(np.isfinite(value)) and np.std(np.asarray(value)) > 0, key
        # bfloat16 compute: logits stay float32 and close to the float32 model's (values, not shapes).
        low = np.asarray(bf16_maps[key])
        assert bf16_maps[key].dtype == jnp.float32
        ref = np.asarray(value)
        rel = np.linalg.norm(low - ref) / np.linalg.norm(ref)
        assert rel < BF16_TOLERANCE.get(name, 5e-2), f"{key}: bfloat16 relative error {rel:.3g}"

    zero = [path for path, g in _leaves_with_paths(grads) if not np.any(g)]
    bad = [path for path, g in _leaves_with_paths(grads) if not np.all(np.isfinite(g))]
    assert not bad, f"non-finite gradients: {bad}"
    assert not zero, f"all-zero gradients: {zero}"
    assert jax.tree.structure(grads) == jax.tree.structure(params)

    # Train mode moves every running statistic (torch momentum 0.1); eval mode leaves them alone.
    assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
    for (path, new), (_, old) in zip(_leaves_with_paths(new_stats), _leaves_with_paths(stats)):
        assert np.all(np.isfinite(new)) and np.any(new != old), f"batch_stats {path} not updated"
        if path.endswith("['var']"):
            assert np.all(new > 0), path


@pytest.mark.parametrize("name", available_models("points"))
def test_point_models(np_rng, name):
    """Point models: per-point logits (float32, close in bfloat16), finite non-zero gradients for every
    parameter, moved running statistics, and "feature_transform" [N, k, k] (the regularised matrix).
    `init` is traced, not compiled (its compile alone took 9 of 15 CPU seconds): the weights are random
    draws of its shapes, running variances positive."""
    model = create_model(name, num_classes=NUM_CLASSES, **small_overrides(name))
    model_bf16 = create_model(name, num_classes=NUM_CLASSES, dtype="bfloat16", **small_overrides(name))
    x = jnp.asarray(np_rng.normal(size=(2, POINTS, 3)), jnp.float32)
    cot = jnp.asarray(np_rng.normal(size=(2, POINTS, NUM_CLASSES)), jnp.float32)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(np_rng.uniform(0.5, 1.5, s.shape) if path[-1].key in ("var", "scale")
                                    else np_rng.normal(0, 0.3, s.shape), jnp.float32),
        jax.eval_shape(model.init, jax.random.key(0), x))

    def run(variables, x):
        eval_out, bf16_out = model.apply(variables, x), model_bf16.apply(variables, x)

        def loss_fn(params):
            out, upd = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(out[LOGITS] * cot) + jnp.sum(out["feature_transform"] ** 2), upd

        grads, upd = jax.grad(loss_fn, has_aux=True)(variables["params"])
        return variables["batch_stats"], eval_out, bf16_out, grads, upd["batch_stats"]

    stats, eval_out, bf16_out, grads, new_stats = _compiled(run, variables, x)(variables, x)
    logits = np.asarray(eval_out[LOGITS])
    assert eval_out[LOGITS].dtype == bf16_out[LOGITS].dtype == jnp.float32 and logits.shape == (2, POINTS, NUM_CLASSES)
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0
    k = eval_out["feature_transform"].shape[-1]
    assert eval_out["feature_transform"].shape == (2, k, k)
    rel = np.linalg.norm(np.asarray(bf16_out[LOGITS]) - logits) / np.linalg.norm(logits)
    assert rel < 5e-2, f"bfloat16 relative error {rel:.3g}"
    bad = [path for path, g in _leaves_with_paths(grads) if not (np.all(np.isfinite(g)) and np.any(g))]
    assert not bad, f"zero or non-finite gradients: {bad}"
    for (path, new), (_, old) in zip(_leaves_with_paths(new_stats), _leaves_with_paths(stats)):
        assert np.all(np.isfinite(new)) and np.any(new != old), f"batch_stats {path} not updated"


def _os_cases(slow):
    """(name, output stride) pairs at the strides other than the default (covered above), on the small
    models: each architecture's smallest registered variant (ResNet-18 / VGG; its deeper siblings share
    every line but the block count, and ResNet-50 dilation is compared with torch in test_resnet.py).
    Architectures registered only at depth 101 (DeepLab v2) run in the slow pass, at their first
    other stride only: the strides themselves are the backbone's, covered by the small models."""
    families = {}
    for name in available_models("dense"):
        if _has_output_stride(name):
            family = name.rsplit("_resnet", 1)[0]
            depth = int(name.rsplit("_resnet", 1)[1]) if "_resnet" in name else 0
            families.setdefault(family, []).append((depth, name))
    cases = []
    for family in families.values():
        depth, name = min(family)
        if (depth == 101) == slow:
            default = inspect.signature(_REGISTRY[name]).parameters["output_stride"].default
            others = [(name, os_) for os_ in OUTPUT_STRIDES if os_ != default]
            cases += others[:1] if slow else others
    return cases


def _check_output_stride(np_rng, name, output_stride):
    overrides = small_overrides(name)
    model = create_model(name, num_classes=NUM_CLASSES, output_stride=output_stride, **overrides)
    x = jnp.asarray(np_rng.normal(size=(1, H, W, 3)), jnp.float32)
    out = _compiled(lambda x: model.apply(model.init(jax.random.key(0), x), x), x)(x)
    for key, value in _maps(out):
        shape = (1, NUM_CLASSES) if key == SE_LOGITS else (1, H, W, NUM_CLASSES)
        assert value.shape == shape and np.all(np.isfinite(value)), key
    # The parameters do not depend on the output stride (dilation only).
    default = create_model(name, num_classes=NUM_CLASSES, **overrides)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    default_shapes = jax.eval_shape(default.init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, default_shapes)


@pytest.mark.parametrize("name, output_stride", _os_cases(slow=False))
def test_every_output_stride(np_rng, name, output_stride):
    _check_output_stride(np_rng, name, output_stride)


@pytest.mark.slow
@pytest.mark.parametrize("name, output_stride", _os_cases(slow=True))
def test_every_output_stride_slow(np_rng, name, output_stride):
    _check_output_stride(np_rng, name, output_stride)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONTRACT)
def test_full_size_forward(np_rng, name):
    """The real widths: random parameters with init's shapes, one jit forward on a small odd image."""
    model = create_model(name, num_classes=21)
    x = jnp.asarray(np_rng.normal(size=(1, 33, 35, 3)), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    variables = {
        "params": jax.tree.map(lambda s: jnp.asarray(np_rng.normal(0, 0.01, s.shape), jnp.float32), shapes["params"]),
        "batch_stats": jax.tree.map(lambda s: jnp.ones(s.shape, jnp.float32), shapes.get("batch_stats", {})),
    }
    out = _compiled(model.apply, variables, x)(variables, x)
    assert out[LOGITS].shape == (1, 33, 35, 21) and np.all(np.isfinite(out[LOGITS]))
    assert np.std(np.asarray(out[LOGITS])) > 0


def test_unknown_name_lists_available_models():
    with pytest.raises(ValueError, match="unknown model 'fcn4s'") as err:
        create_model("fcn4s", num_classes=2)
    for name in available_models():
        assert name in str(err.value)


@pytest.mark.parametrize("name", available_models())
def test_bad_overrides_and_inputs_raise(name):
    with pytest.raises(ValueError, match="no_such_option"):
        create_model(name, num_classes=2, no_such_option=1)
    with pytest.raises(ValueError, match="num_classes"):
        create_model(name, num_classes=0)
    if _has_output_stride(name):
        with pytest.raises(ValueError, match="output_stride=4"):
            model = create_model(name, num_classes=2, output_stride=4, **small_overrides(name))
            jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, H, W, 3)))
    model = create_model(name, num_classes=2, **small_overrides(name))
    spatial, channels = _input_size(name, model)
    for shape in ((1, *spatial, channels + 1), (*spatial, channels)):
        with pytest.raises(ValueError, match=re.escape(str(shape))):
            jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    # in_channels is an override: one-channel images (points with normals: 6 channels) work when asked for.
    other = 6 if model_output(name) == "points" else 1
    gray = create_model(name, num_classes=2, in_channels=other, **small_overrides(name))
    out = jax.eval_shape(gray.init, jax.random.key(0), jnp.zeros((1, *spatial, other)))
    assert "params" in out


def test_model_table_counts_segnet_exactly():
    """The table's params and GFLOPs against a hand count of SegNet's 26 3x3 convs at 32x32 (+ BN)."""
    from experiments.benchmarks.model_table import markdown, model_row

    row = model_row("segnet", 32, 21)
    # (map size, C_in, C_out) of every 3x3 conv: encoder, decoder, classifier.
    convs = [(32, 3, 64), (32, 64, 64), (16, 64, 128), (16, 128, 128), (8, 128, 256), (8, 256, 256), (8, 256, 256),
             (4, 256, 512), (4, 512, 512), (4, 512, 512)] + [(2, 512, 512)] * 6 + [
             (4, 512, 512), (4, 512, 512), (4, 512, 256), (8, 256, 256), (8, 256, 256), (8, 256, 128),
             (16, 128, 128), (16, 128, 64), (32, 64, 64), (32, 64, 21)]
    assert row["params"] == sum(9 * ci * co + co for _, ci, co in convs) + sum(2 * co for _, _, co in convs[:-1])
    valid_taps = sum(2 * (3 * s - 2) ** 2 * ci * co for s, ci, co in convs)  # XLA skips taps on padding
    assert valid_taps <= row["flops"] <= 1.01 * valid_taps
    assert "| segnet | 29.46 | 1.0 |" in markdown([row], 32)


def test_outputs_partition_the_registry():
    """Each model declares what it returns in the registry's own terms (no task names)."""
    from segjax.models.registry import OUTPUTS, model_output

    by_output = {kind: available_models(kind) for kind in OUTPUTS}
    assert sorted(sum(by_output.values(), [])) == available_models()
    assert "deeplabv3_resnet50" in by_output["dense"]
    assert "maskrcnn_resnet50_fpn" in by_output["detections"]
    assert model_output("maskrcnn_resnet18_fpn") == "detections"
    assert model_output("unet_embedding") == "dense_embeddings"
    assert model_output("oracle_gossip") == "score" and model_output("fewshot_resnet18") == "episode"
    assert by_output["dense3d"] == ["unet3d", "vnet"]
    assert by_output["points"] == ["pointnet_seg"]
    with pytest.raises(ValueError, match="unknown model"):
        model_output("nope")
    with pytest.raises(ValueError, match="must be one of"):
        from segjax.models import register
        register("x_model", output="semantic")
