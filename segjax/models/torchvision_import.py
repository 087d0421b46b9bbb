"""Convert torchvision state dicts into segjax variables.

`convert(name, state_dict)` maps the weights of torchvision's `resnet18/34/50/101/152` (the
ImageNet classifiers, for transfer learning: `fc.*` is dropped), `vgg16`/`vgg16_bn` (onto
`backbones.vgg.VGG16` with fc6/fc7 as convs; `classifier.6` is dropped), `vgg19` (onto
`segjax.style.vgg.VGGFeatures(depth=19)`, the style-transfer features: its 16 convs only, the
whole `classifier.*` is dropped), `fcn_resnet50/101` and
`deeplabv3_resnet50/101` (with or without `aux_classifier`) onto the same-named segjax model, and
`maskrcnn_resnet50_fpn` (torchvision's Mask R-CNN; `maskrcnn_resnet101_fpn` for the same layout on
ResNet-101) onto `segjax.models.detection.maskrcnn` (see `map_maskrcnn`).
Every torchvision key must land on a segjax leaf of the same shape and every segjax leaf must
receive a value: anything else raises ValueError listing the offending keys.

Transfer learning (ImageNet backbone into a fresh segmentation model):

  >>> model = create_model("deeplabv3plus_resnet50", num_classes=21)
  >>> variables = model.init(jax.random.key(0), jnp.zeros([1, 65, 65, 3]))
  >>> imagenet = convert("resnet50", torchvision.models.resnet50(weights="DEFAULT").state_dict())
  >>> variables = merge_backbone(variables, imagenet)

Layouts: conv weights OIHW -> kernels HWIO; BatchNorm weight/bias/running_mean/running_var ->
params scale/bias and batch_stats mean/var; `num_batches_tracked` is ignored (segjax's BatchNorm
uses a fixed momentum, as torchvision's default).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from segjax import jsonio
from segjax.models.backbones.resnet import ResNet
from segjax.models.registry import create_model

_CLASSIFIERS = {f"resnet{d}": d for d in (18, 34, 50, 101, 152)}
_VGG = {"vgg16": False, "vgg16_bn": True}  # name -> batch_norm
_VGG_FEATURES = {"vgg19": 19}  # name -> depth of segjax.style.vgg.VGGFeatures
_SEGMENTATION = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101")
_MASKRCNN = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet101_fpn")
SUPPORTED = tuple(_CLASSIFIERS) + tuple(_VGG) + tuple(_VGG_FEATURES) + _SEGMENTATION + _MASKRCNN
# torchvision VGG keys: conv/BN layers of `features`, fc6/fc7 (`classifier.0/3`) and the
# ImageNet classifier `classifier.6` (dropped).
_VGG_KEY = re.compile(r"features\.\d+\.(weight|bias|running_mean|running_var|num_batches_tracked)"
                      r"|classifier\.[036]\.(weight|bias)")

# torchvision Sequential index -> segjax child name, per head.
_FCN_HEAD = {"0": "conv", "1": "bn", "4": "cls"}
_DEEPLAB_HEAD = {"1": "conv", "2": "bn", "4": "cls"}


def map_fcn_head(parts: list[str]) -> list[str] | None:
    """torchvision FCNHead keys (below the head's prefix, split on '.') -> segjax FCNHead path."""
    if len(parts) == 2 and parts[0] in _FCN_HEAD:
        return [_FCN_HEAD[parts[0]], parts[1]]
    return None


def map_deeplab_head(parts: list[str], num_rates: int) -> list[str] | None:
    """torchvision DeepLabHead keys (below `classifier.`) -> segjax DeepLabV3Head path."""
    if len(parts) == 2 and parts[0] in _DEEPLAB_HEAD:
        return [_DEEPLAB_HEAD[parts[0]], parts[1]]
    key = ".".join(parts)
    m = re.fullmatch(r"0\.convs\.(\d+)\.(\d+)\.(\w+)", key)
    if m:
        branch, layer, leaf = int(m[1]), m[2], m[3]
        if branch == 0:
            name, layers = "conv1x1", {"0": "conv", "1": "bn"}
        elif branch <= num_rates:
            name, layers = f"atrous_{branch - 1}", {"0": "conv", "1": "bn"}
        elif branch == num_rates + 1:  # ASPPPooling: 0 is the AdaptiveAvgPool2d
            name, layers = "pooling", {"1": "conv", "2": "bn"}
        else:
            return None
        return ["aspp", name, layers[layer], leaf] if layer in layers else None
    m = re.fullmatch(r"0\.project\.(\d+)\.(\w+)", key)
    if m and m[1] in ("0", "1"):
        return ["aspp", "project", {"0": "conv", "1": "bn"}[m[1]], m[2]]
    return None


def map_maskrcnn(parts: list[str]) -> list[str] | None:
    """torchvision MaskRCNN keys -> segjax `MaskRCNN` paths (None when unmapped).

    backbone.body.* -> backbone.* (ResNet names as torchvision's), backbone.fpn.{inner,layer}_blocks.i.0
    -> fpn.{inner,layer}_i, rpn.head.conv.0.0 -> rpn_head.conv, rpn.head.{cls_logits,bbox_pred} ->
    rpn_head.*, roi_heads.{box_head,box_predictor,mask_predictor}.* -> the same names, and
    roi_heads.mask_head.i.0 -> mask_head.mask_fcn{i+1}.
    """
    key = ".".join(parts)
    if key.startswith("backbone.body."):
        return ["backbone", *parts[2:]]
    m = re.fullmatch(r"backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.0\.(weight|bias)", key)
    if m:
        return ["fpn", f"{m[1]}_{m[2]}", m[3]]
    m = re.fullmatch(r"rpn\.head\.(conv\.0\.0|cls_logits|bbox_pred)\.(weight|bias)", key)
    if m:
        return ["rpn_head", m[1].split(".")[0], m[2]]
    m = re.fullmatch(r"roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)", key)
    if m:
        return ["mask_head", f"mask_fcn{int(m[1]) + 1}", m[2]]
    m = re.fullmatch(r"roi_heads\.(box_head\.fc[67]|box_predictor\.(?:cls_score|bbox_pred)"
                     r"|mask_predictor\.(?:conv5_mask|mask_fcn_logits))\.(weight|bias)", key)
    if m:
        return [*m[1].split("."), m[2]]
    return None


def _leaf(parts: list[str], value: np.ndarray) -> tuple[str, tuple[str, ...], np.ndarray] | None:
    """Torch leaf -> (collection, segjax path, value in segjax layout); None for ignored leaves."""
    *path, leaf = parts
    if leaf == "num_batches_tracked":
        return None
    if leaf == "weight" and value.ndim == 4:
        return "params", (*path, "kernel"), value.transpose(2, 3, 1, 0)
    if leaf == "weight" and value.ndim == 2:  # nn.Linear [out, in] -> nn.Dense kernel [in, out]
        return "params", (*path, "kernel"), value.T
    if leaf == "weight" and value.ndim == 1:
        return "params", (*path, "scale"), value
    if leaf == "bias":
        return "params", (*path, "bias"), value
    if leaf == "running_mean":
        return "batch_stats", (*path, "mean"), value
    if leaf == "running_var":
        return "batch_stats", (*path, "var"), value
    return "unknown", tuple(parts), value


def _path_mapper(name: str) -> Callable[[list[str]], list[str] | None]:
    """A function mapping a torch key (split on '.') to a segjax path, or None when unmapped."""
    if name in _CLASSIFIERS:
        return lambda parts: parts
    if name in _MASKRCNN:
        return map_maskrcnn
    head = map_fcn_head if name.startswith("fcn_") else (lambda p: map_deeplab_head(p, 3))

    def mapper(parts: list[str]) -> list[str] | None:
        top, rest = parts[0], parts[1:]
        if top == "backbone":
            return parts
        if top == "aux_classifier":
            sub = map_fcn_head(rest)
        elif top == "classifier":
            sub = head(rest)
        else:
            return None
        return None if sub is None else [top, *sub]

    return mapper


def _target(name: str, state_dict: Mapping[str, np.ndarray]):
    """The segjax module matching `name` and the state dict's classes/aux head."""
    if name in _CLASSIFIERS:
        return ResNet(depth=_CLASSIFIERS[name])
    if name in _MASKRCNN:
        cls_key = "roi_heads.box_predictor.cls_score.weight"
        if cls_key not in state_dict:
            raise ValueError(f"state dict for {name!r} lacks {cls_key!r} (its box classifier); is it a Mask R-CNN?")
        return create_model(name, num_classes=int(np.shape(state_dict[cls_key])[0]))
    cls_key = "classifier.4.weight"
    if cls_key not in state_dict:
        raise ValueError(f"state dict for {name!r} lacks {cls_key!r} (its classifier); is it a {name}?")
    num_classes = int(np.shape(state_dict[cls_key])[0])
    aux = any(k.startswith("aux_classifier.") for k in state_dict)
    return create_model(name, num_classes=num_classes, aux_loss=aux)


def _as_numpy(value: Any) -> np.ndarray:
    """A float32 copy: `tensor.numpy()` shares memory, and torch updates BN buffers in place."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.array(value, dtype=np.float32, copy=True)


def convert_state_dict(
    state_dict: Mapping[str, Any],
    shapes: Mapping[str, Any],
    path_map: Callable[[list[str]], list[str] | None] = lambda parts: parts,
    *,
    skip: Callable[[str], bool] = lambda key: False,
    what: str = "model",
) -> dict[str, Any]:
    """Maps torch `state_dict` onto the variable tree `shapes` (anything with `.shape` leaves).

    `path_map` turns a torch key split on "." (e.g. `["layer1", "0", "conv1", "weight"]`) into
    the segjax module path plus the torch leaf name, or None when the key has no counterpart;
    leaves are renamed/transposed as described in the module docstring. Keys for which
    `skip(key)` is true are dropped on purpose.

    Raises:
      ValueError listing unexpected keys, missing segjax leaves and shape mismatches.
    """
    expected = {
        (col, *path): tuple(leaf.shape)
        for col in ("params", "batch_stats")
        for path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes.get(col, {}))).items()
    }
    flat, unexpected, mismatched = {}, [], []
    for key, value in state_dict.items():
        if skip(key):
            continue
        mapped = path_map(key.split("."))
        converted = None if mapped is None else _leaf(mapped, _as_numpy(value))
        if mapped is not None and converted is None:
            continue  # num_batches_tracked
        if converted is None or converted[0] == "unknown":
            unexpected.append(key)
            continue
        col, path, array = converted
        target = (col, *path)
        if target not in expected:
            unexpected.append(key)
        elif tuple(array.shape) != expected[target]:
            mismatched.append(f"{key}: {tuple(array.shape)} -> {'/'.join(target)} {expected[target]}")
        else:
            flat[target] = array
    missing = sorted("/".join(k) for k in expected.keys() - flat.keys())
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (no segjax counterpart): {sorted(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing keys (segjax leaves with no torch value): {missing}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {mismatched}")
    if problems:
        raise ValueError(f"cannot convert state dict to {what}: " + "; ".join(problems))
    return flax.traverse_util.unflatten_dict(flat)


def _convert_vgg(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """VGG-16 via `backbones.vgg.vgg16_variables_from_torch`, checked like every conversion."""
    from segjax.models.backbones.vgg import VGG16, vgg16_variables_from_torch

    batch_norm = _VGG[name]
    unexpected = sorted(k for k in state_dict if not _VGG_KEY.fullmatch(k))
    if unexpected:
        raise ValueError(f"cannot convert state dict to {name!r}: {len(unexpected)} unexpected keys: {unexpected}")
    arrays = {k: _as_numpy(v) for k, v in state_dict.items()}
    variables = vgg16_variables_from_torch(arrays, batch_norm=batch_norm)
    shapes = jax.eval_shape(lambda: VGG16(batch_norm=batch_norm).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    for col in ("params", "batch_stats"):
        got = flax.traverse_util.flatten_dict(variables[col])
        want = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes.get(col, {})))
        bad = sorted("/".join(k) for k in got.keys() ^ want.keys())
        bad += sorted(f"{'/'.join(k)}: {got[k].shape} vs {want[k].shape}" for k in got.keys() & want.keys()
                      if tuple(got[k].shape) != tuple(want[k].shape))
        if bad:
            raise ValueError(f"cannot convert state dict to {name!r}: {col} differ from VGG16's: {bad}")
    return variables


def _convert_vgg_features(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """VGG-19 convs via `segjax.style.vgg.vgg_features_variables_from_torch`; any key other than
    its convs' and the classifier's (BatchNorm of a `vgg19_bn`, a deeper or shallower VGG's
    convs) is refused by name."""
    from segjax.models.backbones.vgg import torchvision_conv_indices
    from segjax.style.vgg import STAGES, vgg_features_variables_from_torch

    depth = _VGG_FEATURES[name]
    convs = {f"features.{k}.{leaf}" for k in torchvision_conv_indices(False, STAGES[depth])
             for leaf in ("weight", "bias")}
    unexpected = sorted(k for k in state_dict if k not in convs and not re.fullmatch(
        r"classifier\.[036]\.(weight|bias)", k))
    if unexpected:
        raise ValueError(f"cannot convert state dict to {name!r}: {len(unexpected)} unexpected keys: {unexpected}")
    return vgg_features_variables_from_torch(state_dict, depth=depth)


def convert(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Maps a torchvision `state_dict` onto the variables of the segjax model `name`.

    Args:
      name: one of `SUPPORTED` (`resnet50`, `fcn_resnet101`, `deeplabv3_resnet50`, ...). For
        `resnetNN` the result is the variables of `ResNet(depth=NN)` (the `fc` layer is dropped);
        otherwise of `create_model(name, num_classes=<from the state dict>, aux_loss=<whether it
        has aux_classifier.*>)`.
      state_dict: torchvision parameter names -> arrays (numpy arrays or torch tensors).

    Returns:
      `{"params": ..., "batch_stats": ...}` nested dicts of float32 numpy arrays.

    Raises:
      ValueError: unsupported name; keys with no segjax counterpart (unexpected), segjax leaves
        with no torch key (missing), or shape mismatches — each listed by name.
    """
    if name not in SUPPORTED:
        raise ValueError(f"cannot convert {name!r}; supported: {', '.join(SUPPORTED)}")
    if name in _VGG:
        return _convert_vgg(name, state_dict)
    if name in _VGG_FEATURES:
        return _convert_vgg_features(name, state_dict)
    model = _target(name, state_dict)
    if name in _MASKRCNN:
        state_dict = _maskrcnn_fc6_to_nhwc(state_dict, model)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3))))
    skip = (lambda key: key.split(".")[0] == "fc") if name in _CLASSIFIERS else (lambda key: False)
    return convert_state_dict(state_dict, shapes, _path_mapper(name), skip=skip, what=repr(name))


