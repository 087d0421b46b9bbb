"""Figure 5: receptive fields of dilated convolutions, and the heads of the DeepLab models."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segjax import ops
from segjax.lectures.data._common import _unplane


# --------------------------------------------------------------------------------------------
# 5. Dilated convolution: receptive fields, and the DeepLab progression


def receptive_field(rates: Sequence[int], size: int = 25) -> np.ndarray:
    """Gradient [size, size] of the centre output pixel of a stack of 3x3 convolutions.

    Layer l is `ops.atrous_conv2d(x, ones[3, 3, 1, 1], rates[l])` (SAME padding); the gradient
    of the centre output with respect to the input counts the paths from each input pixel to it,
    so its non-zero support is the receptive field (drawn from the op, not by hand). `size` must
    exceed the field's extent 1 + 2 * sum(rates) so the border plays no part.
    """
    extent = 1 + 2 * sum(rates)
    if extent > size:
        raise ValueError(f"size {size} is smaller than the receptive field {extent} of {rates}")
    w = jnp.ones((3, 3, 1, 1), jnp.float32)
    c = size // 2

    def centre(x):
        for rate in rates:
            x = ops.atrous_conv2d(x, w, rate)
        return x[0, c, c, 0]

    return _unplane(jax.grad(centre)(jnp.zeros((1, size, size, 1), jnp.float32)))


def extent(field: np.ndarray) -> int:
    """Side of the bounding square of the non-zero entries of a centred field."""
    rows = np.flatnonzero(np.any(field != 0, axis=1))
    cols = np.flatnonzero(np.any(field != 0, axis=0))
    return int(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)


RF_RATES = (1, 2, 3)
RF_LAYERS = (1, 2, 3)


def dilation(size: int = 25) -> dict:
    """Figure 5 (top): receptive fields of 3x3 stacks as the rate grows.

    `constant[f"rate{r}_layers{L}"]`: L layers at rate r, `extent` 1 + 2 r L (what the gradient
    shows) with only `support` = (2 L + 1)^2 pixels seen (the gridding of a constant rate);
    `exponential[f"layers{L}"]`: rates 1, 2, ..., 2^(L-1) (Yu & Koltun), extent 2^(L+1) - 1, every
    pixel seen. `fields` holds the gradients themselves.
    """
    constant, exponential, fields = {}, {}, {}
    for r in RF_RATES:
        for layers in RF_LAYERS:
            key = f"rate{r}_layers{layers}"
            field = receptive_field((r,) * layers, size)
            fields[key] = field
            constant[key] = {"rates": [r] * layers, "extent": extent(field),
                             "support": int(np.count_nonzero(field))}
    for layers in RF_LAYERS:
        rates = tuple(2 ** i for i in range(layers))
        field = receptive_field(rates, size)
        fields[f"exp_layers{layers}"] = field
        exponential[f"layers{layers}"] = {"rates": list(rates), "extent": extent(field),
                                          "support": int(np.count_nonzero(field))}
    return {"size": size, "constant": constant, "exponential": exponential, "fields": fields}


DEEPLAB_MODELS = (("v1", "deeplabv1_vgg16"), ("v2", "deeplabv2_resnet101"),
                  ("v3", "deeplabv3_resnet18"), ("v3+", "deeplabv3plus_resnet18"))


def conv_layers(model, image_size: int = 64) -> list[dict]:
    """Every convolution `model` applies to one `image_size` image, in call order.

    Found by intercepting the `__call__` of each conv module while `jax.eval_shape` traces
    `model.init` (no compute). Each entry: `path` ("classifier/aspp/atrous_0/conv"), `type`,
    `kernel`, `dilation`, `features`, `in_channels`, `input_hw`, `input_stride` (image size /
    input map size) and `input_id` (equal for convs that read the very same tensor: parallel
    branches, as opposed to sequential layers).
    """
    import flax.linen as nn

    from segjax.models.layers import AtrousConv, ConvTranspose

    layers, inputs = [], []  # `inputs` keeps the traced inputs alive, so `is` is meaningful

    def record(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == "__call__" and isinstance(m, (nn.Conv, AtrousConv, ConvTranspose)):
            x = args[0]
            if isinstance(m, nn.Conv):
                kernel, dil = m.kernel_size, m.kernel_dilation or 1
            else:
                kernel, dil = m.kernel_size, m.rate if isinstance(m, AtrousConv) else m.dilation
            kernel = kernel[0] if isinstance(kernel, (tuple, list)) else kernel
            dil = dil[0] if isinstance(dil, (tuple, list)) else dil
            input_id = next((i for i, seen in enumerate(inputs) if seen is x), len(inputs))
            if input_id == len(inputs):
                inputs.append(x)
            layers.append({"path": "/".join(m.scope.path), "type": type(m).__name__,
                           "kernel": int(kernel), "dilation": int(dil),
                           "features": int(m.features), "in_channels": int(x.shape[-1]),
                           "input_hw": tuple(x.shape[1:3]),
                           "input_stride": image_size / x.shape[1], "input_id": input_id})
        return next_fun(*args, **kwargs)

    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    inputs.clear()
    return layers


def _is_head(path: str) -> bool:
    """The head: everything outside the backbone, plus VGG's fc6/fc7 (DeepLab v1's atrous head
    lives in the backbone's fully connected layers, turned convolutional)."""
    parts = path.split("/")
    return parts[0] != "backbone" or parts[1].startswith("fc")


