"""Paired statistics for comparing methods over seeds and settings.

Every method of a comparison runs on the same partitions and sampling streams per seed, so two
methods' results pair by seed: the honest test of "A beats B" is on the per-seed differences,
not on two overlapping mean +- std cells. scipy does the arithmetic; this module fixes the
conventions (95% t interval of the mean difference, Wilcoxon signed-rank and paired t p-values,
tie = the interval contains 0) so every table in the project states the same thing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class Paired:
    """A - B over seeds: mean difference, its 95% t interval and two p-values."""
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_wilcoxon: float  # exact two-sided signed-rank test (NaN when every difference is 0 or n < 2)
    p_ttest: float     # paired t-test (NaN for n < 2 or zero variance)

    @property
    def outcome(self) -> str:
        """``win``/``loss`` when the interval excludes 0, else ``tie`` (also when n < 2)."""
        if math.isnan(self.ci_low) or self.ci_low <= 0 <= self.ci_high:
            return "tie"
        return "win" if self.ci_low > 0 else "loss"


def paired(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> Paired:
    """Compare ``a`` and ``b`` indexed by seed (only seeds present in both count)."""
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    d = (both.iloc[:, 0] - both.iloc[:, 1]).to_numpy(dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("no seed has results for both methods")
    mean = float(d.mean())
    if n < 2:
        return Paired(n, mean, math.nan, math.nan, math.nan, math.nan)
    sem = float(d.std(ddof=1)) / math.sqrt(n)
    if sem == 0:  # every seed gives the same difference: the interval is that point
        p_t = math.nan
        low = high = mean
    else:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
        low, high = mean - half, mean + half
        p_t = float(stats.ttest_rel(both.iloc[:, 0], both.iloc[:, 1]).pvalue)
    p_w = float(stats.wilcoxon(d, method="exact").pvalue) if np.any(d != 0) else math.nan
    return Paired(n, mean, low, high, p_w, p_t)


def paired_table(results: pd.DataFrame, method: str, metric: str) -> pd.DataFrame:
    """``method`` against every other label of ``results`` (columns label, seed, ``metric``), one
    row per opponent: n, mean difference with its 95% interval, p-values and the outcome."""
    wide = results.pivot_table(index="seed", columns="label", values=metric, aggfunc="first")
    rows = {other: paired(wide[method], wide[other]) for other in wide.columns if other != method}
    return pd.DataFrame({k: {"n": p.n, "mean_diff": p.mean_diff, "ci_low": p.ci_low, "ci_high": p.ci_high,
                             "p_wilcoxon": p.p_wilcoxon, "p_ttest": p.p_ttest, "outcome": p.outcome}
                         for k, p in rows.items()}).T


def win_tie_loss(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per opponent, how many settings end in a win, tie or loss (``tables``: setting -> paired_table)."""
    outcomes = pd.DataFrame({setting: t["outcome"] for setting, t in tables.items()})
    return pd.DataFrame({o: (outcomes == o).sum(axis=1) for o in ("win", "tie", "loss")})


def mean_ranks(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean rank of each method (rows) over settings (columns; higher score = better, rank 1 =
    best, ties share the average rank) with its spread: std, best and worst rank."""
    ranks = scores.rank(axis=0, ascending=False, method="average")
    return pd.DataFrame({"mean_rank": ranks.mean(axis=1), "std": ranks.std(axis=1, ddof=1),
                         "best": ranks.min(axis=1), "worst": ranks.max(axis=1),
                         "settings": ranks.notna().sum(axis=1)}).sort_values("mean_rank")
