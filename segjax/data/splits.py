"""Which examples a run trains and evaluates on: splits, k-fold and leave-p-out folds.

`data_splits(config.dataset)` is the one reading of the config's split and fold keys;
`fold_indices` is the deterministic partition (it depends only on `fold_seed`, so runs with
different seeds share it); `train_subset` the positions a run trains on (fold, then
`num_train_examples`).
"""
from __future__ import annotations

import math

import numpy as np

def fold_indices(n: int, *, fold: int, num_folds: int, seed: int,
                 leave_out: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic cross-validation split of `range(n)`: sorted `(train, val)` indices.

    k-fold (`leave_out=None`): a permutation of `range(n)` drawn from `seed` is dealt into
    `num_folds` parts; fold `fold` holds out part `fold`. The parts are disjoint and cover
    `range(n)`.

    Leave-p-out (`leave_out=p`, `num_folds` unused): fold `fold` in `[0, C(n, p))` holds out one
    p-subset. Folds `0 .. C(n, p) - 1` enumerate every p-subset exactly once, in an order
    scrambled by `seed` (a seeded affine bijection of the lexicographic ranks), so the first few
    folds are spread over the data rather than all sharing example 0. `leave_out=1` is
    leave-one-out.

    Example: `fold_indices(5, fold=0, num_folds=0, seed=0, leave_out=2)[1]` is one pair of
    `0..4`; the 10 folds of `leave_out=2` are the 10 pairs.
    """
    if leave_out is not None:
        return _leave_p_out(n, fold=fold, p=leave_out, seed=seed)
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, num_folds={num_folds}), got {fold}")
    perm = np.random.default_rng([seed, 0x6F6C64]).permutation(n)
    val = np.sort(perm[fold::num_folds])
    return np.setdiff1d(np.arange(n), val), val


def _leave_p_out(n: int, *, fold: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 1 <= p < n:
        raise ValueError(f"leave-p-out needs 1 <= p < n (some examples left to train on); got "
                         f"p={p} with n={n} examples")
    total = math.comb(n, p)  # Python ints throughout: a * fold below can exceed int64
    if not 0 <= fold < total:
        raise ValueError(f"leave-{p}-out on {n} examples has C({n}, {p}) = {total} folds; fold "
                         f"must be in [0, {total}), got {fold}")
    rng = np.random.default_rng([seed, 0x6C706F])
    # rank = (a * fold + b) mod total with gcd(a, total) = 1 is a bijection of [0, total).
    a = 1 + int(rng.integers(0, 2**62)) % total
    while math.gcd(a, total) != 1:
        a = a % total + 1
    rank = (a * fold + int(rng.integers(0, 2**62))) % total
    val = np.asarray(_unrank_combination(rank, n, p), dtype=np.int64)
    return np.setdiff1d(np.arange(n), val), val


def _unrank_combination(rank: int, n: int, p: int) -> list[int]:
    """The `rank`-th p-subset of `range(n)` in lexicographic order (sorted)."""
    out, start = [], 0
    for left in range(p, 0, -1):
        for first in range(start, n):
            count = math.comb(n - first - 1, left - 1)  # subsets whose next element is `first`
            if rank < count:
                out.append(first)
                start = first + 1
                break
            rank -= count
    return out


def fold_subset(n: int, *, part: int, fold: int | None = None, num_folds: int = 5,
                fold_seed: int = 0, leave_out: int | None = None) -> np.ndarray:
    """Positions of `range(n)` in cross-validation part `part` (0: train, 1: held out) of fold
    `fold` (see `fold_indices`); every position when `fold` is None. Takes the pipelines' fold
    keywords, e.g. the kwargs that `data_splits` builds from the config."""
    if fold is None:
        return np.arange(n)
    return fold_indices(n, fold=fold, num_folds=num_folds, seed=fold_seed,
                        leave_out=leave_out)[part]




def data_splits(ds) -> tuple[dict, str, dict, str]:
    """(train fold kwargs, eval split, eval fold kwargs, eval label) for `config.dataset`.

    Without `ds.fold`: train on `ds.train_split`, evaluate on `ds.eval_split`. With it
    (cross-validation): both read `ds.train_split`, training on all but the held-out part and
    evaluating that part; k-fold holds out fold `ds.fold` of `ds.num_folds`, leave-p-out (with
    `ds.leave_out = p`) the `ds.fold`-th of the C(n, p) p-subsets. metrics.jsonl labels the
    eval lines e.g. "train_aug/fold2of5" or "train_aug/leave2out/fold17".

    Raises:
      ValueError: a fold or leave_out out of range, naming the key.
    """
    if ds.fold is None:
        return {}, ds.eval_split, {}, ds.eval_split
    kw = {"fold": ds.fold, "num_folds": ds.num_folds, "fold_seed": ds.fold_seed,
          "leave_out": ds.leave_out}
    if ds.leave_out is not None:
        if ds.leave_out < 1:
            raise ValueError(f"config.dataset.leave_out={ds.leave_out} must be >= 1 (the p of "
                             "leave-p-out), or None for k-fold")
        if ds.fold < 0:
            raise ValueError(f"config.dataset.fold={ds.fold} must be >= 0")
        return kw, ds.train_split, kw, f"{ds.train_split}/leave{ds.leave_out}out/fold{ds.fold}"
    if not 0 <= ds.fold < ds.num_folds:
        raise ValueError(f"config.dataset.fold={ds.fold} must be in [0, "
                         f"config.dataset.num_folds={ds.num_folds})")
    return kw, ds.train_split, kw, f"{ds.train_split}/fold{ds.fold}of{ds.num_folds}"


def train_subset(ds, n: int) -> np.ndarray:
    """Positions of `range(n)` (the train split) that a run with `config.dataset` trains on."""
    subset = fold_subset(n, part=0, **data_splits(ds)[0])
    if ds.num_train_examples is not None:
        if ds.num_train_examples < 1:
            raise ValueError(f"config.dataset.num_train_examples={ds.num_train_examples} must "
                             "be >= 1")
        subset = subset[:ds.num_train_examples]
    return subset