def _maskrcnn_fc6_to_nhwc(state_dict: Mapping[str, Any], model) -> dict[str, Any]:
    """fc6 reads the 7x7 pooled features flattened (C, y, x) in torch, (y, x, C) in segjax."""
    key = "roi_heads.box_head.fc6.weight"
    out = dict(state_dict)
    if key in out:
        w = _as_numpy(out[key])
        c = model.fpn_channels
        if w.ndim != 2 or w.shape[1] != c * 49:
            raise ValueError(f"{key} has shape {w.shape}; expected [representation, {c} * 7 * 7]")
        out[key] = w.reshape(w.shape[0], c, 7, 7).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    return out


def model_config(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """`create_model` arguments reproducing the model `convert(name, state_dict)` targets."""
    if name in _CLASSIFIERS:
        return {"model": name, "backbone_only": True, "depth": _CLASSIFIERS[name]}
    if name in _VGG:
        return {"model": name, "backbone_only": True, "batch_norm": _VGG[name]}
    if name in _VGG_FEATURES:
        return {"model": name, "backbone_only": True, "depth": _VGG_FEATURES[name]}
    model = _target(name, state_dict)
    if name in _MASKRCNN:
        return {"model": name, "num_classes": model.num_classes}
    return {"model": name, "num_classes": model.num_classes, "aux_loss": bool(model.aux_loss)}


CONFIG_FILE = "model.json"
VARIABLES_DIR = "variables"


def save_converted(directory: str, variables: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Writes `variables` with orbax to `directory/variables` and `config` to `directory/model.json`.

    Raises ValueError when `directory/variables` already exists (nothing is overwritten).
    """
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    target = os.path.join(directory, VARIABLES_DIR)
    if os.path.exists(target):
        raise ValueError(f"{target} already exists; choose an empty --workdir directory")
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, jax.tree.map(np.asarray, dict(variables)))
        ckptr.wait_until_finished()
    jsonio.dump(dict(config), os.path.join(directory, CONFIG_FILE), indent=2, sort_keys=True)


def load_converted(directory: str) -> dict[str, Any]:
    """Loads variables written by `python -m segjax.tools.convert_torchvision --workdir=directory`.

    Returns `{"params", "batch_stats"}` as nested dicts of numpy arrays (for `init_from`); the
    model they belong to is described in `directory/model.json` (`read_converted_config`).

    Raises:
      ValueError: `directory` does not hold a converted checkpoint (names the missing path).
    """
    import orbax.checkpoint as ocp

    target = os.path.join(os.path.abspath(directory), VARIABLES_DIR)
    if not os.path.isdir(target):
        raise ValueError(f"no converted weights at {target}; run python -m segjax.tools.convert_torchvision first")
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(target)
    return jax.tree.map(np.asarray, restored)


def read_converted_config(directory: str) -> dict[str, Any]:
    """The `model.json` written next to converted weights (model name, num_classes, aux_loss)."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"no {CONFIG_FILE} in {directory}; is it a --workdir of convert_torchvision?")
    with open(path) as f:
        return json.load(f)


def merge_backbone(variables: Mapping[str, Any], backbone: Mapping[str, Any], *, key: str = "backbone"):
    """Returns `variables` with the `key` subtree of params and batch_stats replaced by `backbone`.

    Args:
      variables: a freshly initialised segmentation model's `{"params", "batch_stats"}`.
      backbone: converted backbone variables, e.g. `convert("resnet50", state_dict)`.
      key: name of the backbone submodule in the model.

    Raises:
      ValueError: when the backbone's leaves (names or shapes) differ from the model's — e.g. a
        ResNet-101 checkpoint for a ResNet-50 model or a `backbone_width` override — listing them.
    """
    out = {}
    for col in ("params", "batch_stats"):
        if not backbone.get(col) and key not in variables.get(col, {}):
            continue  # e.g. VGG-16 without BatchNorm: no statistics on either side
        if key not in variables.get(col, {}):
            raise ValueError(f"variables[{col!r}] has no {key!r} subtree to replace")
        old = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables[col][key]))
        new = flax.traverse_util.flatten_dict(flax.core.unfreeze(backbone.get(col, {})))
        diff = sorted("/".join(k) for k in old.keys() ^ new.keys())
        bad = sorted(
            f"{'/'.join(k)}: {np.shape(new[k])} vs {np.shape(old[k])}"
            for k in old.keys() & new.keys()
            if np.shape(new[k]) != np.shape(old[k])
        )
        if diff or bad:
            raise ValueError(f"backbone {col} do not match the model's {key!r}: names {diff}, shapes {bad}")
        merged = dict(flax.core.unfreeze(variables[col]))
        merged[key] = jax.tree.map(lambda old_leaf, new_leaf: jnp.asarray(new_leaf, old_leaf.dtype),
                                   flax.core.unfreeze(variables[col][key]),
                                   flax.core.unfreeze(backbone.get(col, {})))
        out[col] = merged
    for col in variables:
        out.setdefault(col, variables[col])
    return out
