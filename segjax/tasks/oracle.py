"""The oracle task: a mask-quality oracle regressing the Dice of a degraded mask, scored by
Spearman's rho (Fernandes, Cruz & Cardoso, IJCNN 2018).

The task derives its batches from the dataset's semantic stream (`train_batches` /
`eval_batches`), on the host: for each semantic example (image, label map) it picks one class
present in the label (not the background unless nothing else is present; drawn by the
example's generator), degrades that class's binary mask with `segjax.data.degrade` (bin
probabilities calibrated once per run so that the Dice is roughly uniform on [0, 1]) and
records the degraded mask's Dice against the class's true mask. One example per semantic
example keeps batches at the run's fixed size; evaluation draws `eval_copies` independent
degradations of every validation image (copy c of batch k uses position `k * eval_copies + c`),
so it sees as many (image, mask) pairs as that.

Every draw is a pure function of `(config.seed, stream, position, global example index)`
(`degrade.example_rng`; position = the train step, or the eval batch and copy): resuming at
`start_step` reproduces the stream, and the same run on any device count sees the same masks.
The calibration uses the first `calibration_masks` examples of the train stream (seed + 1),
so it too depends on the seed only.

Batches: `{"image" [B, H, W, 3] normalised, "mask" float32 [B, H, W] in {0, 1}, "quality"
float32 [B] (Dice)}`; eval adds `"valid"` [B], `"index"` [B] and `"class_id"` [B].
Model: `model.apply(v, image, mask, train=...)["quality"]` [N] (`segjax.models.oracle`).
Segmentation by gradient ascent of a trained oracle: `segjax.tasks.oracle_refine`.
Loss: squared error to the Dice as `(sum, count = examples)`. Metrics (host, from per-example
rows): `spearman` (ranks checkpoints), `pearson`, `mae`, `rmse`, `num_examples`.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax.data import degrade
from segjax.tasks.base import Accumulator, StepContext, Task
from segjax.tasks.registry import register, section

BEST_METRIC = "spearman"
QUALITY = "quality"
EVAL_KEYS = ("spearman", "pearson", "mae", "rmse", "num_examples")


def pick_class(label: np.ndarray, rng: np.random.Generator, *, ignore_label: int,
               background: int | None = 0) -> int:
    """A class present in `label` [H, W] (ignoring `ignore_label`), drawn uniformly among the
    present non-background classes; `background` when nothing else is present."""
    present = [int(c) for c in np.unique(label) if c != ignore_label and c != background]
    if not present:
        return int(background if background is not None else 0)
    return int(rng.choice(present))


def degraded_examples(images: np.ndarray, labels: np.ndarray, *, seed: int, stream: int,
                      position: int, probs: np.ndarray | None, ignore_label: int,
                      offset: int = 0, background: int | None = 0) -> dict[str, np.ndarray]:
    """One (image, degraded mask, Dice) example per row of a semantic batch.

    Row i uses `degrade.example_rng(seed, stream, position, offset + i)`: the class
    (`pick_class`) then the degradation (`degrade.degrade` with bin probabilities `probs`).
    Ignored pixels are outside the degraded mask and not counted in the Dice.

    Returns:
      `{"image": images, "mask": float32 [B, H, W], "quality": float32 [B], "truth": bool
      [B, H, W] (the class's true mask), "class_id": int32 [B]}`.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    masks = np.zeros(labels.shape, np.float32)
    truth = np.zeros(labels.shape, bool)
    quality = np.zeros(n, np.float32)
    classes = np.zeros(n, np.int32)
    for i in range(n):
        rng = degrade.example_rng(seed, stream, position, offset + i)
        valid = labels[i] != ignore_label
        c = pick_class(labels[i], rng, ignore_label=ignore_label, background=background)
        gt = labels[i] == c
        m, _ = degrade.degrade(gt, rng, probs)
        m &= valid
        masks[i], truth[i], classes[i] = m, gt, c
        quality[i] = degrade.dice(m, gt, valid)
    return {"image": np.asarray(images), "mask": masks, "quality": quality, "truth": truth,
            "class_id": classes}