def deeplab_heads(image_size: int = 64) -> dict:
    """Figure 5 (bottom): the heads of the registered DeepLab models, read off the models.

    For each version in `DEEPLAB_MODELS`: `model` (registry name), `output_stride` (image size /
    the head's input map), `backbone_dilations` (the rates used inside the backbone) and
    `stages`: the head's convolutions grouped into stages of parallel branches (convs reading the
    same tensor, or its global average, are one stage), each conv as `path`, `kernel`,
    `dilation`, `features`, `input_stride`; `merges`: per stage, how its branches are combined
    ("concatenate" when the next conv reads their summed widths, else "sum"; None for one conv).
    """
    from segjax.models import create_model

    out = {}
    for version, name in DEEPLAB_MODELS:
        layers = conv_layers(create_model(name, num_classes=21), image_size)
        head = [layer for layer in layers if _is_head(layer["path"])]
        backbone = [layer for layer in layers if not _is_head(layer["path"])]
        stages: list[list[dict]] = []
        stage_input = None
        for layer in head:
            # A conv on a 1x1 (globally pooled) map next to parallel branches is the image-level
            # pooling branch: it reads the mean of the branches' input.
            pooled_branch = layer["input_hw"] == (1, 1) and stages and len(stages[-1]) > 1
            if stages and (layer["input_id"] == stage_input or pooled_branch):
                stages[-1].append(layer)
            else:
                stages.append([layer])
                stage_input = layer["input_id"]
        merges = []  # how each stage's branches are combined: by the next conv's input width
        for i, stage in enumerate(stages):
            width = sum(layer["features"] for layer in stage)
            following = stages[i + 1][0]["in_channels"] if i + 1 < len(stages) else None
            merges.append(None if len(stage) == 1 else
                          "concatenate" if following == width else "sum")
        out[version] = {
            "model": name,
            "output_stride": int(round(head[0]["input_stride"])),
            "backbone_dilations": sorted({layer["dilation"] for layer in backbone} - {1}),
            "stages": [[{k: (layer["path"].removeprefix("classifier/") if k == "path" else
                             (int(round(layer[k])) if k == "input_stride" else layer[k]))
                         for k in ("path", "kernel", "dilation", "features", "input_stride")}
                        for layer in stage] for stage in stages],
            "merges": merges,
        }
    return out
