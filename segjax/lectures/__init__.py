"""The lecture decks' worked examples and figures, regenerated from segjax's own code.

`write(out_dir)` (what `python -m experiments.lectures --workdir=DIR` runs) writes one PNG per
figure, `numbers.json` (per figure number, the numbers the figure shows) and `index.md` (one line
per figure on what it teaches). The data of each figure comes from `segjax.lectures.data` (or
`fcn_demo` for figure 6), computed with segjax's operators, models and datasets; `draw` only
draws it.

Example:
  >>> from segjax import lectures
  >>> lectures.data.convolution()["conv"]          # [[122, 148], [126, 134]]
  >>> lectures.write("/tmp/lectures", figures=[1, 5], skip_training=True)
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

from segjax import jsonio
from segjax.lectures import data, draw, draw3d, draw_adaptation


@dataclasses.dataclass(frozen=True)
class Figure:
    """One lecture figure: `make()` computes its data, `numbers(data)` picks what numbers.json
    stores, `draw(data, path)` writes the PNG."""

    number: int
    slug: str
    title: str
    teaches: str
    make: Callable[[], dict]
    draw: Callable[[dict, str], None]
    numbers: Callable[[dict], dict]
    needs_training: bool = False
    needs_run: str = ""  # a trained run the figure reads (`write(runs={needs_run: DIR})`)
    optional_runs: tuple[str, ...] = ()  # runs it reads when given (`make(**{name: DIR or None})`)
    notes: Callable[[dict], str] | None = None  # what index.md adds after `teaches` (missing runs)

    @property
    def png(self) -> str:
        return f"fig{self.number}_{self.slug}.png"


def _drop(*keys: str) -> Callable[[dict], dict]:
    return lambda d: {k: v for k, v in d.items() if k not in keys}


def _dilation_data() -> dict:
    return {"receptive_field": data.dilation(), "deeplab": data.deeplab_heads()}


def _dilation_numbers(d: dict) -> dict:
    rf = d["receptive_field"]
    return {"receptive_field": {"size": rf["size"], "constant": rf["constant"],
                                "exponential": rf["exponential"]},
            "deeplab": d["deeplab"]}


def _fcn_data() -> dict:
    from segjax.lectures import fcn_demo

    start = time.perf_counter()
    out = fcn_demo.fcn_skips()
    out["recipe"]["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _fcn_numbers(d: dict) -> dict:
    return {"recipe": d["recipe"],
            "models": {k: {n: v for n, v in m.items() if n != "prediction"}
                       for k, m in d["models"].items()}}


def _difficulty_numbers(d: dict) -> dict:
    return {"index": d["index"], "split": d["split"], "class_counts": d["class_counts"],
            "class_count_images": d["class_count_images"],
            "factors": {k: {n: v for n, v in f.items() if n not in ("image", "label")}
                        for k, f in d["factors"].items()}}


def _tensormask_numbers(d: dict) -> dict:
    strip = lambda items: [{k: v for k, v in x.items() if k != "mask"} for x in items]  # noqa: E731
    out = {k: v for k, v in d.items() if k not in ("image", "detections", "bipyramid", "natural_vs_aligned")}
    out["detections"] = strip(d["detections"])
    if "bipyramid" in d:
        out["bipyramid"] = strip(d["bipyramid"])
        out["natural_vs_aligned"] = {k: d["natural_vs_aligned"][k] for k in ("cell", "anchor", "V")}
    return out


def _deep3d_numbers(d: dict) -> dict:
    return {"volume": _drop("planes")(d["volume"]),
            "parts": _drop("points", "part", "prediction")(d["parts"])}


def _adaptation_numbers(d: dict) -> dict:
    pictures = _drop("image", "spectrum")
    style = {m: _drop("content", "style", "result")(r) for m, r in d["style"]["methods"].items()}
    f = d["fda"]
    out = {"style": {"content": d["style"]["content_name"], "style": d["style"]["style_name"],
                     "methods": style},
           "fda": {"source": pictures(f["source"]), "target": pictures(f["target"]),
                   "betas": [pictures(b) for b in f["betas"]]},
           "uda": None}
    u = d["uda"]
    if u is not None:
        out["uda"] = {**_drop("targets")(u), "targets": {
            t: {"missing": x["missing"], "arms": {a: _drop("prediction")(r) for a, r in x["arms"].items()}}
            for t, x in u["targets"].items()}}
    return out


def _adaptation_notes(d: dict) -> str:
    from segjax.lectures.data.adaptation import UDA_ARMS

    line = ""
    for method, r in d["style"]["methods"].items():
        if r["run"] is None:
            line += (f" No {method} result shown: pass --style_{method}_run=DIR, the work "
                     f"directory of `{r['command']}`.")
    u = d["uda"]
    if u is None:
        flag, command = RUN_FLAGS["uda"]
        return line + (f" No domain-adaptation rows: pass {flag}=DIR, the work directory of "
                       f"`{command}`.")
    shown = {t: ", ".join(f"{UDA_ARMS[a]} {r['image_miou']:.3f} ({r['run_miou']:.3f})"
                          for a, r in x["arms"].items()) for t, x in u["targets"].items()}
    if shown:
        line += (f" Seed {u['seed']}, validation scene {u['index']}, mIoU on that image (and the "
                 "run's target validation mIoU): " + "; ".join(f"{t}: {v}" for t, v in shown.items())
                 + ".")
    for t, x in u["targets"].items():
        if x["missing"]:
            line += f" {t}: no finished run yet for {', '.join(UDA_ARMS[a] for a in x['missing'])}."
    if u["missing_targets"]:
        line += f" No finished run yet for the target(s) {', '.join(u['missing_targets'])}."
    return line


FIGURES: tuple[Figure, ...] = (
    Figure(1, "convolution", "The general convolution",
           "a convolution is a matrix (conv_as_matrix) and its transpose is the transposed "
           "convolution: the decks' 4x4 * 3x3 example, numbers from conv2d, conv_as_matrix and "
           "conv_transpose2d.",
           data.convolution, draw.draw_convolution, lambda d: d),
    Figure(2, "interpolation", "Interpolation",
           "nearest, linear and cubic interpolation through the same samples, and nearest / "
           "bilinear / bicubic upsampling of a 4x4 image (resize); bicubic overshoots the data "
           "range.",
           data.interpolation, draw.draw_interpolation, lambda d: d),
    Figure(3, "unpooling", "Unpooling",
           "nearest, bed-of-nails and max-unpooling (with max_pool_with_argmax's switches) of "
           "the same pooled 4x4 example.",
           data.unpooling, draw.draw_unpooling, lambda d: d),
    Figure(4, "fractionally_strided", "Transposed convolution as fractionally strided",
           "a stride-2 transposed convolution equals a stride-1 convolution with the flipped "
           "kernel over the input with zeros inserted (bed_of_nails_unpool) and padded.",
           data.fractionally_strided, draw.draw_fractionally_strided, lambda d: d),
    Figure(5, "dilation", "Dilated convolution and the DeepLab heads",
           "the receptive field of stacked 3x3 atrous convolutions, from the gradient of one "
           "output pixel: extent 1 + 2 * sum(rates), gridded at a constant rate; and the heads "
           "of the registered DeepLab v1 -> v2 (ASPP) -> v3 -> v3+ models.",
           _dilation_data, lambda d, p: draw.draw_dilation(d["receptive_field"], d["deeplab"], p),
           _dilation_numbers),
    Figure(6, "fcn_skips", "FCN-32s / 16s / 8s",
           "skip connections from pool4 and pool3 sharpen a stride-32 prediction (same tiny "
           "VGG, same short training, only the skips differ).",
           _fcn_data, draw.draw_fcn, _fcn_numbers, needs_training=True),
    Figure(7, "roi_align", "ROI Align",
           "ROI Align averages bilinear samples at fractional positions inside each bin (no "
           "rounding of the box); the drawn points reproduce roi_align's output.",
           data.roi_align_sampling, draw.draw_roi_align, _drop("feature")),
    Figure(8, "difficulty", "Why segmentation is difficult",
           "one synthetic_shapes scene under each difficulty factor: illumination, occlusion, "
           "overlap, shape variation, class imbalance, noise and ground-truth variance.",
           data.difficulty, draw.draw_difficulty, _difficulty_numbers),
    Figure(9, "metric_learning", "Triplet loss and class imbalance",
           "the triplet loss is zero once the negative is a margin farther than the positive; a "
           "classifier trained on imbalanced data moves its boundary into the minority class "
           "(class weights move it back).",
           data.metric_learning, draw.draw_metric_learning,
           _drop("loss_map", "points", "labels", "grid")),
    Figure(10, "tensormask", "TensorMask: dense masks over 4-D tensors",
           "a trained TensorMask predicts a mask at every window of every level: each "
           "detection's mask is its window's natural V x U mask; in the tensor bipyramid a "
           "window 2**l times larger has a mask 2**l times finer; the aligned representation "
           "holds at each cell the values that the windows covering it give that cell, and "
           "swap_align2nat turns it into the natural one.",
           data.tensormask, draw.draw_tensormask, _tensormask_numbers, needs_run="tensormask"),
    Figure(11, "patch_vs_fcn", "Patch classification and its fully convolutional twin",
           "a CNN that labels each pixel from the patch around it (Farabet et al.'s 46x46) reads "
           "every pixel in thousands of overlapping patches; the same weights run as one "
           "fully convolutional network (stride-1 pooling, dilated later layers) give the same "
           "outputs for a fraction of the FLOPs and time.",
           data.patch_vs_fcn, draw.draw_patch_vs_fcn, _drop("image", "read_counts")),
    Figure(12, "deep3d", "Deep learning for 3D",
           "highlight a lesion within an MR-like scan: a synthetic_volumes volume cut by the "
           "axial, coronal and sagittal planes through its lesions, the truth outlined and a "
           "trained 3D U-Net's sliding-window prediction filled, with the Dice of each class; and "
           "a synthetic_parts point cloud coloured by part, truth next to a trained PointNet's "
           "prediction, with the shape's part IoUs.",
           data.deep3d, draw3d.draw_deep3d, _deep3d_numbers,
           optional_runs=("volume", "pointnet")),
    Figure(13, "style_adaptation", "Style transfer and domain adaptation",
           "(a) the same content and style through Gatys' optimisation, Johnson's feed-forward "
           "network and AdaIN, each with its final loss and time; (b) FDA's amplitude swap: a "
           "clean synthetic_shapes image takes a restyled image's low-frequency amplitude (its "
           "colours and lighting, not its scene) at beta 0.01, 0.05 and 0.09, with the spectra; "
           "(c) a segmenter trained on clean shapes, on restyled, unevenly lit and noisy shapes "
           "(the domain shift), next to photometric jitter, FDA, AdaptSegNet, DACS and AdaIN "
           "style randomisation, and a model trained on the target's own labels (the upper "
           "bound): what each adaptation wins back, or does not, on one image and on the whole "
           "target.",
           data.style_adaptation, draw_adaptation.draw_adaptation, _adaptation_numbers,
           optional_runs=("style_gatys", "style_fast", "style_adain", "uda"),
           notes=_adaptation_notes),
)
BY_NUMBER = {f.number: f for f in FIGURES}


_TRAIN = "python -m experiments.train --config="
RUN_FLAGS = {"tensormask": ("--tensormask_run", _TRAIN + "experiments/configs/tensormask.py:demo"),
             "volume": ("--volume_run", _TRAIN + "experiments/configs/unet3d.py:demo"),
             "pointnet": ("--pointnet_run", _TRAIN + "experiments/configs/pointnet.py:demo"),
             **{f"style_{m}": (f"--style_{m}_run", data.style_command(m))
                for m in data.STYLE_METHODS},
             "uda": ("--uda_study", "python -m experiments.ablations --study=domain_adaptation "
                                    "--workdir=DIR")}  # flag, the command whose work dir it takes


def skip_reason(figure: Figure, skip_training: bool, runs: dict[str, str] | None = None) -> str | None:
    """Why `figure` is not generated now, or None."""
    if figure.needs_run and not (runs or {}).get(figure.needs_run):
        flag, command = RUN_FLAGS[figure.needs_run]
        return (f"skipped: it reads a trained model; pass {flag}=DIR, the work directory of "
                f"`{command}`")
    if figure.needs_training and skip_training:
        return "skipped (--skip_training): it trains three small models"
    if figure.number == 9 and not data.has_triplet_loss():
        return ("skipped: segjax.losses has no triplet_loss yet (the metric-learning losses "
                "have not landed)")
    return None


_RUN_PANELS = {"volume": "volume", "pointnet": "parts"}  # figure 12's panel of each optional run


def _index_line(figure: Figure, d: dict | None, reason: str | None) -> str:
    if reason is not None:
        return f"{figure.number}. **{figure.title}**: {reason}."
    line = f"{figure.number}. [**{figure.title}**]({figure.png}): {figure.teaches}"
    if figure.needs_training and d is not None:
        r = d["recipe"]
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        mious = ", ".join(f"{k} {m['miou']:.3f}" for k, m in d["models"].items())
        line += (f" Trained here: {', '.join(r['models'])} ({overrides}) on {r['dataset']}; "
                 f"{r['optimizer']}; loss {r['loss']}; {r['seconds']} s for all three on this "
                 f"machine. Validation mIoU: {mious}.")
    for name in figure.optional_runs:
        if d is not None and name in _RUN_PANELS and d[_RUN_PANELS[name]]["run"] is None:
            flag, command = RUN_FLAGS[name]
            line += (f" No {name} prediction shown (truth only): pass {flag}=DIR, the work "
                     f"directory of `{command}`.")
    if figure.notes is not None and d is not None:
        line += figure.notes(d)
    return line


def write(out_dir: str, figures: Sequence[int] | None = None, *, skip_training: bool = False,
          runs: dict[str, str] | None = None, log: Callable[[str], Any] | None = None) -> dict:
    """Writes the PNGs, `numbers.json` and `index.md` of `figures` (all by default) to `out_dir`.

    `runs` maps a figure's `needs_run` or `optional_runs` to a trained run's directory (figure 10:
    `{"tensormask": DIR}`; figure 12: `{"volume": DIR, "pointnet": DIR}`; figure 13:
    `{"style_gatys" / "style_fast" / "style_adain": an experiments.style work dir, "uda": a
    domain_adaptation study's work dir}`); a figure whose needed
    run is not given is skipped with a line in index.md, one whose optional run is not given
    shows the truth alone and says so there.

    Returns {"pngs": {number: path}, "numbers": the dict written to numbers.json (keys are
    figure numbers as strings), "skipped": {number: reason}, "seconds": {number: seconds}}.
    """
    numbers_wanted = sorted(BY_NUMBER) if figures is None else sorted(set(figures))
    unknown = [n for n in numbers_wanted if n not in BY_NUMBER]
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; figures are {sorted(BY_NUMBER)}")
    os.makedirs(out_dir, exist_ok=True)
    pngs, numbers, skipped, seconds, lines = {}, {}, {}, {}, []
    for n in numbers_wanted:
        figure = BY_NUMBER[n]
        reason = skip_reason(figure, skip_training, runs)
        d = None
        if reason is None:
            start = time.perf_counter()
            if figure.needs_run:
                d = figure.make(runs[figure.needs_run])
            else:
                d = figure.make(**{f"{k}_run": (runs or {}).get(k) for k in figure.optional_runs})
            path = os.path.join(out_dir, figure.png)
            figure.draw(d, path)
            numbers[str(n)] = data.to_json(figure.numbers(d))
            pngs[n] = path
            seconds[n] = round(time.perf_counter() - start, 2)
            if log:
                log(f"figure {n} ({figure.slug}): {seconds[n]} s -> {path}")
        else:
            skipped[n] = reason
            if log:
                log(f"figure {n} ({figure.slug}): {reason}")
        lines.append(_index_line(figure, d, reason))
    jsonio.dump(numbers, os.path.join(out_dir, "numbers.json"), indent=1, end="\n")
    header = ["# The lectures, regenerated by segjax", "",
              "Each figure below was computed with segjax's own operators, models and datasets "
              "by `python -m experiments.lectures --workdir=DIR`; the numbers each one shows are in "
              "`numbers.json` under the figure's number.", ""]
    with open(os.path.join(out_dir, "index.md"), "w") as f:
        f.write("\n".join(header + lines) + "\n")
    return {"pngs": pngs, "numbers": numbers, "skipped": skipped, "seconds": seconds}
