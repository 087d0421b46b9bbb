"""Figure 13: style transfer and domain adaptation.

(a) Style transfer: the content and style pictures and the Gatys, fast-style and AdaIN results,
read from `python -m experiments.style` work directories (`read_style_run`) with each run's final
loss, training time and VGG weights; (b) FDA's amplitude swap (Yang & Soatto 2020, Eq. 1;
`segjax.style.fda`) of a `synthetic_shapes/clean` image to a `synthetic_shapes/restyled` one at
the paper's three betas, with the centred log-amplitude spectra; (c) the domain shift and its
fixes: for each target domain of a `domain_adaptation` study, one validation image, its truth and
each finished seed-0 arm's prediction (its last checkpoint through `Task.predictor`, as
`experiments.predict` does), with the image's mIoU and the run's target mIoU. Without runs, (a)
shows the bundled pictures alone and (c) is left out; (b) needs none.
"""

from __future__ import annotations

import json
import os

import numpy as np

from segjax.lectures.data._common import shapes_config

STYLE_METHODS = ("gatys", "fast", "adain")
STYLE_PICTURES = ("astronaut", "gravel", 128)  # the docs' content, style and size
FDA_BETAS = (0.01, 0.05, 0.09)  # the paper's multi-band ensemble
FDA_SOURCE = ("clean", 0)  # (synthetic_shapes config, validation index)
FDA_TARGET = ("restyled", 1)  # another scene: only the style should carry over
SPECTRUM_CROP = 32  # the spectra are drawn within +-32 frequencies of the centre
UDA_TARGETS = ("restyled", "illumination", "noise")
UDA_ARMS = {"source_only": "source only", "photometric": "photometric", "fda": "FDA",
            "adversarial": "AdaptSegNet", "dacs": "DACS", "adain": "AdaIN (pixels)",
            "target_oracle": "target oracle"}
UDA_MIN_CLASSES = 3  # the shown validation scene is the first with this many object classes


def style_command(method: str) -> str:
    """The command that makes a `method` run of figure 13's row (a)."""
    content, style, _ = STYLE_PICTURES
    return (f"python -m experiments.style --method={method} --content={content} --style={style} "
            "--workdir=DIR")


