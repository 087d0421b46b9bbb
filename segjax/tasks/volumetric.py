"""Volumetric (3-D) segmentation: patches in training, whole volumes in evaluation.

The task consumes models of output kind `"dense3d"` (`unet3d`, `vnet`: NDHWC volumes in,
`"logits"` [N, D, H, W, K] out) on the volumetric datasets (`synthetic_volumes`, `msd/<task>`).

Training (nnU-Net's recipe, Isensee et al. 2021, Nat. Methods 18:203, "Training procedure"): the
train split is read whole into host memory once (`segjax.data.volumes.read_volumes`), each case
normalised (`normalize`: per-case, per-channel z-score, nnU-Net's MR normalisation, over all
voxels or over the non-zero ones as nnU-Net does for BraTS), and every step cuts a batch of
`patch_size` patches with foreground oversampling (`segjax.data.patches.sample_patches`). Slot b
of the global batch at step s draws from `(seed, s, b)`: the process keeps its rows
`[process_index * B_local, ...)` of the global batch, so resume and any process or device count
see the same patches.

Loss (`loss`), a global `(sum, count)` pair:
* `"ce_dice"` (nnU-Net's default `DC_and_CE_loss`): mean cross entropy over the counted voxels
  plus 1 - the soft Dice (plain: sum p + sum g in the denominator, smooth 1e-5) averaged over
  the foreground classes, one Dice per class over the whole *global* batch (nnU-Net's
  `batch_dice`, monai's `batch=True`). Its statistics come from `dice_statistics`, summed over
  the patches and over devices (`ctx.global_sum`), so 1 and N devices compute the same number;
  the Dice term enters this share's sum weighted by this share's voxel count, so dividing the
  global sum by the global count gives CE + (1 - Dice). A batch Dice rather than a mean of
  per-patch Dice because a patch often holds no voxel of a small class (random slots), where a
  per-patch Dice is 1 or 0 by the smoothing alone.
* `"vnet_dice"` (V-Net, Milletari et al. 2016, eq. 1): `segjax.losses.vnet_dice_loss`, the
  squared Dice over every class per patch, averaged over the patches (its own `(sum, count)`).

Evaluation does not fit the trainer's compiled eval step (one fixed shape for every batch):
validation volumes have their own sizes. The task therefore evaluates on the host
(`host_evaluation = True`, `Task.evaluate_on_host`): for each validation volume the model's
softmax is blended by `segjax.inference.sliding_window_inference` (window = `patch_size`,
Gaussian importance, overlap `overlap`; its forward compiles once for every volume size), the
arg-max is scored per class by `segjax.metrics.volumetric.VolumetricAccumulator` (Dice and
HD95 in mm with the volume's own spacing), and `mean_dice` (the mean foreground Dice) ranks
checkpoints. It runs on the first local device; every process evaluates every volume, so all
write the same metrics. Pictures (`save_examples`): image | truth | prediction at the slices
with the most truth voxels of `panel_classes` (the lesions).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax.models.outputs import LOGITS
from segjax.tasks.base import Accumulator, Task, class_palette
from segjax.tasks.registry import register, section

LOSSES = ("ce_dice", "vnet_dice")
NORMALIZATIONS = ("zscore", "zscore_nonzero", "none")
DICE_SMOOTH = 1e-5  # nnU-Net's SoftDiceLoss smooth (and monai's default)
PREDICTION = "prediction"


def normalize_volume(image: np.ndarray, mode: str) -> np.ndarray:
    """`image` float32 `[D, H, W, C]` normalised per channel as nnU-Net's `ZScoreNormalization`:
    `"zscore"` (x - mean) / max(std, 1e-8) over all voxels; `"zscore_nonzero"` the same with
    mean and std over the voxels where any channel is non-zero, and 0 elsewhere (nnU-Net's
    `use_mask_for_norm`, BraTS); `"none"` unchanged."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"config.volumetric.normalize={mode!r} is not one of {NORMALIZATIONS}")
    image = np.asarray(image, np.float32)
    if mode == "none":
        return image
    mask = (np.any(image != 0, axis=-1) if mode == "zscore_nonzero"
            else np.ones(image.shape[:-1], bool))
    if not mask.any():
        return np.zeros_like(image)
    values = image[mask]  # [n, C]
    mean, std = values.mean(0), values.std(0)
    out = (image - mean) / np.maximum(std, 1e-8)
    return np.where(mask[..., None], out, 0.0).astype(np.float32)


