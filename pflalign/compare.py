"""Many runs (algorithms/variants x seeds) in parallel processes, and their comparison table.

Each run is an ordinary run directory; the table reads only ``results.json`` files, so it can
be rebuilt from finished runs at any time (``pflalign report`` does the same).
"""
from __future__ import annotations

import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .experiment import launch

# results.json field -> table column (accuracies in percent)
COLUMNS = {
    "acc_mean_last10": "acc (mean, last 10)",
    "acc_last10": "acc (weighted, last 10)",
    "final.acc_worst": "worst client",
    "final.acc_bottom10": "bottom 10%",
    "stability_std": "stability std",
    "global_acc_last10": "global model acc",
}


def _run(args) -> str:
    cfg, callbacks = args
    return str(launch(cfg, callbacks))


def run_many(cfgs: list, jobs: int, callbacks: Callable) -> list[Path]:
    """Run every config (``jobs`` at a time, each in its own process); returns run dirs in order."""
    if jobs <= 1:
        return [Path(_run((c, callbacks))) for c in cfgs]
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        return [Path(p) for p in pool.map(_run, [(c, callbacks) for c in cfgs])]


def _get(results: dict, dotted: str):
    value = results
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return np.nan
        value = value[part]
    return value


def load_results(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per run: its label, seed and every table field (NaN where absent)."""
    rows = []
    for d in run_dirs:
        r = json.loads((Path(d) / "results.json").read_text())
        rows.append({"label": r.get("label", r["algorithm"]), "seed": r["seed"], **{c: _get(r, k) for k, c in COLUMNS.items()}})
    return pd.DataFrame(rows)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """mean +- std over seeds per label, in percent, sorted by mean personalized accuracy."""
    cols = [c for c in COLUMNS.values() if df[c].notna().any()]
    grouped = df.groupby("label", sort=False)
    mean, std = grouped[cols].mean() * 100, grouped[cols].std(ddof=0).fillna(0) * 100
    table = pd.DataFrame({c: [f"{m:.1f} ± {s:.1f}" if not np.isnan(m) else "" for m, s in zip(mean[c], std[c])]
                          for c in cols}, index=mean.index)
    table.insert(0, "seeds", grouped.size())
    order = mean[cols[0]].sort_values(ascending=False).index
    return table.loc[order]


def write_table(table: pd.DataFrame, out_prefix: Path) -> str:
    """Markdown to ``<prefix>.md`` and CSV to ``<prefix>.csv``; returns the markdown."""
    md = table.to_markdown()
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out_prefix}.md").write_text(md + "\n")
    table.to_csv(f"{out_prefix}.csv")
    return md
