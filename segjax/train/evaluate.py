"""The evaluation driver: a task's compiled eval step over eval batches, into its accumulator.

Eval batches are padded to one fixed canvas (`eval.pad_to`) with the ignore label and carry a
per-example `valid` flag, so one compiled step serves the whole split; `evaluate` checks that
nothing was traced twice. It knows no task: the step (`segjax.train.parallel.Parallel.eval_step`,
the same strategy, pmap or mesh, that trains) computes the task's per-batch statistics, and the
task's `Accumulator` sums them on the host and turns them into metrics.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np


def evaluate(par, eval_step, state: Any, task, batches: Iterable[Mapping[str, np.ndarray]], *,
             on_batch: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None]
             | None = None) -> dict[str, Any]:
    """Runs a compiled eval step over `batches` and returns the task's metrics.

    Args:
      par: the `segjax.train.parallel.Parallel` strategy the state lives in.
      eval_step: `par.eval_step(task)`.
      state: the device state (`par.replicate(host_state)`).
      task: the `segjax.tasks.Task`.
      batches: process-local eval batches, all of one shape (padded, with "valid").
      on_batch: optional `(batch, per_example)` callback with this process's rows as numpy,
        e.g. to write pictures.

    Raises:
      RuntimeError: the step was traced more than once (batches of differing shapes).
    """
    acc = task.new_accumulator()
    traces_before = eval_step.trace_count()
    for batch in batches:
        sums, per_example = eval_step(state, par.shard_batch(
            {k: batch[k] for k in batch if k in task.eval_keys or k == "valid"}))
        rows = {k: par.local_rows(v) for k, v in per_example.items()}
        acc.update(par.host_value(sums), rows, batch)
        if on_batch is not None:
            on_batch(batch, rows)
    if eval_step.trace_count() > max(traces_before, 1):
        # Static shapes are the contract: a retrace means batches of differing shapes.
        raise RuntimeError(f"the eval step was traced {eval_step.trace_count()} times; eval "
                           "batches must all have one shape (pad them with eval.pad_to)")
    return acc.result()
