"""Orbax checkpoints of the training state: keep the last N plus the best by val mIoU.

Layout: `<workdir>/checkpoints/<step>/state/...` (orbax `CheckpointManager`, async saves).
Restoring always goes through a template of `jax.ShapeDtypeStruct`s built from a freshly created
state, so optimizer states come back with their types (DESIGN §6). A damaged latest step stays in
orbax's `all_steps()` and raises on restore; `restore_latest` then falls back to the newest step
that restores, moves the damaged ones to `<workdir>/damaged_checkpoints/` (so that the run can
save those step numbers again) and says which it skipped.

Example:
  >>> ckpt = Checkpointer(workdir / "checkpoints", keep=3)
  >>> ckpt.save(100, host_state, metrics={"miou": 0.71})
  >>> state, step = ckpt.restore_latest(template_state)  # (None, None) when nothing restores
  >>> ckpt.close()
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_policies

log = logging.getLogger(__name__)

# orbax warns that a read-only manager is read-only: segjax asks for that (prediction, evaluation
# commands), so the two lines are noise on every reading command's screen.
_READ_ONLY_NOTES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")


def _drop_read_only_notes(record: logging.LogRecord) -> bool:
    return not any(note in record.getMessage() for note in _READ_ONLY_NOTES)


logging.getLogger("absl").addFilter(_drop_read_only_notes)

BEST_METRIC = "miou"  # the default key that ranks checkpoints saved with eval metrics (higher wins)


def abstract_like(tree: Any) -> Any:
    """The tree with every array replaced by a `jax.ShapeDtypeStruct` (the restore template).

    Python scalars (e.g. a `TrainState.step` that is still an int) become 0-d int32/float32
    structs, which is how orbax stores them.
    """

    def to_struct(x):
        if isinstance(x, (jax.Array, np.ndarray, np.generic)):
            sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        if isinstance(x, (bool, int, float)):
            arr = np.asarray(x)
            return jax.ShapeDtypeStruct(arr.shape, arr.dtype)
        return x

    return jax.tree.map(to_struct, tree)


class Checkpointer:
    """Saves and restores one pytree (the training state) per step under `directory`.

    Args:
      directory: checkpoint root (created if missing).
      keep: how many of the most recent steps to keep (>= 1).
      keep_best: also keep the step with the highest `metrics[best_metric]` among steps saved with
        metrics.
      async_save: write in a background thread (`wait()` or `close()` before relying on files).
      read_only: for readers (prediction): never writes, moves or deletes anything.
      best_metric: the key of `metrics` that ranks steps (the task's best metric, e.g. "miou").
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, keep_best: bool = True,
                 async_save: bool = True, read_only: bool = False,
                 best_metric: str = BEST_METRIC):
        if keep < 1:
            raise ValueError(f"keep (keep_checkpoints) must be >= 1, got {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self._keep = keep
        self._keep_best = keep_best
        self._best_metric = best_metric
        self._async = async_save
        self._read_only = read_only
        self._manager = None
        if not read_only:
            # orbax reads every step's metadata and metrics when it opens the directory and
            # fails on a damaged one; move those aside first (restore_latest handles the rest).
            bad = self._unreadable_steps()
            if bad:
                log.warning("checkpoint step(s) %s in %s have unreadable metadata; skipping them",
                            bad, self.directory)
                self._quarantine(bad)
        self._manager = self._new_manager()

    def _unreadable_steps(self) -> list[int]:
        bad = []
        names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        for name in sorted(n for n in names if n.isdigit()):
            for rel in ("_CHECKPOINT_METADATA", os.path.join("metrics", "metrics")):
                path = os.path.join(self.directory, name, rel)
                try:
                    if os.path.exists(path):
                        with open(path) as f:
                            json.load(f)
                except (OSError, ValueError):
                    bad.append(int(name))
                    break
        return bad

    def _new_manager(self) -> ocp.CheckpointManager:
        best = self._best_metric
        policies = [ocp_policies.LatestN(n=self._keep)]
        if self._keep_best:
            policies.append(ocp_policies.BestN(
                get_metric_fn=lambda m: float(m[best]), n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            # best_fn only makes orbax write each step's metrics to disk (so keep-best survives
            # restarts); which steps are kept is decided by the preservation policy alone.
            best_fn=(lambda m: float(m[best])) if self._keep_best else None,
            best_mode="max",
            preservation_policy=ocp_policies.AnyPreservationPolicy(policies),
            enable_async_checkpointing=self._async,
            # Leftovers of a save interrupted by kill -9 (readers leave everything as it is).
            cleanup_tmp_directories=not self._read_only,
            create=not self._read_only,
            read_only=self._read_only,
            lightweight_initialize=self._read_only,  # readers do not parse every step's metadata
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """Steps present on disk (including unreadable ones), ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step on disk, or None."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the highest val mIoU among steps saved with metrics, or None."""
        best, best_value = None, -np.inf
        for step in self.all_steps():
            try:
                metrics = self._manager.metrics(step)
            except Exception:  # noqa: BLE001 - a damaged step has no readable metrics
                metrics = None
            if metrics and self._best_metric in metrics and float(metrics[self._best_metric]) > best_value:
                best, best_value = step, float(metrics[self._best_metric])
        return best

    def save(self, step: int, state: Any, *, metrics: dict[str, float] | None = None) -> None:
        """Starts saving `state` (a pytree of arrays on host or device) as `step`.

        `metrics` (e.g. `{"miou": 0.7}`) ranks the step for keep-best; pass plain floats. A None
        value (an undefined metric, e.g. COCO AP of an evaluation without ground truth) saves the
        step without metrics, as a step that keep-best never picks.
        Raises ValueError if `step` already exists.
        """
        if step in self._manager.all_steps():
            raise ValueError(f"checkpoint step {step} already exists in {self.directory}")
        if metrics is not None and any(v is None for v in metrics.values()):
            metrics = None
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                           metrics=metrics, force=True)

    def restore(self, step: int, template: Any) -> Any:
        """Restores `step` into the structure of `template` (arrays or ShapeDtypeStructs)."""
        if step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint step {step} in {self.directory}; present: {self.all_steps()}")
        abstract = abstract_like(template)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return restored["state"]

    def restore_latest(self, template: Any, *, quarantine: bool = True) -> tuple[Any, int | None]:
        """Restores the newest step that restores; `(None, None)` when there is none.

        Damaged steps newer than it are logged with their error and, with `quarantine` (training
        resumes), moved to `<parent>/damaged_checkpoints/<step>`; readers pass False.
        """
        self.wait()
        quarantine = quarantine and not self._read_only
        skipped = []
        for step in reversed(self.all_steps()):
            try:
                state = self.restore(step, template)
            except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged data
                log.warning("checkpoint step %d in %s does not restore (%s: %s); skipping it",
                            step, self.directory, type(e).__name__, e)
                skipped.append(step)
                continue
            if skipped and quarantine:
                self._quarantine(skipped)
                log.warning("resumed from step %d; skipped damaged step(s) %s (moved to %s)",
                            step, skipped, self._damaged_dir())
            return state, step
        if skipped and quarantine:
            self._quarantine(skipped)
            log.warning("no checkpoint restores; skipped damaged step(s) %s (moved to %s)",
                        skipped, self._damaged_dir())
        return None, None

    @property
    def skipped_message(self) -> str:
        """Human-readable note on quarantined steps (empty when none)."""
        d = self._damaged_dir()
        return f"damaged checkpoints moved to {d}: {sorted(os.listdir(d))}" if os.path.isdir(d) else ""

    def _damaged_dir(self) -> str:
        return os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")

    def _quarantine(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            os.makedirs(self._damaged_dir(), exist_ok=True)
            for step in steps:
                src = os.path.join(self.directory, str(step))
                dst = os.path.join(self._damaged_dir(), str(step))
                if os.path.exists(dst):
                    shutil.rmtree(dst)
                if os.path.exists(src):
                    shutil.move(src, dst)
        if self._manager is not None:
            self._manager.close()
            self._manager = self._new_manager()

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager's threads."""
        self._manager.wait_until_finished()
        self._manager.close()