class VolumetricTask(Task):
    """Patch training and sliding-window evaluation of a 3-D model (module docstring).

    Args:
      num_classes, ignore_label, class_names, palette: the dataset's.
      info, data_dir: the dataset (`DatasetInfo`) and TFDS dir the volumes are read from.
      train_split: the split trained on; `num_train_examples` keeps its first N cases (None: all).
      patch_size: `(D, H, W)` of the training patches and of the evaluation windows.
      in_channels: channels of the volumes (the model's).
      loss: one of LOSSES.
      oversample_foreground: the fraction of each batch forced to hold foreground.
      normalize: one of NORMALIZATIONS (`normalize_volume`).
      overlap, sigma_scale, sw_batch_size: the evaluation's sliding window.
      hd_percentile, empty_distance: `VolumetricAccumulator`'s `percentile` and `empty_distance`.
      panel_classes: classes whose voxels choose the pictured slices (empty: all foreground).
    """

    name = "volumetric"
    best_metric = "mean_dice"
    model_output = "dense3d"
    train_keys = ("image", "label")
    eval_keys = ("image", "label")
    host_evaluation = True

    def __init__(self, *, num_classes: int, ignore_label: int, info, data_dir: str | None,
                 train_split: str = "train", num_train_examples: int | None = None,
                 patch_size=(128, 128, 128), in_channels: int = 1, loss: str = "ce_dice",
                 oversample_foreground: float = 1.0 / 3.0, normalize: str = "zscore",
                 overlap: float = 0.5, sigma_scale: float = 0.125, sw_batch_size: int = 2,
                 hd_percentile: float = 95.0, empty_distance: float | None = None,
                 panel_classes=(), class_names=None, palette=None):
        if loss not in LOSSES:
            raise ValueError(f"config.volumetric.loss={loss!r} is not one of {LOSSES}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"config.volumetric.normalize={normalize!r} is not one of "
                             f"{NORMALIZATIONS}")
        patch_size = tuple(int(p) for p in patch_size)
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"config.volumetric.patch_size must be 3 positive ints (D, H, W), "
                             f"got {patch_size}")
        self.num_classes, self.ignore_label = int(num_classes), int(ignore_label)
        self.info, self.data_dir = info, data_dir
        self.train_split, self.num_train_examples = train_split, num_train_examples
        self.patch_size, self.in_channels = patch_size, int(in_channels)
        self.loss_kind, self.oversample_foreground = loss, float(oversample_foreground)
        self.normalize = normalize
        self.overlap, self.sigma_scale = float(overlap), float(sigma_scale)
        self.sw_batch_size = int(sw_batch_size)
        self.hd_percentile, self.empty_distance = float(hd_percentile), empty_distance
        self.panel_classes = tuple(int(c) for c in panel_classes) or tuple(
            range(1, self.num_classes))
        self.class_names = tuple(class_names or (str(k) for k in range(self.num_classes)))
        self.palette = class_palette(self.num_classes, palette)
        self._cache: dict[str, list[dict]] = {}
        self._forwards: dict[Any, Callable] = {}

    # ----------------------------------------------------------------------------- the data

    def volumes(self, split: str) -> list[dict]:
        """The normalised cases of `split` (`read_volumes` dicts plus `locations`), read once."""
        if split not in self._cache:
            from segjax.data.patches import class_locations
            from segjax.data.volumes import read_volumes

            cases = read_volumes(self.info, split, self.data_dir)
            if split == self.train_split and self.num_train_examples:
                cases = cases[:self.num_train_examples]
            for case in cases:
                if case["image"].shape[-1] != self.in_channels:
                    raise ValueError(
                        f"{self.info.name} split {split!r} case {case['id']!r} has "
                        f"{case['image'].shape[-1]} channels, the model takes {self.in_channels}:"
                        f" set config.model.in_channels={case['image'].shape[-1]}")
                case["image"] = normalize_volume(case["image"], self.normalize)
                case["locations"] = class_locations(case["label"],
                                                    ignore_label=self.ignore_label)
            self._cache[split] = cases
        return self._cache[split]

    def init_inputs(self, image_shape):
        """One zero patch `[1, *patch_size, in_channels]` (the trainer's 2-D shape is unused)."""
        del image_shape
        return (jnp.zeros((1, *self.patch_size, self.in_channels), jnp.float32),), {}

    def train_batches(self, data, *, batch_size: int, seed: int, start_step: int):
        """This process's rows of the global batch of patches of each step from `start_step`
        (`batch_size` per process; slot b of the global batch draws from `(seed, step, b)`)."""
        del data
        from segjax.data.patches import sample_patches

        cases = self.volumes(self.train_split)
        images, labels = [c["image"] for c in cases], [c["label"] for c in cases]
        locations = [c["locations"] for c in cases]
        first = jax.process_index() * batch_size
        step = start_step
        while True:
            batch = sample_patches(
                images, labels, patch_size=self.patch_size,
                batch_size=batch_size * jax.process_count(), seed=seed, step=step,
                oversample_foreground=self.oversample_foreground, locations=locations,
                ignore_label=self.ignore_label, label_pad_value=self.ignore_label)
            yield {"image": batch["image"][first:first + batch_size],
                   "label": batch["label"][first:first + batch_size]}
            step += 1

    # ------------------------------------------------------------------------------ the loss

    def loss(self, outputs, batch, ctx):
        logits, labels = outputs[LOGITS].astype(jnp.float32), batch["label"]
        if self.loss_kind == "vnet_dice":
            from segjax.losses.dice import vnet_dice_loss

            return vnet_dice_loss(logits, labels, ignore_label=self.ignore_label)
        from segjax.losses.dice import dice_from_statistics, dice_statistics

        valid = labels != self.ignore_label
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
        ce_sum = jnp.sum(jnp.where(valid, ce, 0.0))
        count = jnp.sum(valid.astype(jnp.float32))
        inter, denom = dice_statistics(logits, labels, ignore_label=self.ignore_label,
                                       squared=False)
        inter, denom = ctx.global_sum((jnp.sum(inter, 0), jnp.sum(denom, 0)))
        dice = dice_from_statistics(inter, denom, DICE_SMOOTH)[1:]  # foreground classes
        return ce_sum + (1.0 - jnp.mean(dice)) * count, count

    # ------------------------------------------------------------------------- evaluation

    def eval_outputs(self, apply_fn, variables, batch):
        """Not used: evaluation is `evaluate_on_host` (whole volumes of differing sizes)."""
        raise NotImplementedError("the volumetric task evaluates on the host (evaluate_on_host)")

    def new_accumulator(self) -> Accumulator:
        return _VolumeAccumulator(self.num_classes, percentile=self.hd_percentile,
                                  empty_distance=self.empty_distance)

    def _forward(self, apply_fn) -> Callable:
        """softmax(model) on a batch of windows, jitted once per model."""
        if apply_fn not in self._forwards:
            self._forwards[apply_fn] = jax.jit(lambda v, x: jax.nn.softmax(
                apply_fn(v, x, train=False)[LOGITS], axis=-1))
        return self._forwards[apply_fn]

    def predict_volume(self, apply_fn, variables, image: np.ndarray) -> np.ndarray:
        """int32 `[D, H, W]` arg-max of the sliding-window softmax of one normalised volume
        `[D, H, W, C]`."""
        from segjax.inference import sliding_window_inference

        probs = sliding_window_inference(
            functools.partial(self._forward(apply_fn), variables), image[None],
            self.patch_size, overlap=self.overlap, mode="gaussian",
            sigma_scale=self.sigma_scale, sw_batch_size=self.sw_batch_size)
        return np.asarray(jnp.argmax(probs[0], axis=-1), np.int32)

    def evaluate_on_host(self, apply_fn, variables, data, *,
                         on_batch: Callable | None = None) -> dict[str, Any]:
        """Metrics of `variables` over every volume of `data.eval_split` (module docstring);
        `on_batch` gets each volume as a one-row batch and its prediction."""
        variables = jax.device_put(jax.device_get(variables), jax.local_devices()[0])
        acc = self.new_accumulator()
        for index, case in enumerate(self.volumes(data.eval_split)):
            pred = self.predict_volume(apply_fn, variables, case["image"])
            batch = {"image": case["image"][None], "label": case["label"][None],
                     "spacing": case["spacing"][None], "index": np.array([index]),
                     "valid": np.array([True])}
            per_example = {PREDICTION: pred[None]}
            acc.update({}, per_example, batch)
            if on_batch is not None:
                on_batch(batch, per_example)
        return acc.result()

    def summary_line(self, metrics) -> str:
        dice = ", ".join(f"{n} {d:.3f}" for n, d in zip(self.class_names[1:],
                                                         metrics["dice_per_class"][1:]))
        return (f"mean_dice {metrics['mean_dice']:.4f} (Dice {dice}), "
                f"mean_hd95 {metrics['mean_hd95']:.2f} mm")

    # ---------------------------------------------------------------------------- pictures

    def slice_panel(self, image: np.ndarray, label: np.ndarray, pred: np.ndarray, *,
                    num_slices: int = 3) -> np.ndarray:
        """uint8 picture: image | truth | prediction (| legend) at the `num_slices` axial
        slices (along D) with the most truth voxels of `panel_classes`, top to bottom."""
        from segjax import visualize

        counts = np.isin(label, self.panel_classes).sum(axis=(1, 2))
        order = np.argsort(-counts, kind="stable")[:num_slices]
        rows = [visualize.comparison_panel(
            np.repeat(visualize.to_uint8_image(image[d, ..., :1]), 3, axis=-1), label[d],
            pred[d], palette=self.palette, class_names=self.class_names,
            ignore_label=self.ignore_label) for d in sorted(order)]
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                for r in rows]
        return np.concatenate(rows, axis=0)

    def save_examples(self, out_dir, step, batch, per_example, *, limit, writer=None):
        return self.write_panels(
            out_dir, step, batch,
            lambda i, h, w: self.slice_panel(batch["image"][i], batch["label"][i],
                                             per_example[PREDICTION][i]),
            limit=limit, writer=writer)


