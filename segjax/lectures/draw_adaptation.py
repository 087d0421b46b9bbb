"""Matplotlib (Agg) drawing of figure 13 (style transfer and domain adaptation) from
`data.adaptation`'s dict.

Kept apart from `draw` (the operator figures); like it, every number shown comes from the dict.
"""

from __future__ import annotations

import textwrap

import numpy as np

from segjax.lectures.data.adaptation import UDA_ARMS
from segjax.lectures.draw import _palette, _plt, _save

COLUMNS = 2 + len(UDA_ARMS)  # image, truth and each arm of the domain-adaptation rows
BETA_COLOURS = ("tab:red", "tab:orange", "yellow")


def _picture(ax, image, title: str, fontsize: int = 8) -> None:
    ax.imshow(np.asarray(image))
    ax.set_title(title, fontsize=fontsize)
    ax.axis("off")


def _note(ax, text: str, width: int = 34, fontsize: int = 8) -> None:
    ax.axis("off")
    ax.text(0.0, 0.5, "\n".join(textwrap.fill(p, width) for p in text.split("\n")),
            fontsize=fontsize, va="center", ha="left", transform=ax.transAxes)


def _style_title(r: dict, row: dict) -> str:
    name = {"gatys": "Gatys (L-BFGS)", "fast": "fast style (Johnson)", "adain": "AdaIN"}[r["method"]]
    loss = "no training" if r["final_loss"] is None else f"final loss {r['final_loss']:.4g}"
    steps = f" after {r['steps']} steps" if r["steps"] and r["final_loss"] is not None else ""
    seconds = f"{r['seconds']:.0f} s" if r["seconds"] is not None else "time not recorded"
    vgg = {True: "random VGG, not ImageNet", False: "converted VGG weights",
           None: "VGG weights not recorded"}[r["random_vgg"]]
    if r["random_vgg"] is None and r["weights"]:
        vgg = r["weights"]
    other = ((r["content_name"], r["style_name"]) != (row["content_name"], row["style_name"]))
    pair = f"\n({r['content_name']} / {r['style_name']})" if other else ""
    return f"{name}{pair}\n{loss}{steps}\n{seconds}; {vgg}"


def _style_row(fig, gs, row: dict) -> None:
    _picture(fig.add_subplot(gs[0, 0]), row["content"], f"content: {row['content_name']}")
    _picture(fig.add_subplot(gs[0, 1]), row["style"], f"style: {row['style_name']}")
    for k, (method, r) in enumerate(row["methods"].items(), start=2):
        ax = fig.add_subplot(gs[0, k])
        if r["run"] is None:
            _note(ax, f"{method}: no run given. Make one with\n{r['command']}\nand pass "
                      f"--style_{method}_run=DIR", width=26, fontsize=7)
        else:
            _picture(ax, r["result"], _style_title(r, row), fontsize=7)
    random = [m for m, r in row["methods"].items() if r.get("random_vgg")]
    text = ("(a) Style transfer. A random VGG matches the style's Gram statistics (colours, local "
            "texture) but carries no learned semantics, so content survives less than with "
            "ImageNet weights.")
    if random:
        text += f"\nRandom VGG weights: {', '.join(random)}."
    _note(fig.add_subplot(gs[0, 5:]), text, width=40)