def _png(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_style_run(run_dir: str, method: str) -> dict:
    """One `python -m experiments.style --method=METHOD` work directory: `content`, `style`,
    `result` (uint8 [H, W, 3]), `content_name`, `style_name`, `final_loss` (run.json's last
    logged loss; None when the run applied a trained network without training), `steps`,
    `seconds` (training time; None where the run does not record it: gatys), `weights` (the
    run's note on its VGG / encoder, or the trained network it applied) and `random_vgg` (True:
    random VGG; False: converted weights; None: not recorded).

    Raises:
      FileNotFoundError: no run.json or picture; ValueError: a run of another method.
    """
    path = os.path.join(run_dir, "run.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} has no run.json: pass the --workdir of "
                                f"`{style_command(method)}`")
    with open(path) as f:
        run = json.load(f)
    if run.get("method") != method:
        raise ValueError(f"{run_dir} is a {run.get('method')!r} run; figure 13's {method} panel "
                         f"needs the --workdir of `{style_command(method)}`")
    pictures = {}
    for name in ("content", "style", "result"):
        picture = os.path.join(run_dir, f"{name}.png")
        if not os.path.isfile(picture):
            raise FileNotFoundError(f"{picture} is missing: {run_dir} is not a finished "
                                    f"`experiments.style` run")
        pictures[name] = _png(picture)
    weights = run.get("weights") or run.get("encoder")  # fast / gatys, adain's encoder
    random_vgg = None if weights is None else weights.startswith("random")
    applied = run.get("model") or run.get("decoder")
    if weights is None and applied:  # fast applying a trained network records no VGG
        weights = f"applied the trained network of {applied}"
    final = run.get("final") or {}
    return {**pictures, "method": method, "content_name": run.get("content"),
            "style_name": run.get("style"), "final_loss": final.get("loss"),
            "steps": run.get("steps"), "seconds": run.get("train_seconds"),
            "weights": weights, "random_vgg": random_vgg, "run": os.path.abspath(run_dir)}


def style_row(runs: dict[str, str | None]) -> dict:
    """Row (a): {"content", "style" (uint8, from the first given run, else the bundled pictures
    at STYLE_PICTURES' size), "methods": {method: read_style_run(...) or {"run": None,
    "command": style_command(method)}}}."""
    methods = {m: (read_style_run(runs[m], m) if runs.get(m) else
                   {"method": m, "run": None, "command": style_command(m)})
               for m in STYLE_METHODS}
    given = [r for r in methods.values() if r["run"]]
    if given:
        content, style = given[0]["content"], given[0]["style"]
        names = given[0]["content_name"], given[0]["style_name"]
    else:
        from segjax.style.images import load_image, to_uint8

        name_c, name_s, size = STYLE_PICTURES
        content, style = (to_uint8(load_image(n, size)) for n in (name_c, name_s))
        names = name_c, name_s
    return {"content": content, "style": style, "content_name": names[0],
            "style_name": names[1], "methods": methods}


def log_amplitude(image: np.ndarray) -> np.ndarray:
    """The centred log-amplitude spectrum [H, W]: mean over channels of log(1 + |fftshift(FFT2)|)
    (inside FDA's window it is the target's exactly, every channel's amplitude being swapped)."""
    spectrum = np.fft.fftshift(np.fft.fft2(np.asarray(image, np.float64), axes=(0, 1)), axes=(0, 1))
    return np.log1p(np.abs(spectrum)).mean(-1)


def fda_row(betas=FDA_BETAS) -> dict:
    """Row (b): FDA_SOURCE's image with FDA_TARGET's low-frequency amplitude, `segjax.style.fda`
    on 0..255 pixels (as `segjax.tasks.uda` applies it), per beta: `half_size` b =
    floor(min(H, W) beta), `image` (uint8, clipped), `channel_mean` and `rms_change` (vs the
    source, 0..255 units) of the unclipped result, `clipped` (the fraction of values outside
    0..255) and `spectrum` (`log_amplitude`); plus the source's and target's."""
    import jax.numpy as jnp

    from segjax.data.builders.synthetic_shapes import generate
    from segjax.style.fda import fda

    examples = {role: generate(shapes_config(name), "validation", index)["image"]
                for role, (name, index) in (("source", FDA_SOURCE), ("target", FDA_TARGET))}
    source = examples["source"].astype(np.float32)
    out = {"source": {"dataset": f"synthetic_shapes/{FDA_SOURCE[0]}", "index": FDA_SOURCE[1]},
           "target": {"dataset": f"synthetic_shapes/{FDA_TARGET[0]}", "index": FDA_TARGET[1]}}
    for role, image in examples.items():
        out[role].update(image=image, channel_mean=image.mean((0, 1)),
                         spectrum=log_amplitude(image))
    out["betas"] = []
    for beta in betas:
        mixed = np.asarray(fda(jnp.asarray(source)[None], jnp.asarray(examples["target"],
                                                                      jnp.float32)[None], beta))[0]
        out["betas"].append({
            "beta": beta, "half_size": int(np.floor(min(source.shape[:2]) * beta)),
            "image": np.clip(np.round(mixed), 0, 255).astype(np.uint8),
            "channel_mean": mixed.astype(np.float64).mean((0, 1)),
            "rms_change": float(np.sqrt(np.mean((mixed.astype(np.float64) - source) ** 2))),
            "clipped": float(np.mean((mixed < 0) | (mixed > 255))),
            "spectrum": log_amplitude(mixed)})
    return out


def image_miou(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_label: int) -> float:
    """The mIoU of one image [H, W] (`metrics_from_confusion`: classes in neither the
    prediction nor the truth do not count)."""
    from segjax.metrics.segmentation import confusion_matrix, metrics_from_confusion

    return metrics_from_confusion(confusion_matrix(
        np.asarray(pred)[None], np.asarray(label)[None], num_classes,
        ignore_label=ignore_label))["miou"]


def uda_index() -> int:
    """The validation scene shown in every target domain (the domains share the scenes)."""
    from segjax.data.builders.synthetic_shapes import generate

    config = shapes_config("clean")
    return next(i for i in range(config.num_validation)
                if len(set(generate(config, "validation", i)["classes"].tolist())) >= UDA_MIN_CLASSES)


def finished_uda_runs(study_dir: str, seed: int = 0) -> dict[str, dict[str, str]]:
    """{target: {arm: run directory}} of the `domain_adaptation` study in `study_dir` (its
    --workdir) for `seed`, holding only the runs that have finished (`result.json`), in
    UDA_TARGETS and UDA_ARMS order. The runs are found where the study puts them
    (`experiments.ablations.domain_adaptation.run_dirs`: by the digest of each rebuilt config).

    Raises:
      FileNotFoundError: `study_dir` has no runs/ directory.
    """
    from experiments.ablations.domain_adaptation import run_dirs
    from segjax.train import sweep

    if not os.path.isdir(os.path.join(study_dir, "runs")):
        raise FileNotFoundError(f"{study_dir} has no runs/: pass the --workdir of `python -m "
                                "experiments.ablations --study=domain_adaptation`")
    dirs = run_dirs(study_dir, seed)
    return {t: {a: dirs[t, a] for a in UDA_ARMS
                if os.path.isfile(os.path.join(dirs[t, a], sweep.RESULT_FILE))}
            for t in UDA_TARGETS}


def uda_rows(study_dir: str, seed: int = 0) -> dict:
    """Rows (c): {"study", "seed", "index", "targets": {target: {"image", "label", "arms":
    {arm: {"prediction", "image_miou", "run_miou" (validation mIoU in result.json), "run",
    "step"}}, "missing": [arms without a finished run]}}, "missing_targets": [...]}, for the
    targets of UDA_TARGETS with at least one finished run in `study_dir`
    (`finished_uda_runs`)."""
    from segjax.data.builders.synthetic_shapes import generate
    from segjax.train import restore, sweep

    runs = finished_uda_runs(study_dir, seed)
    index = uda_index()
    out = {"study": os.path.abspath(study_dir), "seed": seed, "index": index, "targets": {},
           "missing_targets": []}
    for target in UDA_TARGETS:
        finished = runs[target]
        if not finished:
            out["missing_targets"].append(target)
            continue
        example = generate(shapes_config(target), "validation", index)
        label = example["label"][..., 0].astype(np.int32)
        arms = {}
        for arm, run_dir in finished.items():
            run = restore.load_run(run_dir, "latest")
            if run.config.uda.target != f"synthetic_shapes/{target}":
                raise ValueError(f"{run_dir} adapts to {run.config.uda.target}, not "
                                 f"synthetic_shapes/{target}: the study's runs/ was changed")
            pred = np.asarray(run.task.predictor(run.model, run.variables)(example["image"]))
            with open(os.path.join(run_dir, sweep.RESULT_FILE)) as f:
                run_miou = json.load(f)["final"]["validation"]["miou"]
            arms[arm] = {"prediction": pred, "run": run_dir, "step": run.step,
                         "image_miou": image_miou(pred, label, run.info.num_classes,
                                                  run.info.ignore_label),
                         "run_miou": run_miou}
        out["targets"][target] = {"image": example["image"], "label": label, "arms": arms,
                                  "missing": [a for a in UDA_ARMS if a not in finished]}
    return out


def style_adaptation(style_gatys_run: str | None = None, style_fast_run: str | None = None,
               style_adain_run: str | None = None, uda_run: str | None = None) -> dict:
    """Figure 13's data: `style` (`style_row`), `fda` (`fda_row`), `uda` (`uda_rows` of the
    study work directory `uda_run`, None without it) and `runs` (the run given for each of
    figure 13's optional runs, or None)."""
    runs = {"style_gatys": style_gatys_run or None, "style_fast": style_fast_run or None,
            "style_adain": style_adain_run or None, "uda": uda_run or None}
    return {"style": style_row({m: runs[f"style_{m}"] for m in STYLE_METHODS}),
            "fda": fda_row(), "uda": uda_rows(uda_run) if uda_run else None, "runs": runs}
