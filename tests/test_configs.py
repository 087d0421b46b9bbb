"""Every config file and preset in experiments/configs/ loads and every name in it resolves.

Scenic's dead configs (pointing at a deleted trainer) are the warning: a config that nobody runs
rots. Here each preset must name a registered model that accepts its overrides, a registered
dataset with the split names the dataset defines, a loss kind with applicable options, an
optimizer config that `create_optimizer` accepts, and valid step counts.
"""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from segjax import losses
from segjax.data import datasets
from segjax.models import create_model
from segjax.tasks import semantic
from segjax.train import build, config_utils, optim

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")
CONFIG_MODULES = sorted(
    os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
    if os.path.basename(p) not in ("__init__.py", "common.py"))


# dataset.json of the MSD tasks the presets name (labels and modalities as distributed), for a
# run without the archives: the registry reads class names from $SEGJAX_MSD_ROOT.
_MSD_META = {
    "Task01_BrainTumour": ({"0": "background", "1": "edema", "2": "non-enhancing tumor",
                            "3": "enhancing tumour"},
                           {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}),
    "Task05_Prostate": ({"0": "background", "1": "PZ", "2": "TZ"}, {"0": "T2", "1": "ADC"}),
}


@pytest.fixture(autouse=True)
def _msd_root(tmp_path_factory, monkeypatch):
    import json

    if os.environ.get("SEGJAX_MSD_ROOT"):
        return
    root = tmp_path_factory.getbasetemp() / "msd_meta"
    for task, (labels, modality) in _MSD_META.items():
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / "dataset.json").write_text(json.dumps({
            "labels": labels, "modality": modality,
            "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}))
    monkeypatch.setenv("SEGJAX_MSD_ROOT", str(root))


def _all_presets():
    for name in CONFIG_MODULES:
        module = importlib.import_module(f"experiments.configs.{name}")
        for preset in module.PRESETS:
            yield pytest.param(module, preset, id=f"{name}:{preset or 'default'}")


def test_config_files_found():
    assert {"deeplab_voc", "fcn_voc", "unet_shapes", "segnet_voc", "pspnet_voc"} <= set(
        CONFIG_MODULES)


@pytest.mark.parametrize("module,preset", list(_all_presets()))
def test_preset_resolves_every_name(module, preset):
    config = module.get_config(preset)
    assert isinstance(config, ml_collections.ConfigDict)
    config.lock()
    config_utils.check_config(config)
    # Docstring: the command that runs it and what it should reach (big_vision style).
    assert "python -m experiments." in module.__doc__
    assert "mIoU" in module.__doc__ or "AP" in module.__doc__ or "not measured" in module.__doc__

    info = datasets.get_dataset_info(config.dataset.name)
    splits = {info.train_split, info.eval_split, "train", "train_aug"}
    assert config.dataset.train_split in splits
    assert config.dataset.eval_split == info.eval_split

    model = create_model(config.model.name, num_classes=info.num_classes,
                         **config_utils.model_overrides(config.model))
    assert model.axis_name is None

    # The task the config names, built as the trainer builds it, and a model of what it consumes.
    from segjax.tasks import available_tasks, build_task

    assert config.task in available_tasks()
    if config.task == "semantic":
        kw = semantic.loss_kwargs(config)
        assert kw["kind"] in losses.LOSSES
    else:
        task = build_task(config, info, None)
        build.build_model(config, info.num_classes, task)  # refuses a model of another output
    num_steps = config_utils.get_steps(config, "num_train", batch_size=config.batch_size,
                                       num_examples=100)
    for name in ("log_every", "eval_every", "checkpoint_every"):
        assert 0 < config_utils.get_steps(config, name, batch_size=config.batch_size) <= num_steps
    params = {"backbone": {"kernel": jnp.zeros((3, 3))}, "head": {"bias": jnp.zeros(3)}}
    optim.create_optimizer(params, num_steps=num_steps, **build.optimizer_kwargs(config))

    if config.task == "semantic" and config.eval.sliding_window:
        assert config.eval.stride <= config.eval.window
    assert config.dataset.crop_size > 0 and config.eval.pad_to > 0


def test_unknown_preset_and_locked_key():
    from experiments.configs import deeplab_voc

    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        deeplab_voc.get_config("nope")
    config = deeplab_voc.get_config()
    config.lock()
    with pytest.raises(AttributeError, match="learning_rate"):
        config.optimizer.learning_rate = 0.1


def test_get_steps_worked_examples():
    c = {"num_train_steps": None, "num_train_epochs": 2, "x_examples": 33, "y_steps": 5}
    assert config_utils.get_steps(c, "num_train", batch_size=16, num_examples=10582) == 1323
    assert config_utils.get_steps(c, "x", batch_size=16) == 3
    assert config_utils.get_steps(c, "y", batch_size=16) == 5
    with pytest.raises(ValueError, match="exactly one"):
        config_utils.get_steps({"z_steps": 1, "z_epochs": 1}, "z", batch_size=1, num_examples=1)
    with pytest.raises(ValueError, match="num_examples"):
        config_utils.get_steps({"z_epochs": 1}, "z", batch_size=1)
    with pytest.raises(ValueError, match="positive"):
        config_utils.get_steps({"z_steps": 0}, "z", batch_size=1)


def test_incompatible_keys_ignores_cadence_and_names_the_rest():
    from experiments.configs import deeplab_voc

    a = deeplab_voc.get_config("demo")
    b = deeplab_voc.get_config("demo")
    b.eval_every_steps = 1
    b.eval.tta = True
    assert config_utils.incompatible_keys(a.to_dict(), b) == []
    b.optimizer.base_lr = 1.0
    b.model.name = "unet"
    # The run's length is not cadence: the poly schedule is a function of it.
    b.num_train_steps = 5
    assert config_utils.incompatible_keys(a, b) == ["model.name", "num_train_steps",
                                                    "optimizer.base_lr"]


def test_check_config_names_bad_values():
    from experiments.configs import deeplab_voc

    c = deeplab_voc.get_config("demo")
    c.parallelism = "dp"
    with pytest.raises(ValueError, match="config.parallelism"):
        config_utils.check_config(c)
    c = deeplab_voc.get_config("demo")
    c.loss.kind = "hinge"
    with pytest.raises(ValueError, match="config.loss.kind"):
        config_utils.check_config(c)
    c = deeplab_voc.get_config("demo")
    c.loss.kind = "focal"
    c.loss.label_smoothing = 0.1
    with pytest.raises(ValueError, match="label_smoothing"):
        semantic.loss_kwargs(c)


def test_poly_floor_matches_mmseg_formula():
    """mmsegmentation's poly with min_lr: (lr0 - min) * (1 - t / T) ** p + min (presets use it)."""
    _, schedule = optim.create_optimizer({"w": jnp.zeros(2)}, base_lr=0.01, num_steps=100,
                                         power=0.9, end_lr=1e-4)
    for t in (0, 37, 100, 150):
        want = (0.01 - 1e-4) * (1 - min(t, 100) / 100) ** 0.9 + 1e-4
        assert abs(float(schedule(t)) - want) < 1e-9


@pytest.mark.parametrize("spec", ["deeplab_voc.py:deeplabv3_r50", "fcn_voc.py:fcn_r50",
                                  "pspnet_voc.py:", "pspnet_voc.py:r101", "encnet_cityscapes.py:"])
def test_mmseg_presets_decay_what_mmseg_decays(spec):
    """mmsegmentation's (and torchvision's reference) SGD decays every parameter, BatchNorm
    scales and biases included; the recipes that claim mmseg's must too."""
    name, _, preset = spec.partition(":")
    config = config_utils.load_config_file(os.path.join(CONFIG_DIR, name) + (f":{preset}" if preset else ""))
    params = {"backbone": {"conv": {"kernel": jnp.zeros((3, 3, 1, 2))}, "bn": {"scale": jnp.ones(2)}},
              "head": {"bias": jnp.zeros(2)}}
    kw = build.optimizer_kwargs(config)
    assert all(jax.tree.leaves(optim.decay_mask(params, kw["decay_norm_and_bias"])))


@pytest.mark.parametrize("preset,weight", [("", 0.2), ("shapes", 0.2)])
def test_encnet_presets_se_weight_reaches_the_task(preset, weight):
    """`loss.se_weight` (declared 0 by the semantic task) is the SE-loss weight of the built task,
    and not an option handed to the pixel loss."""
    from types import SimpleNamespace

    from experiments.configs import encnet_cityscapes, pspnet_voc

    info = SimpleNamespace(num_classes=3, ignore_label=255, class_names=None, palette=None)
    c = encnet_cityscapes.get_config(preset)
    assert "se_weight" not in semantic.loss_kwargs(c)
    assert semantic.build(c, info, None).se_weight == weight
    assert semantic.build(pspnet_voc.get_config(), info, None).se_weight == 0.0


def test_a_presets_model_fields_do_not_leak_into_another_model(capsys):
    """The demo preset's `output_stride` / `backbone_width` were set for DeepLab: with
    `model.name=unet` they are left out (and named), except one set explicitly for the run."""
    from experiments.configs import deeplab_voc

    c = deeplab_voc.get_config("demo")
    c.lock()
    assert config_utils.retarget_model(c, "deeplabv3plus_resnet18") == []  # same model
    c.model.name = "unet"
    assert sorted(config_utils.retarget_model(c, "deeplabv3plus_resnet18")) == [
        "backbone_width", "output_stride"]
    assert c.model.output_stride is None and c.model.dtype == "float32"
    assert "backbone_width=16 was set for deeplabv3plus_resnet18" in capsys.readouterr().out
    create_model(c.model.name, num_classes=3, **config_utils.model_overrides(c.model))

    c = deeplab_voc.get_config("demo")
    c.model.name = "unet"
    assert config_utils.retarget_model(c, "deeplabv3plus_resnet18", kept=["output_stride"]) == [
        "backbone_width"]
    with pytest.raises(ValueError, match=r"does not accept override\(s\) \['output_stride'\]"):
        create_model(c.model.name, num_classes=3, **config_utils.model_overrides(c.model))