class _VolumeAccumulator(Accumulator):
    """`VolumetricAccumulator` over one-volume batches (`evaluate_on_host`)."""

    def __init__(self, num_classes: int, **kwargs):
        from segjax.metrics.volumetric import VolumetricAccumulator

        self.acc = VolumetricAccumulator(num_classes, **kwargs)

    def update(self, sums, per_example, batch) -> None:
        del sums
        for pred, label, spacing in zip(per_example[PREDICTION], batch["label"],
                                        batch["spacing"]):
            self.acc.update(pred, label, spacing=tuple(float(s) for s in spacing))

    def result(self) -> dict[str, Any]:
        return self.acc.result()


# ------------------------------------------------------------------------------ from a config


def defaults() -> ml_collections.ConfigDict:
    """The `volumetric` section (nnU-Net's defaults where it has one)."""
    c = ml_collections.ConfigDict()
    v = c.volumetric = ml_collections.ConfigDict()
    v.patch_size = (128, 128, 128)  # (D, H, W) of training patches and evaluation windows
    v.loss = "ce_dice"  # "ce_dice" (nnU-Net: CE + batch soft Dice) or "vnet_dice" (V-Net eq. 1)
    v.oversample_foreground = 1.0 / 3.0  # fraction of each batch forced to hold foreground
    v.normalize = "zscore"  # per-case z-score ("zscore_nonzero": BraTS's brain mask; "none")
    v.overlap = 0.5  # sliding-window overlap in evaluation (nnU-Net's)
    v.sigma_scale = 0.125  # Gaussian importance sigma / window (nnU-Net's 1/8)
    v.sw_batch_size = 2  # windows per forward call in evaluation
    v.hd_percentile = 95.0  # HD95
    # HD given when exactly one of prediction and truth is empty (None: inf, logged as null;
    # BraTS uses the volume's diagonal in mm).
    v.empty_distance = ml_collections.config_dict.placeholder(float)
    v.panel_classes = ()  # classes choosing the pictured slices (() = every foreground class)
    return c