class OracleAccumulator(Accumulator):
    """Per-example (predicted, true) quality rows of the valid examples -> rank metrics."""

    def __init__(self):
        self._pred: list[np.ndarray] = []
        self._true: list[np.ndarray] = []

    def update(self, sums, per_example, batch) -> None:
        del sums
        valid = np.asarray(batch["valid"], bool)
        self._pred.append(np.asarray(per_example["pred"], np.float64)[valid])
        self._true.append(np.asarray(batch["quality"], np.float64)[valid])

    def result(self) -> dict[str, Any]:
        return oracle_metrics(np.concatenate(self._pred or [np.zeros(0)]),
                               np.concatenate(self._true or [np.zeros(0)]))


def oracle_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """Spearman's and Pearson's correlation, MAE and RMSE of predicted vs true quality.

    A correlation that is undefined (fewer than 2 examples, or a constant side) is 0.0, so an
    untrained constant oracle ranks below any that orders the masks."""
    from scipy import stats

    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    out = {"num_examples": int(len(pred))}
    ok = len(pred) > 1 and np.ptp(pred) > 0 and np.ptp(true) > 0
    out["spearman"] = float(stats.spearmanr(pred, true).statistic) if ok else 0.0
    out["pearson"] = float(stats.pearsonr(pred, true).statistic) if ok else 0.0
    err = pred - true
    out["mae"] = float(np.mean(np.abs(err))) if len(err) else 0.0
    out["rmse"] = float(np.sqrt(np.mean(err ** 2))) if len(err) else 0.0
    return out


