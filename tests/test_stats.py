"""Paired statistics (pflalign.stats) against hand-computed values."""
import math

import pandas as pd
import pytest
from scipy import stats as sp

from pflalign.stats import mean_ranks, paired, paired_table, win_tie_loss


def test_paired_difference_interval_and_p_values():
    a = pd.Series([0.80, 0.82, 0.79, 0.85, 0.81], index=range(5))
    b = pd.Series([0.78, 0.80, 0.78, 0.80, 0.80], index=range(5))
    p = paired(a, b)
    d = [0.02, 0.02, 0.01, 0.05, 0.01]
    mean, sd = sum(d) / 5, pd.Series(d).std(ddof=1)
    half = sp.t.ppf(0.975, 4) * sd / math.sqrt(5)  # 2.776 * sem
    assert p.n == 5 and p.mean_diff == pytest.approx(mean)
    assert (p.ci_low, p.ci_high) == pytest.approx((mean - half, mean + half))
    assert p.p_wilcoxon == pytest.approx(0.0625)  # all 5 differences positive: 2 / 2**5, exact
    assert p.p_ttest == pytest.approx(sp.ttest_rel(a, b).pvalue) and p.outcome == "win"


def test_ties_losses_and_degenerate_cases():
    a = pd.Series([0.5, 0.6, 0.7], index=[0, 1, 2])
    assert paired(a, a.iloc[::-1].set_axis([0, 1, 2])).outcome == "tie"  # differences +-0.2, 0: interval holds 0
    assert paired(a - 0.1, a).outcome == "loss"  # every seed 0.1 lower: the interval is that point
    assert paired(a.iloc[:1], a.iloc[:1]).outcome == "tie" and math.isnan(paired(a.iloc[:1], a.iloc[:1]).ci_low)
    with pytest.raises(ValueError):
        paired(a.set_axis([5, 6, 7]), a)  # no seed in common


def test_paired_table_win_tie_loss_and_ranks():
    rows = [("x", s, 0.9 + 0.01 * s) for s in range(3)] + [("y", s, 0.8 + 0.02 * s) for s in range(3)] + \
           [("z", s, v) for s, v in enumerate([0.95, 0.85, 0.92])]
    results = pd.DataFrame(rows, columns=["label", "seed", "acc"])
    table = paired_table(results, "x", "acc")
    assert list(table.index) == ["y", "z"] and table.loc["y", "outcome"] == "win"
    assert table.loc["z", "outcome"] == "tie" and table.loc["y", "n"] == 3
    wtl = win_tie_loss({"s1": table, "s2": table})
    assert wtl.loc["y"].tolist() == [2, 0, 0] and wtl.loc["z"].tolist() == [0, 2, 0]
    ranks = mean_ranks(pd.DataFrame({"s1": [0.9, 0.8, 0.9], "s2": [0.7, 0.8, 0.6]}, index=["x", "y", "z"]))
    assert ranks.loc["x", "mean_rank"] == pytest.approx((1.5 + 2) / 2) and ranks.loc["y", "worst"] == 3
    assert ranks.loc["z", "std"] == pytest.approx(pd.Series([1.5, 3]).std())
