"""Loop helpers without training: init_from merging (vs the torch state dict), config plumbing."""

import jax
import numpy as np
import pytest
import torch
import torchvision

from segjax.models import create_model, torchvision_import
from segjax.data import splits
from segjax.tasks import semantic
from segjax.train import build, pretrained


def _zeros_like_init(model, shape=(1, 33, 33, 3)):
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros(shape, np.float32)))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(abstract))


def test_init_from_places_converted_resnet_under_backbone(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    torchvision_import.save_converted(str(tmp_path / "r18"),
                                      torchvision_import.convert("resnet18", sd),
                                      {"model": "resnet18", "backbone_only": True})
    model = create_model("deeplabv3plus_resnet18", num_classes=5, head_channels=16)
    fresh = _zeros_like_init(model)
    merged = pretrained.merge_pretrained(fresh, torchvision_import.load_converted(str(tmp_path / "r18")))

    # The stem kernel is torch's conv1.weight in HWIO layout; a BN running mean is copied too.
    stem = [v for p, v in jax.tree_util.tree_flatten_with_path(merged["params"]["backbone"])[0]
            if v.shape == (7, 7, 3, 64)]
    assert len(stem) == 1
    np.testing.assert_array_equal(stem[0], sd["conv1.weight"].transpose(2, 3, 1, 0))
    means = jax.tree.leaves(merged["batch_stats"]["backbone"])
    assert any(np.array_equal(m, sd["bn1.running_mean"]) for m in means)
    # Every converted array landed at its own path under "backbone".
    converted = torchvision_import.load_converted(str(tmp_path / "r18"))
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(converted[collection])[0]
        for path, value in flat:
            node = merged[collection]["backbone"]
            for k in path:
                node = node[k.key]
            np.testing.assert_array_equal(node, value, err_msg=str(path))
    # Everything outside the backbone keeps its fresh values.
    for key in merged["params"]:
        if key != "backbone":
            assert all(not np.any(v) for v in jax.tree.leaves(merged["params"][key]))


def test_init_from_with_nothing_matching_raises():
    model = create_model("unet", num_classes=3, base_features=4, depth=2)
    fresh = _zeros_like_init(model, (1, 16, 16, 3))
    with pytest.raises(ValueError, match="does not match the model.*unexpected.*other/w"):
        pretrained.merge_pretrained(fresh, {"params": {"other": {"w": np.zeros(3)}}})


def test_init_from_whole_model_reinitialises_only_class_layers(capsys):
    src_model = create_model("unet", num_classes=5, base_features=4, depth=2)
    converted = jax.tree.map(lambda x: np.full(x.shape, 7.0, x.dtype), _zeros_like_init(src_model, (1, 16, 16, 3)))
    fresh = _zeros_like_init(create_model("unet", num_classes=3, base_features=4, depth=2), (1, 16, 16, 3))
    merged = pretrained.merge_pretrained(fresh, converted, num_classes=3)
    flat_m = jax.tree_util.tree_flatten_with_path(merged["params"])[0]
    changed = [jax.tree_util.keystr(p) for p, v in flat_m if v.shape[-1] == 3 and not np.any(v)]
    assert changed, "the 3-class output layer keeps its fresh values"
    assert all(np.all(v == 7.0) for p, v in flat_m if jax.tree_util.keystr(p) not in changed)
    assert "re-initialised for 3 classes" in capsys.readouterr().out
    # Without num_classes nothing may differ in shape: a mismatch is an error, not a skip.
    with pytest.raises(ValueError, match="shape mismatches"):
        pretrained.merge_pretrained(fresh, converted)


def test_init_from_backbone_of_another_depth_raises(tmp_path):
    sd = {k: v.numpy() for k, v in torchvision.models.resnet34(weights=None).state_dict().items()}
    model = create_model("deeplabv3plus_resnet18", num_classes=5, head_channels=16)
    with pytest.raises(ValueError, match="do not match"):
        pretrained.merge_pretrained(_zeros_like_init(model), torchvision_import.convert("resnet34", sd))


def test_optimizer_and_loss_kwargs_from_config():
    from experiments.configs import deeplab_voc

    c = deeplab_voc.get_config("deeplabv3_r50")
    kw = build.optimizer_kwargs(c)
    assert kw["end_lr"] == 1e-4 and kw["weight_decay"] == 5e-4 and kw["base_lr"] == 0.01
    c.optimizer.lr = 3.0  # unlocked here: an unknown optimizer key must not be dropped silently
    with pytest.raises(ValueError, match="config.optimizer.lr"):
        build.optimizer_kwargs(c)
    c = deeplab_voc.get_config("demo")
    c.loss.kind = "ohem"
    c.loss.thresh = 0.6
    assert semantic.loss_kwargs(c) == {"kind": "ohem", "aux_weight": 0.4, "thresh": 0.6}


def test_kfold_splits_train_and_evaluate_disjoint_parts_of_the_train_split():
    from experiments.configs import deeplab_voc
    from segjax.train import sweep
    from segjax.data import pipeline

    c = deeplab_voc.get_config("demo")
    assert splits.data_splits(c.dataset) == ({}, c.dataset.eval_split, {}, c.dataset.eval_split)
    c = sweep.make_config(c, (("dataset.fold", 2),), seed=0)  # as a sweep sets it
    train_kw, eval_split, eval_kw, label = splits.data_splits(c.dataset)
    assert eval_split == c.dataset.train_split and train_kw == eval_kw
    assert label == f"{c.dataset.train_split}/fold2of5"
    # The pipeline's parts for these kwargs: disjoint, together the whole split.
    train_idx, val_idx = pipeline.fold_indices(103, fold=train_kw["fold"], num_folds=train_kw["num_folds"],
                                               seed=train_kw["fold_seed"])
    assert not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) == 103
    c.dataset.fold = 5
    with pytest.raises(ValueError, match="config.dataset.fold=5"):
        splits.data_splits(c.dataset)


def test_leave_p_out_splits_are_labelled_and_checked():
    from experiments.configs import deeplab_voc
    from segjax.train import sweep

    c = deeplab_voc.get_config("demo")
    c = sweep.make_config(c, (("dataset.fold", 7), ("dataset.leave_out", 2)), seed=0)
    train_kw, eval_split, eval_kw, label = splits.data_splits(c.dataset)
    assert train_kw == eval_kw and train_kw["leave_out"] == 2 and train_kw["fold"] == 7
    assert eval_split == c.dataset.train_split
    assert label == f"{c.dataset.train_split}/leave2out/fold7"
    c.dataset.leave_out = 0
    with pytest.raises(ValueError, match="config.dataset.leave_out=0"):
        splits.data_splits(c.dataset)