class OracleTask(Task):
    """Regression of the Dice of (image, degraded mask) pairs (see the module docstring).

    Args:
      ignore_label: the dataset's.
      background: the class id never picked while another class is present (None: none).
      calibration_masks: ground-truth masks used to calibrate the degradation probabilities
        (0: no calibration, bins drawn uniformly).
      eval_copies: degradations drawn per validation image.
      seed: the run's seed (calibration; the streams take theirs from the trainer).
    """

    name = "oracle"
    best_metric = BEST_METRIC
    model_output = "score"
    train_keys = ("image", "mask", "quality")
    eval_keys = ("image", "mask", "quality", "valid")

    def __init__(self, *, ignore_label: int, background: int | None = 0,
                 calibration_masks: int = 64, eval_copies: int = 2, seed: int = 0):
        if eval_copies < 1:
            raise ValueError(f"config.oracle.eval_copies must be >= 1, got {eval_copies}")
        self.ignore_label = ignore_label
        self.background = background
        self.calibration_masks = calibration_masks
        self.eval_copies = eval_copies
        self.seed = seed
        self._probs: dict[int, np.ndarray | None] = {}

    # ---------------------------------------------------------------------------- the data

    def calibration(self, data, *, batch_size: int) -> np.ndarray | None:
        """The degradation bin probabilities of this run (computed once, then cached)."""
        if self.seed in self._probs:
            return self._probs[self.seed]
        probs = None
        if self.calibration_masks > 0:
            masks: list[np.ndarray] = []
            stream = data.train(batch_size=batch_size, seed=self.seed + 1, start_step=0)
            k = 0
            while len(masks) < self.calibration_masks:
                batch = next(stream)
                for i, label in enumerate(np.asarray(batch["label"])):
                    rng = degrade.example_rng(self.seed, degrade.CALIBRATION_STREAM, k, i)
                    c = pick_class(label, rng, ignore_label=self.ignore_label,
                                   background=self.background)
                    if np.any(label == c):
                        masks.append(label == c)
                k += 1
            probs = degrade.calibrate(masks[:self.calibration_masks], seed=self.seed)
        self._probs[self.seed] = probs
        return probs

    @staticmethod
    def _offset(data, batch_size: int) -> int:
        # Global example index of this process's first row (DataStreams keeps its process).
        return int(getattr(data, "_process", {}).get("process_index", 0)) * batch_size

    def train_batches(self, data, *, batch_size: int, seed: int, start_step: int
                      ) -> Iterator[dict[str, np.ndarray]]:
        probs = self.calibration(data, batch_size=batch_size)
        offset = self._offset(data, batch_size)
        step = start_step
        for batch in data.train(batch_size=batch_size, seed=seed, start_step=start_step):
            step += 1  # the global step this batch trains (1-based, as the loop counts)
            ex = degraded_examples(batch["image"], batch["label"], seed=seed,
                                   stream=degrade.TRAIN_STREAM, position=step, probs=probs,
                                   ignore_label=self.ignore_label, offset=offset,
                                   background=self.background)
            yield {k: ex[k] for k in ("image", "mask", "quality")}

    def eval_batches(self, data, *, batch_size: int, pad_to) -> Iterator[dict[str, np.ndarray]]:
        probs = self.calibration(data, batch_size=batch_size)
        offset = self._offset(data, batch_size)
        for k, batch in enumerate(data.eval(batch_size=batch_size, pad_to=pad_to)):
            for c in range(self.eval_copies):
                ex = degraded_examples(batch["image"], batch["label"], seed=self.seed,
                                       stream=degrade.EVAL_STREAM,
                                       position=k * self.eval_copies + c, probs=probs,
                                       ignore_label=self.ignore_label, offset=offset,
                                       background=self.background)
                yield {"image": ex["image"], "mask": ex["mask"], "quality": ex["quality"],
                       "class_id": ex["class_id"], "valid": np.asarray(batch["valid"], bool),
                       "index": np.asarray(batch["index"], np.int32)}

    # ---------------------------------------------------------------------------- training

    def model_inputs(self, batch, *, train: bool):
        del train
        return (batch["image"], batch["mask"]), {}

    def init_inputs(self, image_shape):
        return (jnp.zeros(image_shape, jnp.float32),
                jnp.zeros(tuple(image_shape[:3]), jnp.float32)), {}

    def loss(self, outputs: Mapping[str, jax.Array], batch, ctx: StepContext):
        """`(sum of squared errors to the Dice, number of examples)` of this share."""
        del ctx
        if QUALITY not in outputs:
            raise ValueError(f"outputs must contain {QUALITY!r}, got keys {sorted(outputs)}")
        err = outputs[QUALITY].astype(jnp.float32) - batch["quality"].astype(jnp.float32)
        return jnp.sum(err * err), jnp.float32(err.shape[0])

    # ---------------------------------------------------------------------------- evaluation

    def eval_outputs(self, apply_fn, variables, batch):
        q = apply_fn(variables, batch["image"], batch["mask"], train=False)[QUALITY]
        valid = batch["valid"]
        sums = {"count": jnp.sum(valid.astype(jnp.int32))}
        return sums, {"pred": q.astype(jnp.float32)}

    def new_accumulator(self) -> OracleAccumulator:
        return OracleAccumulator()

    def logged_metrics(self, metrics):
        return {k: metrics[k] for k in EVAL_KEYS if k in metrics}

    def summary_line(self, metrics):
        return (f"spearman {metrics['spearman']:.4f}  mae {metrics['mae']:.4f}  "
                f"({metrics['num_examples']} degraded masks)")

    def save_examples(self, out_dir, step, batch, per_example, *, limit, writer=None) -> int:
        """image | degraded mask, named `<index>_c<class>_true<q>_pred<q>.png`."""
        from segjax import visualize

        def panel(i, h, w):
            del h, w  # the whole (padded) image, as the oracle saw it
            image = visualize.to_uint8_image(np.asarray(batch["image"][i]))
            mask = np.repeat((np.asarray(batch["mask"][i]) * 255).astype(np.uint8)[..., None],
                             3, -1)
            return visualize.side_by_side(image, mask)

        def name(i, written):
            del written
            return (f"{int(batch['index'][i]):05d}_c{int(batch['class_id'][i])}_true"
                    f"{float(batch['quality'][i]):.2f}_pred{float(per_example['pred'][i]):.2f}")

        return self.write_panels(out_dir, step, batch, panel, limit=limit, writer=writer,
                                 name=name, tag="oracle")


def defaults() -> ml_collections.ConfigDict:
    """The oracle task's config section."""
    c = ml_collections.ConfigDict()
    c.oracle = ml_collections.ConfigDict()
    c.oracle.calibration_masks = 64  # train masks fitting the Dice-uniform degradation mix
    c.oracle.eval_copies = 2  # degradations drawn per validation image
    c.oracle.background = 0  # class never picked while another is present
    return c


# Runs written before the rename say `task: "quality"` with a `quality` section: the registry
# reads both as "oracle" (`segjax.tasks.registry._RENAMED`).
@register("oracle", defaults=defaults, ranges={
    "oracle.calibration_masks": "[1, inf)", "oracle.eval_copies": "[1, inf)",
    "oracle.background": "[0, inf) or None"})
def build(config, info, data_dir) -> OracleTask:
    """The oracle task of a run: `config.oracle` on dataset `info`."""
    del data_dir
    q = section(config, "oracle", "oracle")
    return OracleTask(ignore_label=info.ignore_label, background=q.background,
                      calibration_masks=int(q.calibration_masks),
                      eval_copies=int(q.eval_copies), seed=int(config.seed))