def _fda_rows(fig, gs, f: dict) -> None:
    src, trg = f["source"], f["target"]
    _picture(fig.add_subplot(gs[1, 0]), src["image"], f"source: {src['dataset']}\nvalidation "
             f"#{src['index']}")
    _picture(fig.add_subplot(gs[1, 1]), trg["image"], f"target: {trg['dataset']}\nvalidation "
             f"#{trg['index']}")
    for k, b in enumerate(f["betas"], start=2):
        _picture(fig.add_subplot(gs[1, k]), b["image"],
                 f"FDA beta {b['beta']} (b = {b['half_size']})\nRMS change {b['rms_change']:.1f}")
    mean = lambda m: "(" + ", ".join(f"{x:.0f}" for x in m) + ")"  # noqa: E731
    _note(fig.add_subplot(gs[1, 5:]),
          "(b) FDA (Yang & Soatto 2020, Eq. 1): the source keeps its phase and takes the target's "
          "amplitude in a centred (2b+1)x(2b+1) window of its spectrum, b = floor(min(H, W) beta)."
          f"\nMean RGB: source {mean(src['channel_mean'])}, target {mean(trg['channel_mean'])}, "
          f"every beta {mean(f['betas'][0]['channel_mean'])}: the zero frequency carries the "
          "target's mean colour.", width=40)
    spectra = [("source", src["spectrum"]), ("target", trg["spectrum"])] + [
        (f"beta {b['beta']}", b["spectrum"]) for b in f["betas"]]
    h, w = np.shape(src["spectrum"])
    c = min(h // 2, w // 2, 32)
    crop = lambda s: np.asarray(s)[h // 2 - c:h // 2 + c + 1, w // 2 - c:w // 2 + c + 1]  # noqa: E731
    lo = min(float(crop(s).min()) for _, s in spectra)
    hi = max(float(crop(s).max()) for _, s in spectra)
    plt = _plt()
    for k, (name, s) in enumerate(spectra):
        ax = fig.add_subplot(gs[2, k])
        ax.imshow(crop(s), cmap="magma", vmin=lo, vmax=hi)
        ax.set_title(f"log-amplitude: {name}", fontsize=8)
        ax.axis("off")
        if name == "target":
            for b, colour in zip(f["betas"], BETA_COLOURS):
                r = b["half_size"]
                ax.add_patch(plt.Rectangle((c - r - 0.5, c - r - 0.5), 2 * r + 1, 2 * r + 1,
                                           fill=False, ec=colour, lw=1.2,
                                           label=f"beta {b['beta']}"))
            ax.legend(fontsize=6, loc="lower left")
    _note(fig.add_subplot(gs[2, 5:]),
          f"Centred log-amplitude spectra (mean over channels), the central {2 * c + 1}x{2 * c + 1} "
          f"frequencies of {h}x{w}; FDA's windows drawn on the target's. Inside a window the "
          "result's amplitude is the target's.", width=40)


def _uda_rows(fig, gs, u: dict | None, first: int) -> None:
    from segjax.visualize import colorize

    if u is None or not u["targets"]:
        what = ("no finished run in the study yet" if u is not None else
                "pass --uda_study=DIR, the --workdir of `python -m experiments.ablations "
                "--study=domain_adaptation`")
        _note(fig.add_subplot(gs[first, :]), f"(c) The domain shift and its fixes: {what}.",
              width=120, fontsize=9)
        return
    from matplotlib.patches import Patch

    from segjax.data.builders.synthetic_shapes import CLASS_NAMES

    palette = _palette()
    for i, (target, t) in enumerate(u["targets"].items()):
        row = first + i
        _picture(fig.add_subplot(gs[row, 0]), t["image"],
                 f"(c) synthetic_shapes/{target}\nvalidation #{u['index']}")
        ax = fig.add_subplot(gs[row, 1])
        _picture(ax, colorize(np.asarray(t["label"]), palette), "truth")
        if i == 0:
            ax.legend(handles=[Patch(color=np.asarray(palette[k]) / 255.0, label=name)
                               for k, name in enumerate(CLASS_NAMES)],
                      fontsize=5, loc="lower left", framealpha=0.8)
        k = 2
        for arm, name in UDA_ARMS.items():
            if arm not in t["arms"]:
                continue
            a = t["arms"][arm]
            _picture(fig.add_subplot(gs[row, k]), colorize(np.asarray(a["prediction"]), palette),
                     f"{name}\nthis image {a['image_miou']:.3f}\n{target} val mIoU "
                     f"{a['run_miou']:.3f}")
            k += 1
        if t["missing"]:
            _note(fig.add_subplot(gs[row, k:]), "not finished: " + ", ".join(
                UDA_ARMS[a] for a in t["missing"]), width=14 * (COLUMNS - k))


def draw_adaptation(d: dict, path: str) -> None:
    plt = _plt()
    u = d["uda"]
    uda_rows = max(1, len(u["targets"]) if u is not None else 1)
    fig = plt.figure(figsize=(2.2 * COLUMNS, 2.5 * (3 + uda_rows)))
    gs = fig.add_gridspec(3 + uda_rows, COLUMNS)
    _style_row(fig, gs, d["style"])
    _fda_rows(fig, gs, d["fda"])
    _uda_rows(fig, gs, u, 3)
    seed = f" (seed {u['seed']}, last checkpoint)" if u is not None else ""
    fig.suptitle("13. Style transfer and domain adaptation: (a) three stylisers, (b) FDA's "
                 f"amplitude swap, (c) a clean-trained segmenter on new domains and each "
                 f"adaptation{seed}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    _save(fig, path)
