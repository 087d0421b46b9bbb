"""The numbers behind the lecture figures, each computed with segjax's own operators and models.

One function per figure; each returns a dict whose values are numpy arrays, numbers, strings or
nested lists/dicts of them (`to_json` turns one into what `numbers.json` stores). Nothing here
draws: `segjax.lectures.draw` turns these dicts into PNGs. The functions take no flags, so the
tests call them directly.

  1 `convolution`            conv2d, conv_as_matrix, conv_transpose2d on the decks' 4x4 example
  2 `interpolation`          resize: nearest / linear / cubic in 1-D and 2-D
  3 `unpooling`              nearest_unpool, bed_of_nails_unpool, max_pool_with_argmax + max_unpool
  4 `fractionally_strided`   conv_transpose2d at stride 2 = zeros inserted + an ordinary conv
  5 `dilation`               receptive fields from gradients of atrous_conv2d stacks, and
                             `deeplab_heads`: the heads of the registered DeepLab models
  6 `fcn_skips`              (segjax.lectures.fcn_demo) FCN-32s/16s/8s trained briefly
  7 `roi_align_sampling`     roi_align's bilinear sampling points, re-derived and checked
  8 `difficulty`             one synthetic_shapes image per difficulty factor
  9 `metric_learning`        triplet_loss geometry and a class-imbalance decision boundary
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segjax import ops

# The decks' worked example (figure 1).
DECK_INPUT = ((4, 5, 8, 7), (1, 8, 8, 8), (3, 6, 6, 4), (6, 5, 7, 8))
DECK_KERNEL = ((1, 4, 1), (1, 4, 3), (3, 3, 1))
DECK_OUTPUT_GRADIENT = (2, 1, 4, 4)  # the 2x2 "output" the transposed convolution maps back


def _plane(a) -> jax.Array:
    """A 2-D array as one NHWC image [1, H, W, 1] (float32)."""
    return jnp.asarray(a, jnp.float32)[None, :, :, None]


def _kernel(a) -> jax.Array:
    """A 2-D array as a one-channel HWIO kernel [kh, kw, 1, 1] (float32)."""
    return jnp.asarray(a, jnp.float32)[:, :, None, None]


def _unplane(x) -> np.ndarray:
    return np.asarray(x)[0, :, :, 0]


def to_json(value: Any, digits: int = 4) -> Any:
    """`value` with arrays as nested lists; integral floats become ints, others are rounded."""
    if isinstance(value, dict):
        return {str(k): to_json(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, digits) for v in value]
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype == bool:
            return arr.tolist()
        if np.issubdtype(arr.dtype, np.integer):
            return arr.astype(np.int64).tolist()
        if np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr)):
            return np.round(arr).astype(np.int64).tolist()
        return np.round(arr.astype(np.float64), digits).tolist()
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, digits)
    return value


# --------------------------------------------------------------------------------------------
# 1. The general convolution


def convolution() -> dict:
    """Figure 1: the decks' 4x4 input, 3x3 kernel, 2x2 output, 4x16 matrix and its transpose.

    Returns `input` [4, 4], `kernel` [3, 3], `conv` [2, 2] (`ops.conv2d`, no padding, stride 1),
    `conv_matrix` [4, 16] (`ops.conv_as_matrix`), `conv_via_matrix` [2, 2] (C @ x),
    `gradient` [4] (the vector the transposed convolution is applied to), `transposed` [4, 4]
    (`ops.conv_transpose2d`) and `transposed_via_matrix` [4, 4] (C^T @ g).
    """
    x, w = _plane(DECK_INPUT), _kernel(DECK_KERNEL)
    conv = _unplane(ops.conv2d(x, w))
    matrix = np.asarray(ops.conv_as_matrix(w, (4, 4)))
    g = np.asarray(DECK_OUTPUT_GRADIENT, np.float32)
    transposed = _unplane(ops.conv_transpose2d(_plane(g.reshape(2, 2)), w))
    return {
        "input": np.asarray(DECK_INPUT), "kernel": np.asarray(DECK_KERNEL), "conv": conv,
        "conv_matrix": matrix,
        "conv_via_matrix": (matrix @ np.asarray(DECK_INPUT, np.float32).ravel()).reshape(2, 2),
        "gradient": g, "transposed": transposed,
        "transposed_via_matrix": (matrix.T @ g).reshape(4, 4),
    }


# --------------------------------------------------------------------------------------------
# 2. Interpolation

INTERPOLATION_SAMPLES = (1.0, 3.0, 2.0, 4.5, 2.5, 0.5)
INTERPOLATION_IMAGE = ((0.0, 1.0, 0.2, 0.6), (0.8, 0.3, 1.0, 0.0),
                       (0.1, 0.9, 0.4, 0.7), (0.5, 0.0, 0.6, 1.0))
_METHODS_1D = {"nearest": "nearest", "linear": "bilinear", "cubic": "bicubic"}


def sample_positions(n_in: int, n_out: int) -> np.ndarray:
    """Where output sample d lies in input-sample units with `align_corners=False`
    (input sample i at position i): (d + 0.5) * n_in / n_out - 0.5."""
    return (np.arange(n_out) + 0.5) * n_in / n_out - 0.5


def interpolation(factor_1d: int = 16, factor_2d: int = 4) -> dict:
    """Figure 2: `ops.resize` through the same samples (1-D) and of a small image (2-D).

    1-D: `samples` [6] upsampled by `factor_1d` with nearest / linear / cubic (resize of a
    [1, 1, 6, 1] image to width 6 * factor_1d, align_corners=False); `positions` are the output
    samples' coordinates in input units. 2-D: the 4x4 `image` upsampled by `factor_2d` with
    nearest / bilinear / bicubic; `bicubic_range` shows the cubic kernel's overshoot.
    """
    s = np.asarray(INTERPOLATION_SAMPLES, np.float32)
    n_out = len(s) * factor_1d
    signal = jnp.asarray(s)[None, None, :, None]
    curves = {name: np.asarray(ops.resize(signal, (1, n_out), method))[0, 0, :, 0]
              for name, method in _METHODS_1D.items()}
    img = np.asarray(INTERPOLATION_IMAGE, np.float32)
    size = img.shape[0] * factor_2d
    images = {m: _unplane(ops.resize(_plane(img), (size, size), m))
              for m in ("nearest", "bilinear", "bicubic")}
    return {
        "samples": s, "factor_1d": factor_1d, "positions": sample_positions(len(s), n_out),
        "upsampled_1d": curves, "image": img, "factor_2d": factor_2d, "upsampled_2d": images,
        "bicubic_range": [float(images["bicubic"].min()), float(images["bicubic"].max())],
    }


# --------------------------------------------------------------------------------------------
# 3. Unpooling

UNPOOL_INPUT = ((3, 1, 2, 6), (5, 4, 7, 1), (2, 9, 1, 3), (1, 0, 4, 8))


def unpooling() -> dict:
    """Figure 3: the three unpoolings of the 2x2 max-pooled 4x4 `input`.

    `pooled`/`indices` come from `ops.max_pool_with_argmax(window 2, stride 2)` (indices are flat
    `h * 4 + w` positions, the "switches"); `nearest`, `bed_of_nails` and `max_unpool` [4, 4]
    from `ops.nearest_unpool`, `ops.bed_of_nails_unpool` and `ops.max_unpool(pooled, indices)`.
    """
    x = _plane(UNPOOL_INPUT)
    pooled, indices = ops.max_pool_with_argmax(x, 2, 2)
    return {
        "input": np.asarray(UNPOOL_INPUT), "pooled": _unplane(pooled),
        "indices": _unplane(indices),
        "nearest": _unplane(ops.nearest_unpool(pooled, 2)),
        "bed_of_nails": _unplane(ops.bed_of_nails_unpool(pooled, 2)),
        "max_unpool": _unplane(ops.max_unpool(pooled, indices, (4, 4))),
    }


# --------------------------------------------------------------------------------------------
# 4. Transposed convolution as fractionally strided convolution

STRIDED_INPUT = ((1, 2, 1), (0, 3, 2), (2, 1, 0))


def fractionally_strided(stride: int = 2, padding: int = 1, output_padding: int = 1) -> dict:
    """Figure 4: `ops.conv_transpose2d` at `stride` as zero insertion + an ordinary convolution.

    The 3x3 `input` gets `stride - 1` zeros between its samples (`ops.bed_of_nails_unpool`,
    cropped to (n - 1) * stride + 1 + output_padding), then `k - 1 - padding` zeros around it
    (`padded`); the stride-1 `ops.conv2d` of that with the flipped deck kernel (`flipped_kernel`)
    is `via_zeros`, equal to `transposed`, segjax's conv_transpose2d (which computes the same sum
    phase by phase without multiplying any inserted zero).
    """
    y = _plane(STRIDED_INPUT)
    w = _kernel(DECK_KERNEL)
    k = w.shape[0]
    transposed = _unplane(ops.conv_transpose2d(y, w, stride=stride, padding=padding,
                                               output_padding=output_padding))
    n = y.shape[1]
    keep = (n - 1) * stride + 1 + output_padding
    zeros_inserted = ops.bed_of_nails_unpool(y, stride)[:, :keep, :keep]
    edge = k - 1 - padding
    padded = jnp.pad(zeros_inserted, ((0, 0), (edge, edge), (edge, edge), (0, 0)))
    flipped = w[::-1, ::-1]
    via_zeros = _unplane(ops.conv2d(padded, flipped))
    return {
        "input": np.asarray(STRIDED_INPUT), "kernel": np.asarray(DECK_KERNEL),
        "stride": stride, "padding": padding, "output_padding": output_padding,
        "zeros_inserted": _unplane(zeros_inserted), "padded": _unplane(padded),
        "flipped_kernel": np.asarray(flipped)[:, :, 0, 0], "via_zeros": via_zeros,
        "transposed": transposed,
    }


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


# --------------------------------------------------------------------------------------------
# 7. ROI Align

ROI_BOX = (1.6, 1.2, 6.3, 5.9)  # x1, y1, x2, y2 in feature-map pixels (spatial_scale 1)


def roi_sampling_points(box, output_size, sampling_ratio: int, aligned: bool = True,
                        spatial_scale: float = 1.0):
    """Sample coordinates of `ops.roi_align` for one box: ys [ph, g], xs [pw, g].

    The same rule as roi_align (torchvision's): shift by half a pixel when `aligned`, split the
    box into output_size bins and put `sampling_ratio` evenly spaced samples in each bin along
    each axis, at (bin + (i + 0.5) / g) * bin_size from the box's corner. Pixel (r, c) of the
    map is at coordinates (r, c) (its centre).
    """
    ph, pw = output_size
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (v * spatial_scale - offset for v in box)
    w, h = x2 - x1, y2 - y1
    if not aligned:
        w, h = max(w, 1.0), max(h, 1.0)
    frac = (np.arange(sampling_ratio) + 0.5) / sampling_ratio
    ys = y1 + (np.arange(ph)[:, None] + frac[None]) * (h / ph)
    xs = x1 + (np.arange(pw)[:, None] + frac[None]) * (w / pw)
    return ys, xs


def bilinear_at(feature: np.ndarray, y: float, x: float) -> float:
    """torchvision's ROI Align bilinear read of a [H, W] map at (y, x): 0 outside [-1, H] x
    [-1, W], coordinates clamped at 0 and at the last pixel."""
    h, w = feature.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        ly = 0.0
    else:
        y1, ly = y0 + 1, y - y0
    if x0 >= w - 1:
        x0 = x1 = w - 1
        lx = 0.0
    else:
        x1, lx = x0 + 1, x - x0
    return float((1 - ly) * (1 - lx) * feature[y0, x0] + (1 - ly) * lx * feature[y0, x1]
                 + ly * (1 - lx) * feature[y1, x0] + ly * lx * feature[y1, x1])


def roi_align_sampling(output_size=(2, 2), sampling_ratio: int = 2, size: int = 8) -> dict:
    """Figure 7: one box on a `size` x `size` feature map, its bins and bilinear sampling points.

    `pooled` [ph, pw] is `ops.roi_align(aligned=True)`; `from_points` re-derives it as the mean
    of `bilinear_at` over each bin's `sample_ys` x `sample_xs` points (`roi_sampling_points`), so
    the drawn points are the ones the op reads.
    """
    feature = np.asarray(np.random.default_rng(7).integers(0, 10, (size, size)), np.float32)
    pooled = np.asarray(ops.roi_align(jnp.asarray(feature)[None, :, :, None],
                                      jnp.asarray([[0.0, *ROI_BOX]], jnp.float32), output_size,
                                      sampling_ratio=sampling_ratio, aligned=True))[0, :, :, 0]
    ys, xs = roi_sampling_points(ROI_BOX, output_size, sampling_ratio)
    from_points = np.array([[np.mean([bilinear_at(feature, y, x) for y in ys[i] for x in xs[j]])
                             for j in range(output_size[1])] for i in range(output_size[0])])
    return {"feature": feature, "box": list(ROI_BOX), "output_size": list(output_size),
            "sampling_ratio": sampling_ratio, "sample_ys": ys, "sample_xs": xs,
            "pooled": pooled, "from_points": from_points}


# --------------------------------------------------------------------------------------------
# 8. Why segmentation is difficult


def _builder_config(name: str):
    from segjax.data.builders.synthetic_shapes import BUILDER_CONFIGS

    return next(c for c in BUILDER_CONFIGS if c.name == name)


def difficulty(min_objects: int = 3, class_count_images: int = 64) -> dict:
    """Figure 8: the same scene under each difficulty factor of `synthetic_shapes`.

    `index` is the first training example whose clean scene has at least `min_objects` objects;
    every factor's config (the builder's `BUILDER_CONFIGS`, which share the scene's random stream)
    generates that example with `synthetic_shapes.generate`. Per factor: `image` [S, S, 3],
    `label` [S, S], `classes`, `visible_fraction`; plus `label_disagreement` (pixels whose label
    differs from the clean label, ground-truth variance), `noise_rms` (RMS difference from the
    clean image) and `class_counts` (objects per class over the first `class_count_images`
    examples, clean vs imbalance).
    """
    from segjax.data.builders.synthetic_shapes import FACTORS, generate

    clean_cfg = _builder_config("clean")
    index = next(i for i in range(1000)
                 if len(generate(clean_cfg, "train", i)["classes"]) >= min_objects)
    examples = {"clean": generate(clean_cfg, "train", index)}
    for factor in FACTORS:
        examples[factor] = generate(_builder_config(factor), "train", index)
    out: dict[str, Any] = {"index": index, "split": "train", "factors": {}}
    clean_image = examples["clean"]["image"].astype(np.float64)
    for name, ex in examples.items():
        out["factors"][name] = {
            "image": ex["image"], "label": ex["label"][..., 0],
            "classes": ex["classes"], "visible_fraction": np.round(ex["visible_fraction"], 3),
            "label_disagreement": float(np.mean(ex["label"] != ex["clean_label"])),
            "noise_rms": float(np.sqrt(np.mean((ex["image"] - clean_image) ** 2))),
        }
    counts = {}
    for name in ("clean", "imbalance"):
        cfg = _builder_config(name)
        classes = np.concatenate([generate(cfg, "train", i)["classes"]
                                  for i in range(class_count_images)])
        counts[name] = np.bincount(classes, minlength=6)[1:]
    out["class_counts"] = counts
    out["class_count_images"] = class_count_images
    return out


# --------------------------------------------------------------------------------------------
# 9. Metric learning and class imbalance (needs segjax.losses.triplet_loss)


def has_triplet_loss() -> bool:
    """Whether `segjax.losses` provides `triplet_loss` (figure 9 is skipped without it)."""
    from segjax import losses

    return hasattr(losses, "triplet_loss")


def _fit_linear(points, labels, class_weights, steps: int = 300, lr: float = 0.1):
    """A linear 2-class classifier [2 -> 2] trained with `losses.cross_entropy` and optax SGD
    (full batch); returns (weights [2, 2], bias [2])."""
    import optax

    from segjax import losses

    params = {"w": jnp.zeros((2, 2), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
    opt = optax.sgd(lr, momentum=0.9)
    state = opt.init(params)
    x, y = jnp.asarray(points, jnp.float32), jnp.asarray(labels, jnp.int32)

    def loss_fn(p):
        total, count = losses.cross_entropy(x @ p["w"] + p["b"], y, ignore_label=-1,
                                            class_weights=class_weights)
        return total / count

    @jax.jit
    def step(p, s):
        g = jax.grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return np.asarray(params["w"]), np.asarray(params["b"])


def metric_learning(margin: float = 1.0, grid: int = 61) -> dict:
    """Figure 9: triplet-loss geometry and the class-imbalance decision boundary.

    Triplet: anchor a and positive p fixed in 2-D; `loss_map` [grid, grid] is
    `losses.triplet_loss([a, p, n], [0, 0, 1], margin, mining="all")`'s sum over the negative
    n's position on a grid over [-3, 3]^2: non-zero while n lies within d(a, p) + margin of the
    anchor or of the positive (both act as anchors), zero beyond.

    Imbalance: two Gaussian classes in 2-D, `balanced` (200 / 200) and `imbalanced` (200 / 10
    of class 1); linear classifiers trained with `losses.cross_entropy`, on the imbalanced set
    also with inverse-frequency `class_weights`. `boundary_x` is where each boundary crosses the
    x axis (the classes differ along x): the imbalanced one moves into the minority class.
    """
    from segjax import losses

    anchor, positive = np.array([-0.5, 0.0]), np.array([0.5, 0.0])
    coords = np.linspace(-3, 3, grid)
    negatives = np.stack(np.meshgrid(coords, coords, indexing="xy"), -1).reshape(-1, 2)
    labels = jnp.asarray([0, 0, 1])

    def loss_at(n):
        emb = jnp.stack([jnp.asarray(anchor, jnp.float32), jnp.asarray(positive, jnp.float32), n])
        total, _ = losses.triplet_loss(emb, labels, margin=margin, mining="all")
        return total

    loss_map = np.asarray(jax.vmap(loss_at)(jnp.asarray(negatives, jnp.float32))).reshape(grid, grid)

    rng = np.random.default_rng(0)

    def sample(n0, n1):
        pts = np.concatenate([rng.normal([-1.0, 0.0], 0.8, (n0, 2)),
                              rng.normal([1.0, 0.0], 0.8, (n1, 2))])
        return pts, np.concatenate([np.zeros(n0, int), np.ones(n1, int)])

    sets = {"balanced": sample(200, 200), "imbalanced": sample(200, 10)}
    fits = {"balanced": _fit_linear(*sets["balanced"], None),
            "imbalanced": _fit_linear(*sets["imbalanced"], None),
            "imbalanced_weighted": _fit_linear(*sets["imbalanced"], jnp.asarray([1.0, 20.0]))}
    boundary = {}
    for name, (w, b) in fits.items():
        dw, db = w[:, 1] - w[:, 0], b[1] - b[0]  # class 1 wins where dw . x + db > 0
        boundary[name] = {"w": dw, "b": float(db), "boundary_x": float(-db / dw[0])}
    return {"anchor": anchor, "positive": positive, "margin": margin, "grid": coords,
            "loss_map": loss_map, "d_ap": float(np.linalg.norm(anchor - positive)),
            "points": {k: v[0] for k, v in sets.items()},
            "labels": {k: v[1] for k, v in sets.items()}, "boundaries": boundary}