def check(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the key: an unknown loss or normalisation, a bad patch size, folds."""
    v = section(config, "volumetric", "volumetric")
    if v.loss not in LOSSES:
        raise ValueError(f"config.volumetric.loss={v.loss!r} is not one of {LOSSES}")
    if v.normalize not in NORMALIZATIONS:
        raise ValueError(f"config.volumetric.normalize={v.normalize!r} is not one of "
                         f"{NORMALIZATIONS}")
    patch = tuple(v.patch_size)
    if len(patch) != 3 or not all(isinstance(p, int) and p >= 1 for p in patch):
        raise ValueError(f"config.volumetric.patch_size must be 3 positive ints (D, H, W), got "
                         f"{patch}")
    if config.dataset.get("fold") is not None or config.dataset.get("leave_out") is not None:
        raise ValueError("config.dataset.fold / leave_out: the volumetric task trains on "
                         "dataset.train_split and evaluates on dataset.eval_split; unset them")


RANGES = {"volumetric.oversample_foreground": "[0, 1]", "volumetric.overlap": "[0, 1)",
          "volumetric.sigma_scale": "(0, inf)", "volumetric.sw_batch_size": "[1, inf)",
          "volumetric.hd_percentile": "[0, 100]", "volumetric.empty_distance": "[0, inf) or None"}


@register("volumetric", defaults=defaults, check=check, ranges=RANGES)
def build(config: ml_collections.ConfigDict, info, data_dir: str | None) -> VolumetricTask:
    """The volumetric task of a run: `config.volumetric` on dataset `info`; the volumes'
    channel count is the model's `in_channels`."""
    from segjax.models import create_model
    from segjax.train import config_utils

    check(config)
    v = section(config, "volumetric", "volumetric")
    model = create_model(config.model.name, num_classes=info.num_classes,
                         **config_utils.model_overrides(config.model))
    return VolumetricTask(
        num_classes=info.num_classes, ignore_label=info.ignore_label, info=info,
        data_dir=data_dir, train_split=config.dataset.train_split,
        num_train_examples=config.dataset.get("num_train_examples"),
        patch_size=tuple(v.patch_size), in_channels=getattr(model, "in_channels", 1),
        loss=v.loss, oversample_foreground=v.oversample_foreground, normalize=v.normalize,
        overlap=v.overlap, sigma_scale=v.sigma_scale, sw_batch_size=v.sw_batch_size,
        hd_percentile=v.hd_percentile, empty_distance=v.empty_distance,
        panel_classes=tuple(v.panel_classes), class_names=info.class_names,
        palette=info.palette)
