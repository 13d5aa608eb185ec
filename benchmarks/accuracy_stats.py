"""The accuracy suite's statistics: pFLAlign paired against every tuned method per setting, the
win/tie/loss count across settings, mean ranks with their spread, and the rule that decides
whether a pFLAlign variant replaces the default (wins or ties every setting against it and
improves its mean rank). Conventions are :mod:`pflalign.stats`'s; values in points (%)."""
from __future__ import annotations

import pandas as pd

from pflalign.stats import mean_ranks, paired_table, win_tie_loss


def paired_by_setting(results: pd.DataFrame, method: str, opponents: list[str], metric: str) -> dict[str, pd.DataFrame]:
    """setting -> ``method`` paired against each of ``opponents`` over seeds (settings without
    ``method`` or any opponent are left out)."""
    tables = {}
    for setting, rows in results.groupby("setting", sort=False):
        rows = rows[rows["label"].isin([method, *opponents])]
        if method in set(rows["label"]) and len(set(rows["label"])) > 1:
            tables[setting] = paired_table(rows.assign(**{metric: rows[metric] * 100}), method, metric)
    return tables


def paired_markdown(table: pd.DataFrame) -> str:
    """One row per opponent: the mean paired difference with its 95% interval, the p-values, the
    outcome; opponents the method beats by the most first."""
    table = table.sort_values("mean_diff", ascending=False)
    cells = pd.DataFrame({
        "diff (points) [95% CI]": [f"{r.mean_diff:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" for r in table.itertuples()],
        "seeds": table["n"].astype(int).to_numpy(),
        "p (Wilcoxon)": [f"{p:.3f}" for p in table["p_wilcoxon"]],
        "p (paired t)": [f"{p:.3f}" for p in table["p_ttest"]],
        "outcome": table["outcome"].to_numpy()}, index=table.index)
    return cells.to_markdown()


def compact_markdown(tables: dict[str, pd.DataFrame]) -> str:
    """Opponents x settings: the mean paired difference, its 95% interval and the outcome's letter."""
    cell = "{0.mean_diff:+.1f} [{0.ci_low:+.1f}, {0.ci_high:+.1f}] {1}"
    return pd.DataFrame({setting: pd.Series({r.Index: cell.format(r, r.outcome[0].upper()) for r in t.itertuples()})
                         for setting, t in tables.items()}).to_markdown()


def scores(results: pd.DataFrame, labels: list[str], metric: str) -> pd.DataFrame:
    """Mean over seeds, one row per label, one column per setting (in %)."""
    rows = results[results["label"].isin(labels)]
    return rows.groupby(["label", "setting"])[metric].mean().unstack() * 100


def ranks_markdown(scores: pd.DataFrame) -> str:
    return mean_ranks(scores).round(2).to_markdown()


def variant_verdicts(results: pd.DataFrame, default: str, variants: list[str], pool: list[str],
                     metric: str, suite_settings: int | None = None) -> pd.DataFrame:
    """Per variant: its win/tie/loss against ``default`` over settings, its mean rank when it takes
    the default's place among ``pool`` (the other methods) and the default's, and the verdict
    (provisional while fewer than the suite's ``suite_settings`` settings have results)."""
    rows = {}
    settings = sorted(set(results["setting"]))
    base = mean_ranks(scores(results, [default, *pool], metric))
    for v in variants:
        tables = paired_by_setting(results, v, [default], metric)
        if not tables:
            continue
        wtl = win_tie_loss(tables).loc[default]
        ranked = mean_ranks(scores(results, [v, *pool], metric))
        complete = len(tables) == len(settings)
        better = ranked.loc[v, "mean_rank"] < base.loc[default, "mean_rank"]
        verdict = "replaces the default" if complete and wtl["loss"] == 0 and better else "stays an option"
        if suite_settings is not None and len(settings) < suite_settings:
            verdict = f"provisional ({len(settings)} of {suite_settings} settings): {verdict}"
        rows[v] = {"win": int(wtl["win"]), "tie": int(wtl["tie"]), "loss": int(wtl["loss"]),
                   "settings": f"{len(tables)}/{len(settings)}", "mean rank": round(ranked.loc[v, "mean_rank"], 2),
                   f"{default} mean rank": round(base.loc[default, "mean_rank"], 2), "verdict": verdict}
    return pd.DataFrame(rows).T


def statistics_section(results: pd.DataFrame, method: str, opponents: list[str], variants: list[str],
                       pool: list[str], metric: str, suite_settings: int | None = None) -> list[str]:
    """The summary's statistics, as markdown lines."""
    tables = paired_by_setting(results, method, opponents, metric)
    if not tables:
        return ["## Paired statistics", "", f"(no {method} runs)", ""]
    lines = ["## Paired statistics: pFLAlign against each tuned method", "",
             f"{metric}, in points: the mean over seeds of ({method} - opponent), paired by seed (same "
             "partition and sampling stream), with its 95% t interval; exact two-sided Wilcoxon signed-rank "
             "and paired t p-values. Outcome: win/loss when the interval excludes 0, else tie. With 5 "
             "seeds the smallest two-sided Wilcoxon p is 0.0625, so the t interval decides.", "",
             "### Win / tie / loss across settings (rows: the opponent; win: pFLAlign better)", "",
             win_tie_loss(tables).to_markdown(), "",
             "### Mean paired difference [95% CI] per setting (W/T/L)", "", compact_markdown(tables), ""]
    for setting, table in tables.items():
        lines += [f"### {setting}", "", paired_markdown(table), ""]
    lines += ["## Mean rank with its spread (rank 1 = best, over settings)", "",
              ranks_markdown(scores(results, [method, *pool], metric)), ""]
    verdicts = variant_verdicts(results, method, variants, pool, metric, suite_settings)
    if len(verdicts):
        lines += ["## pFLAlign variants against the default", "",
                  "A variant replaces the default only if it wins or ties every setting against it and its "
                  "mean rank (in the default's place among the same methods) is better.", "",
                  verdicts.to_markdown(), ""]
        for v in verdicts.index:
            for setting, table in paired_by_setting(results, v, [method], metric).items():
                lines += [f"### {v} - {method}, {setting}", "", paired_markdown(table), ""]
    return lines
