"""VGG-16/19 feature extractors for style transfer: named activations, computed only as deep as asked.

`VGGFeatures(depth=19, layers=("relu1_1", "relu4_2"))` applied to RGB images in [0, 1] returns
`{"relu1_1": [N, H, W, 64], "relu4_2": [N, H/8, W/8, 512]}`. The layout is torchvision's
`vgg16` / `vgg19` `features` (Simonyan & Zisserman 2015, configurations D and E): five stages of
3x3 convs (padding 1, ReLU), `(2, 2, 3, 3, 3)` convs for depth 16 and `(2, 2, 4, 4, 4)` for depth
19, channels `(1, 2, 4, 8, 8) * width`, each stage followed by a 2x2 stride-2 pool in floor mode.

Layer names (every one can be requested): `conv{s}_{i}` (the conv's output before its ReLU, e.g.
Gatys et al.'s `conv4_2`), `relu{s}_{i}` (after it; what pytorch/examples and most
implementations call the features) and `pool{s}`. The network stops after the deepest requested
layer, so `layers=("relu2_2",)` runs four convs. Parameters are named `conv{s}_{i}/kernel, bias`,
as `segjax.models.backbones.vgg.VGG16`'s: weights converted for the VGG-16 backbone
(`convert("vgg16", ...)`, whose fc6/fc7 are ignored here) fit `VGGFeatures(depth=16)`.

ImageNet normalisation happens here and nowhere else: with `normalize_input=True` (the default)
the module takes RGB in [0, 1] and feeds `(x - IMAGENET_MEAN) / IMAGENET_STD` to conv1_1, which is
what torchvision's weights expect (pytorch/examples' `normalize_batch`, after its division by 255).
Everything in `segjax.style` works on [0, 1] images.

Pooling: `"max"` (torchvision's, the default) or `"avg"`, which Gatys et al. (2016, section 2)
found to give slightly more appealing results. Random initialisation is torchvision's (Kaiming
normal, fan-out, zero bias), so a randomly initialised VGG has activations of the same scale as
torchvision's `vgg19(weights=None)`.

Why not the model registry: `create_model` factories take `num_classes` and return `"logits"`
(or one of the registry's other task outputs), and `tests/models/test_registry.py` sweeps every
registered name as a segmentation model. A feature extractor has neither, so `vgg19` is exposed
here (`segjax.style.vgg19`) instead.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.backbones.vgg import VGG16_STAGES, VGG19_STAGES, torchvision_conv_indices
from segjax.models.layers import conv_impl_kwargs
from segjax.ops.pool import max_pool

STAGES = {16: VGG16_STAGES, 19: VGG19_STAGES}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of images in [0, 1] (torchvision's weights)
IMAGENET_STD = (0.229, 0.224, 0.225)
GATYS_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
GATYS_CONTENT_LAYER = "relu4_2"
POOLINGS = ("max", "avg")


def layer_names(depth: int) -> list[str]:
    """Every layer name of VGG-`depth` in network order (`conv1_1, relu1_1, ..., pool5`)."""
    if depth not in STAGES:
        raise ValueError(f"VGG depth must be one of {sorted(STAGES)}, got {depth!r}")
    names = []
    for s, (num_convs, _) in enumerate(STAGES[depth], start=1):
        for i in range(1, num_convs + 1):
            names += [f"conv{s}_{i}", f"relu{s}_{i}"]
        names.append(f"pool{s}")
    return names


def conv_names(depth: int) -> list[str]:
    """The parameterised layers of VGG-`depth`: `conv1_1 ... conv5_3` (16) or `conv5_4` (19)."""
    return [n for n in layer_names(depth) if n.startswith("conv")]


def imagenet_normalize(images: jax.Array) -> jax.Array:
    """RGB `images` [..., 3] in [0, 1] -> `(images - IMAGENET_MEAN) / IMAGENET_STD`."""
    mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
    std = jnp.asarray(IMAGENET_STD, images.dtype)
    return (images - mean) / std


class VGGFeatures(nn.Module):
    """Named activations of VGG-16/19 (see the module docstring for names, pooling, normalisation).

    Attributes:
      depth: 16 or 19.
      layers: the names to return (any of `layer_names(depth)`); nothing deeper is computed.
      width: channels of stage 1 (64 is VGG; smaller for tiny test models).
      pooling: "max" (torchvision) or "avg" (Gatys et al.'s suggestion).
      normalize_input: take RGB in [0, 1] and apply `imagenet_normalize` first.
      dtype: compute dtype; parameters are float32.

    `__call__(images [N, H, W, 3])` returns `{name: [N, H / 2**k, W / 2**k, C]}` for every name
    in `layers` (floor division by 2 at each pool before it; in the compute dtype). H and W must
    be at least `2**(s-1)` for a layer of stage s (`2**s` for `pool{s}`).
    """

    depth: int = 19
    layers: Sequence[str] = GATYS_STYLE_LAYERS + (GATYS_CONTENT_LAYER,)
    width: int = 64
    pooling: str = "max"
    normalize_input: bool = True
    dtype: Any = jnp.float32

    def validate(self, images: jax.Array) -> None:
        """Raises ValueError naming a bad depth, layer, width, pooling or image shape."""
        names = layer_names(self.depth)
        if isinstance(self.layers, str) or not self.layers:
            raise ValueError(f"layers must be a non-empty sequence of layer names, got {self.layers!r}")
        unknown = [n for n in self.layers if n not in names]
        if unknown:
            raise ValueError(f"unknown VGG-{self.depth} layer(s) {unknown}; available: {', '.join(names)}")
        if not (isinstance(self.width, int) and self.width > 0):
            raise ValueError(f"width must be a positive int, got {self.width!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"VGGFeatures expects images [N, H, W, 3], got shape {tuple(images.shape)}")
        deepest = max(self.layers, key=names.index)
        stage = int(deepest[4] if deepest.startswith("pool") else deepest[-3])
        need = 2 ** (stage if deepest.startswith("pool") else stage - 1)
        if min(images.shape[1:3]) < need:
            raise ValueError(f"layer {deepest} needs images of at least {need}x{need} pixels, "
                             f"got {images.shape[1]}x{images.shape[2]}")

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        self.validate(images)
        wanted = set(self.layers)
        x = images.astype(self.dtype)
        if self.normalize_input:
            x = imagenet_normalize(x)
        out: dict[str, jax.Array] = {}
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's VGG init

        def keep(name: str, value: jax.Array) -> bool:
            if name in wanted:
                out[name] = value
            return len(out) == len(wanted)

        for s, (num_convs, mult) in enumerate(STAGES[self.depth], start=1):
            for i in range(1, num_convs + 1):
                x = nn.Conv(mult * self.width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                            param_dtype=jnp.float32, kernel_init=init, name=f"conv{s}_{i}",
                            **conv_impl_kwargs())(x)
                if keep(f"conv{s}_{i}", x):
                    return out
                x = nn.relu(x)
                if keep(f"relu{s}_{i}", x):
                    return out
            x = max_pool(x, 2, 2) if self.pooling == "max" else nn.avg_pool(x, (2, 2), (2, 2))
            if keep(f"pool{s}", x):
                return out
        raise AssertionError("unreachable: validate() checked every layer name")


def vgg19(**kwargs: Any) -> VGGFeatures:
    """`VGGFeatures(depth=19, **kwargs)`: DESIGN's `vgg19`, the features for style transfer."""
    return VGGFeatures(depth=19, **kwargs)


def vgg_features_variables_from_torch(state_dict: Mapping[str, Any], *, depth: int = 19
                                      ) -> dict[str, dict[str, Any]]:
    """Maps a torchvision `vgg16` / `vgg19` state dict (names -> arrays) onto `VGGFeatures` params.

    `features.{k}.weight` (O, I, 3, 3) -> `conv{s}_{i}/kernel` (3, 3, I, O) and `.bias`, with k the
    torchvision index of each conv (`torchvision_conv_indices`); `classifier.*` has no
    counterpart and is ignored. Returns `{"params": ...}` of float32 numpy arrays. Raises
    ValueError naming a missing key.
    """
    def get(key: str) -> np.ndarray:
        if key not in state_dict:
            raise ValueError(f"state dict has no {key!r} (is it a torchvision vgg{depth}?)")
        value = state_dict[key]
        if hasattr(value, "detach"):  # a torch tensor, without importing torch here
            value = value.detach().cpu().numpy()
        return np.array(value, dtype=np.float32, copy=True)

    params = {}
    for name, k in zip(conv_names(depth), torchvision_conv_indices(False, STAGES[depth]), strict=True):
        params[name] = {"kernel": get(f"features.{k}.weight").transpose(2, 3, 1, 0),
                        "bias": get(f"features.{k}.bias")}
    return {"params": params}


def _read_weight_file(path: str) -> Mapping[str, Any]:
    """Nested variables from a convert_torchvision directory, an .npz or a flax .msgpack file."""
    if os.path.isdir(path):
        from segjax.models.torchvision_import import load_converted

        return load_converted(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--weights {path} does not exist (a convert_torchvision --workdir, "
                                ".npz or .msgpack)")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                return flax.traverse_util.unflatten_dict({tuple(k.split("/")): data[k] for k in data.files})
        if path.endswith(".msgpack"):
            with open(path, "rb") as f:
                tree = flax.serialization.msgpack_restore(f.read())
            if not isinstance(tree, dict):
                raise ValueError(f"holds a {type(tree).__name__}, not a tree of arrays")
            return tree
    except Exception as e:  # zipfile, pickle and msgpack each raise their own kinds
        raise ValueError(f"cannot read weights {path}: {type(e).__name__}: {e}") from None
    raise ValueError(f"weights {path}: expected a convert_torchvision --workdir directory, "
                     "an .npz (keys 'params/conv1_1/kernel', ...) or a flax .msgpack file")


def load_vgg_weights(path: str, *, depth: int = 19) -> tuple[dict[str, Any], int]:
    """Loads VGG-`depth` conv weights; returns `({"params": ...}, width)` for `VGGFeatures`.

    `path` is a directory written by `python -m segjax.tools.convert_torchvision --model=vgg19`
    (or `vgg16`, whose fc6/fc7 are dropped), or an `.npz` / flax `.msgpack` file holding the same
    tree (`params/conv1_1/kernel`, ...; the `params` level may be left out). Extra entries are
    ignored; the width is read from conv1_1.

    Raises:
      ValueError: a missing conv or a kernel of the wrong shape, named with the file.
    """
    variables = _read_weight_file(path)
    tree = variables.get("params", variables)

    def leaf(name: str, key: str) -> Any:
        entry = tree.get(name) if isinstance(tree, Mapping) else None
        return entry.get(key) if isinstance(entry, Mapping) else None

    first = leaf("conv1_1", "kernel")
    if first is None or np.ndim(first) != 4:
        keys = sorted(map(str, tree))[:8] if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(f"weights {path} have no 4-d conv1_1/kernel (found {keys}); is it a VGG?")
    width = int(np.shape(first)[-1])
    shapes = jax.eval_shape(VGGFeatures(depth=depth, layers=("pool5",), width=width).init,
                            jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    params, problems = {}, []
    for name in conv_names(depth):
        for key in ("kernel", "bias"):
            want = tuple(shapes[name][key].shape)
            got = leaf(name, key)
            if got is None:
                problems.append(f"{name}/{key} missing")
            elif tuple(np.shape(got)) != want:
                problems.append(f"{name}/{key} has shape {tuple(np.shape(got))}, expected {want}")
            else:
                params.setdefault(name, {})[key] = np.asarray(got, np.float32)
    if problems:
        raise ValueError(f"weights {path} do not fit VGG-{depth} (width {width}): {'; '.join(problems)}")
    return {"params": params}, width
