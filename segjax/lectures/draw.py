"""Matplotlib (Agg) drawings of the lecture figures from the dicts of `segjax.lectures.data`.

Each `draw_*` takes a figure's data dict and a PNG path and only draws: every number it shows
comes from the dict. PNGs are saved without a software version in their metadata, so reruns are
byte-identical on one machine.
"""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=80, metadata={"Software": None})
    _plt().close(fig)


def _fmt(v) -> str:
    v = float(v)
    return f"{int(round(v))}" if abs(v - round(v)) < 1e-6 else f"{v:.2f}"


def grid(ax, a, title: str = "", *, cmap: str = "Blues", highlight=None, fontsize: int = 10,
         numbers: bool = True, vmin=None, vmax=None) -> None:
    """Draws matrix `a` as coloured cells with its numbers; `highlight` is a bool mask of cells
    to outline in red."""
    a = np.asarray(a, np.float64)
    if a.ndim == 1:
        a = a[None]
    lo = a.min() if vmin is None else vmin
    hi = (a.max() if a.max() > a.min() else a.min() + 1) if vmax is None else vmax
    ax.imshow(a, cmap=cmap, vmin=lo, vmax=hi)
    if numbers:
        for (i, j), v in np.ndenumerate(a):
            ax.text(j, i, _fmt(v), ha="center", va="center", fontsize=fontsize,
                    color="white" if (v - lo) > 0.6 * (hi - lo) else "black")
    if highlight is not None:
        for i, j in zip(*np.nonzero(np.asarray(highlight))):
            ax.add_patch(_plt().Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


# 1 -------------------------------------------------------------------------------------------
def draw_convolution(d: dict, path: str) -> None:
    plt = _plt()
    fig = plt.figure(figsize=(12, 9))
    gs = fig.add_gridspec(3, 6, height_ratios=[1.2, 1, 1.2])
    window = np.zeros((4, 4), bool)
    window[:3, :3] = True
    grid(fig.add_subplot(gs[0, 0:2]), d["input"], "input x (4x4), first window", highlight=window)
    grid(fig.add_subplot(gs[0, 2:4]), d["kernel"], "kernel w (3x3)", cmap="Oranges")
    grid(fig.add_subplot(gs[0, 4:6]), d["conv"], "conv2d(x, w) (2x2)", cmap="Greens", fontsize=12)
    ax = fig.add_subplot(gs[1, :])
    grid(ax, d["conv_matrix"], "conv_as_matrix(w, (4, 4)): C (4x16), conv2d(x, w).ravel() = "
         "C @ x.ravel()", cmap="Oranges", fontsize=9)
    grid(fig.add_subplot(gs[2, 0:2]), np.reshape(d["gradient"], (2, 2)), "g (2x2) = [2, 1, 4, 4]",
         cmap="Greens", fontsize=12)
    grid(fig.add_subplot(gs[2, 2:5]), d["transposed"],
         "conv_transpose2d(g, w) = C.T @ g (4x4)", cmap="Purples")
    fig.text(0.86, 0.18, "transposed conv:\nthe same matrix,\ntransposed:\n2x2 -> 4x4",
             fontsize=10, ha="center")
    fig.suptitle("1. The general convolution as a matrix, and its transpose", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


# 2 -------------------------------------------------------------------------------------------
def draw_interpolation(d: dict, path: str) -> None:
    plt = _plt()
    fig = plt.figure(figsize=(12, 6.5))
    gs = fig.add_gridspec(2, 4, height_ratios=[1.1, 1])
    ax = fig.add_subplot(gs[0, :])
    styles = {"nearest": ("tab:gray", "-"), "linear": ("tab:blue", "-"), "cubic": ("tab:red", "-")}
    for name, values in d["upsampled_1d"].items():
        c, ls = styles[name]
        ax.plot(d["positions"], values, ls, color=c, label=f"{name} (resize, x{d['factor_1d']})",
                drawstyle="steps-mid" if name == "nearest" else "default")
    ax.plot(np.arange(len(d["samples"])), d["samples"], "ko", ms=7, label="samples")
    ax.set_xlabel("position (input samples at 0, 1, ..., align_corners=False)")
    ax.legend(fontsize=9)
    ax.set_title("1-D: the same samples, three interpolants", fontsize=10)
    lo, hi = d["bicubic_range"]
    vmin, vmax = min(lo, 0.0), max(hi, 1.0)
    grid(fig.add_subplot(gs[1, 0]), d["image"], "input 4x4", cmap="viridis", vmin=vmin, vmax=vmax,
         fontsize=8)
    for k, m in enumerate(("nearest", "bilinear", "bicubic")):
        extra = f"\nrange [{lo:.2f}, {hi:.2f}]" if m == "bicubic" else ""
        grid(fig.add_subplot(gs[1, k + 1]), d["upsampled_2d"][m], f"{m} x{d['factor_2d']}{extra}",
             cmap="viridis", numbers=False, vmin=vmin, vmax=vmax)
    fig.suptitle("2. Interpolation: nearest, (bi)linear, (bi)cubic (segjax.ops.resize)", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


# 3 -------------------------------------------------------------------------------------------
def draw_unpooling(d: dict, path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.8))
    switches = np.zeros((4, 4), bool)
    switches.flat[np.asarray(d["indices"]).ravel()] = True
    grid(axes[0], d["input"], "input 4x4 (maxima outlined)", highlight=switches)
    pooled = np.asarray(d["pooled"])
    grid(axes[1], pooled, "max_pool_with_argmax 2x2\n(index under each value)", cmap="Greens")
    for (i, j), idx in np.ndenumerate(np.asarray(d["indices"])):
        axes[1].text(j, i + 0.3, f"idx {idx}", ha="center", fontsize=8, color="gray")
    grid(axes[2], d["nearest"], "nearest_unpool", cmap="Greens")
    grid(axes[3], d["bed_of_nails"], "bed_of_nails_unpool", cmap="Greens")
    grid(axes[4], d["max_unpool"], "max_unpool(pooled, indices)", cmap="Greens", highlight=switches)
    fig.suptitle("3. Unpooling the pooled map three ways", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


# 4 -------------------------------------------------------------------------------------------
def draw_fractionally_strided(d: dict, path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6), gridspec_kw={"width_ratios": [3, 8, 3, 6]})
    grid(axes[0], d["input"], "input y (3x3)", cmap="Greens", fontsize=12)
    padded = np.asarray(d["padded"])
    s, k = d["stride"], np.shape(d["kernel"])[0]
    edge = k - 1 - d["padding"]
    real = np.zeros(padded.shape, bool)
    n = np.shape(d["input"])[0]
    real[edge:edge + (n - 1) * s + 1:s, edge:edge + (n - 1) * s + 1:s] = True
    grid(axes[1], padded, f"{s - 1} zero(s) inserted between samples (bed_of_nails_unpool),\n"
         f"{edge} around, +{d['output_padding']} output_padding", cmap="Greens", highlight=real,
         fontsize=10)
    grid(axes[2], d["flipped_kernel"], "flipped kernel", cmap="Oranges", fontsize=12)
    grid(axes[3], d["transposed"], f"conv2d(...) = conv_transpose2d(y, w,\nstride={s}, "
         f"padding={d['padding']}, output_padding={d['output_padding']})", cmap="Purples")
    fig.suptitle("4. Transposed convolution = a stride-1 convolution over zero-inserted input "
                 "(\"fractionally strided\")", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


# 5 -------------------------------------------------------------------------------------------
def _deeplab_column(ax, version: str, info: dict) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    dil = ", ".join(map(str, info["backbone_dilations"])) or "none"
    ax.set_title(f"{version}: {info['model']}\noutput stride {info['output_stride']}, "
                 f"backbone rates {dil}", fontsize=9)
    step = 0.145
    for s, (stage, merge) in enumerate(zip(info["stages"], info["merges"])):
        y = 0.93 - s * step
        width = 1.0 / len(stage)
        for b, layer in enumerate(stage):
            x = (b + 0.5) * width
            name = layer["path"].split("/")
            name = name[-2] if name[-1] == "conv" and len(name) > 1 else name[-1]
            rate = f" r{layer['dilation']}" if layer["dilation"] > 1 else ""
            if layer["input_stride"] >= 32:
                where = "\n(global)"
            elif layer["input_stride"] != info["output_stride"]:
                where = f"\n(stride {layer['input_stride']})"
            else:
                where = ""
            text = f"{name}\n{layer['kernel']}x{layer['kernel']}{rate}\n{layer['features']}{where}"
            colour = "#f4a582" if layer["dilation"] > 1 else (
                "#92c5de" if layer["input_stride"] < info["output_stride"] else "#e0e0e0")
            ax.text(x, y, text, ha="center", va="top", fontsize=6.5 if len(stage) > 3 else 8,
                    bbox=dict(boxstyle="round,pad=0.25", fc=colour, ec="black", lw=0.5))
        below = y - 0.09
        if merge:
            ax.text(0.5, below, merge, ha="center", va="center", fontsize=8, style="italic")
        if s + 1 < len(info["stages"]):
            ax.annotate("", xy=(0.5, y - step + 0.005), xytext=(0.5, below - 0.02),
                        arrowprops=dict(arrowstyle="->"))


def draw_dilation(d: dict, heads: dict, path: str) -> None:
    plt = _plt()
    fig = plt.figure(figsize=(13, 15))
    rows = [(f"rate {r}", [f"rate{r}_layers{n}" for n in (1, 2, 3)], "constant")
            for r in (1, 2, 3)] + [("rates 1, 2, 4", [f"exp_layers{n}" for n in (1, 2, 3)],
                                   "exponential")]
    gs = fig.add_gridspec(5, 4, height_ratios=[1, 1, 1, 1, 3.2])
    c = d["size"] // 2
    half = 10
    for r, (label, keys, kind) in enumerate(rows):
        for col, key in enumerate(keys):
            ax = fig.add_subplot(gs[r, col])
            field = np.asarray(d["fields"][key])[c - half:c + half + 1, c - half:c + half + 1]
            ax.imshow(np.log1p(field), cmap="magma")
            info = d[kind][key if kind == "constant" else key.replace("exp_", "")]
            ax.set_title(f"{label}, {col + 1} layer(s): extent {info['extent']}, "
                         f"{info['support']} px", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    ax = fig.add_subplot(gs[0:4, 3])
    ax.axis("off")
    ax.text(0, 0.5, "Receptive field of the centre output pixel\nof a stack of 3x3 "
            "atrous_conv2d,\nread off the gradient d out / d input\n(log of the number of "
            "paths).\n\nextent = 1 + 2 * (sum of rates):\nconstant rate r, L layers: 1 + 2 r L\n"
            "but only (2L + 1)^2 pixels seen (gridding);\nrates 1, 2, 4: 2^(L+1) - 1, dense.",
            fontsize=10, va="center")
    for k, (version, info) in enumerate(heads.items()):
        _deeplab_column(fig.add_subplot(gs[4, k]), version, info)
    fig.suptitle("5. Scaling up the dilation; the DeepLab heads v1 -> v2 (ASPP) -> v3 -> v3+ "
                 "(read from the registered models)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


# 6 -------------------------------------------------------------------------------------------
def _palette():
    from segjax.data.datasets import get_dataset_info

    return get_dataset_info("synthetic_shapes").palette


def draw_fcn(d: dict, path: str) -> None:
    from segjax.visualize import colorize

    plt = _plt()
    palette = _palette()
    models = d["models"]
    fig, axes = plt.subplots(1, 2 + len(models), figsize=(3 * (2 + len(models)), 3.6))
    axes[0].imshow(d["image"])
    axes[0].set_title("validation image", fontsize=10)
    axes[1].imshow(colorize(np.asarray(d["label"]), palette, ignore_label=255))
    axes[1].set_title("ground truth", fontsize=10)
    for ax, (title, m) in zip(axes[2:], models.items()):
        ax.imshow(colorize(np.asarray(m["prediction"]), palette))
        ax.set_title(f"{title}\nmIoU {m['miou']:.3f} (val)", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"6. FCN skips: {d['recipe']['optimizer']}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


# 7 -------------------------------------------------------------------------------------------
def draw_roi_align(d: dict, path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), gridspec_kw={"width_ratios": [2, 1]})
    feature = np.asarray(d["feature"])
    grid(axes[0], feature, "", cmap="Blues", fontsize=9)
    x1, y1, x2, y2 = (v - 0.5 for v in d["box"])  # aligned=True: the half-pixel shift
    ph, pw = d["output_size"]
    ax = axes[0]
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=2))
    for i in range(1, ph):
        ax.plot([x1, x2], [y1 + i * (y2 - y1) / ph] * 2, "r--", lw=1)
    for j in range(1, pw):
        ax.plot([x1 + j * (x2 - x1) / pw] * 2, [y1, y2], "r--", lw=1)
    ys, xs = np.asarray(d["sample_ys"]), np.asarray(d["sample_xs"])
    yy, xx = np.meshgrid(ys.ravel(), xs.ravel(), indexing="ij")
    ax.plot(xx.ravel(), yy.ravel(), "o", color="orange", mec="black", ms=7)
    ax.set_title(f"box {d['box']} (pixel centres at integers, shifted by -0.5): "
                 f"{ph}x{pw} bins,\n{d['sampling_ratio']}x{d['sampling_ratio']} bilinear samples "
                 "each (orange)", fontsize=10)
    grid(axes[1], d["pooled"], "roi_align output\n(mean of each bin's samples)", cmap="Oranges",
         fontsize=12)
    fig.suptitle("7. ROI Align: bilinear sampling instead of quantised bins", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


# 8 -------------------------------------------------------------------------------------------
def draw_difficulty(d: dict, path: str) -> None:
    from segjax.data.builders.synthetic_shapes import CLASS_NAMES
    from segjax.visualize import colorize

    plt = _plt()
    palette = _palette()
    factors = d["factors"]
    fig = plt.figure(figsize=(2.2 * len(factors), 7.4))
    gs = fig.add_gridspec(3, len(factors), height_ratios=[1, 1, 0.9])
    for k, (name, f) in enumerate(factors.items()):
        note = {"label_noise": f"{100 * f['label_disagreement']:.1f}% px relabelled",
                "noise": f"RMS {f['noise_rms']:.1f} vs clean",
                "occlusion": f"visible {np.round(f['visible_fraction'], 2).tolist()}",
                "overlap": f"visible {np.round(f['visible_fraction'], 2).tolist()}"}.get(name, "")
        ax = fig.add_subplot(gs[0, k])
        ax.imshow(f["image"])
        ax.set_title(f"{name}\n{note}", fontsize=8)
        ax.axis("off")
        ax = fig.add_subplot(gs[1, k])
        ax.imshow(colorize(np.asarray(f["label"]), palette))
        ax.set_title("label", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(gs[2, :])
    names = CLASS_NAMES[1:]
    x = np.arange(len(names))
    for off, (cfg, counts) in zip((-0.2, 0.2), d["class_counts"].items()):
        ax.bar(x + off, counts, 0.4, label=cfg)
    ax.set_xticks(x, names)
    ax.set_ylabel(f"objects in {d['class_count_images']} images")
    ax.legend(fontsize=9)
    ax.set_title("class imbalance: objects per class, clean vs imbalance", fontsize=9)
    fig.suptitle(f"8. Why segmentation is difficult: synthetic_shapes train #{d['index']} under "
                 "each factor", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


# 9 -------------------------------------------------------------------------------------------
def draw_metric_learning(d: dict, path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
    g = np.asarray(d["grid"])
    ax = axes[0]
    im = ax.imshow(d["loss_map"], origin="lower", extent=(g[0], g[-1], g[0], g[-1]), cmap="Reds")
    fig.colorbar(im, ax=ax, fraction=0.046)
    r = d["d_ap"] + d["margin"]
    for p, name in ((d["anchor"], "anchor"), (d["positive"], "positive")):
        ax.add_patch(plt.Circle(p, r, fill=False, ls="--"))
        ax.plot(*p, "o", ms=8)
        ax.annotate(name, p, textcoords="offset points", xytext=(0, 8), ha="center")
    ax.set_title(f"triplet_loss as the negative moves: zero beyond d(a,p) + margin = {r:.2f}",
                 fontsize=10)
    ax = axes[1]
    pts, labels = np.asarray(d["points"]["imbalanced"]), np.asarray(d["labels"]["imbalanced"])
    ax.scatter(*pts[labels == 0].T, s=8, c="tab:blue", label="class 0 (200)")
    ax.scatter(*pts[labels == 1].T, s=20, c="tab:red", label="class 1 (10)")
    styles = {"balanced": "k-", "imbalanced": "r--", "imbalanced_weighted": "g-."}
    ys = np.linspace(pts[:, 1].min(), pts[:, 1].max(), 2)
    for name, b in d["boundaries"].items():  # w . (x, y) + b = 0
        (w0, w1), b0 = b["w"], b["b"]
        ax.plot(-(b0 + w1 * ys) / w0, ys, styles[name][1:], color=styles[name][0],
                label=f"{name}: crosses y=0 at x = {b['boundary_x']:.2f}")
    ax.legend(fontsize=8)
    ax.set_title("decision boundary: trained on balanced vs imbalanced data", fontsize=10)
    fig.suptitle("9. Metric learning and class imbalance", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


# 10 ------------------------------------------------------------------------------------------
def _window(ax, box, colour, ls="--", lw=1.5) -> None:
    x1, y1, x2, y2 = box
    ax.add_patch(_plt().Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec=colour, ls=ls, lw=lw))


def _image(ax, image, title: str) -> None:
    ax.imshow(image)
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def _mask(ax, mask, title: str) -> None:
    ax.imshow(mask, cmap="magma", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def draw_tensormask(d: dict, path: str) -> None:
    plt = _plt()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dets, image = d["detections"], np.asarray(d["image"])
    levels = len(d.get("bipyramid", ()))
    cols = max(1 + len(dets), 1 + levels, 4)
    fig = plt.figure(figsize=(2.6 * cols, 8.4))
    gs = fig.add_gridspec(3, cols)
    ax = fig.add_subplot(gs[0, 0])
    _image(ax, image, "detections: box (solid) and\nthe window whose mask it is (dashed)")
    for k, det in enumerate(dets):
        _window(ax, det["window"], colours[k % len(colours)])
        _window(ax, det["box"], colours[k % len(colours)], ls="-", lw=1)
    for k, det in enumerate(dets):
        side = np.asarray(det["mask"]).shape[0]
        z = det["window"][2] - det["window"][0]
        _mask(fig.add_subplot(gs[0, 1 + k]), det["mask"],
              f"P{det['level'] + 2} window {z:g} px, score {det['score']:.2f}\nnatural mask {side}x{side}")
    if not dets:
        fig.suptitle("10. TensorMask: no detection above the threshold", fontsize=12)
        _save(fig, path)
        return
    ax = fig.add_subplot(gs[1, 0])
    _image(ax, image, "tensor bipyramid: one window per level\nat the best detection's centre")
    for b in d["bipyramid"]:
        _window(ax, b["window"], colours[b["level"] % len(colours)])
        z = b["window"][2] - b["window"][0]
        _mask(fig.add_subplot(gs[1, 1 + b["level"]]), b["mask"],
              f"P{b['level'] + 2}: window {z:g} px, lambda={2 ** b['level']}\n"
              f"mask {b['mask_side']}x{b['mask_side']} (1 px = 4 image px)")
    n = d["natural_vs_aligned"]
    y, x = n["cell"]
    ax = fig.add_subplot(gs[2, 0])
    _image(ax, image, f"P2 cell ({y}, {x}) (dot) and its\n{4 * n['V']} px window (dashed)")
    ax.plot([4 * x], [4 * y], "o", color="red", mec="white", ms=6)
    _window(ax, d["bipyramid"][0]["window"], "red")
    grid(fig.add_subplot(gs[2, 1]), n["natural"], f"natural: the {n['V']}x{n['V']} mask\nof the window at the cell",
         cmap="magma", numbers=False, vmin=0, vmax=1)
    grid(fig.add_subplot(gs[2, 2]), n["aligned"], f"aligned: the {n['V']}x{n['V']} channels at the cell,\n"
         "each from another window", cmap="magma", numbers=False, vmin=0, vmax=1)
    _mask(fig.add_subplot(gs[2, 3]), n["aligned_centre_map"],
          "aligned centre channel over P2:\neach window's own centre pixel")
    fig.suptitle(f"10. TensorMask: a V x U mask at every window (4-D tensors), {d.get('dataset', '')} "
                 f"validation #{d.get('index', '')}, step {d.get('step', '')}", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, path)


# 11 ------------------------------------------------------------------------------------------
def draw_patch_vs_fcn(d: dict, path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    image, p = np.asarray(d["image"]), d["patch_size"]
    ax = axes[0]
    _image(ax, image, f"the {p}x{p} patches of three pixels\n2 apart: almost the same input")
    colours = ("tab:red", "white", "tab:blue")
    for (top, left, size), colour in zip(d["patches"], colours):
        ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), size, size, fill=False, ec=colour, lw=1.5))
        ax.plot([left + size // 2], [top + size // 2], "o", color=colour, ms=4)
    ax.set_xlim(-0.5 - p // 2, image.shape[1] + p // 2)
    ax.set_ylim(image.shape[0] + p // 2, -0.5 - p // 2)
    ax = axes[1]
    im = ax.imshow(d["read_counts"], cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"patches that read each pixel (sliding window):\nup to {d['max_reads']}; "
                 "the FCN reads it once per layer", fontsize=9)
    ax = axes[2]
    rows = d["timings"]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["patches_gflops"] for r in rows], 0.4, label="sliding window", color="tab:red")
    ax.bar(x + 0.2, [r["fcn_gflops"] for r in rows], 0.4, label="FCN twin", color="tab:blue")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['flops_ratio']:.0f}x FLOPs\n{r['time_ratio']:.0f}x time", (i, r["patches_gflops"]),
                    ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=4 * max(r["patches_gflops"] for r in rows))
    ax.set_xticks(x, [f"{r['size']}x{r['size']}" for r in rows])
    ax.set_ylabel("GFLOPs per image")
    diff = max(r["max_abs_difference"] for r in rows)
    ax.set_title(f"same weights, same outputs (max |difference| {diff:.1e}):\ncost per image", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("11. Classifying every pixel from its patch, and the fully convolutional twin", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    _save(fig, path)
