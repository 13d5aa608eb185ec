"""Many runs (algorithms/variants x seeds) in parallel processes, and their comparison table.

Each run is an ordinary run directory; the table reads only ``results.json`` files, so it can
be rebuilt from finished runs at any time (``pflalign report`` does the same).
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .errors import InputError
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


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_json(path: Path, what: str):
    """A JSON file that a table or plot trusts; garbage is bad input naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"cannot read {path} ({what}): {type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}") from None


def read_results(run_dir: Path) -> dict:
    """``results.json`` of a finished run, checked for what the tables read: a garbage or
    incomplete file (hand-edited, truncated copy, another tool's) is one line naming it."""
    path = Path(run_dir) / "results.json"
    r = read_json(path, "results of a finished run")
    if not isinstance(r, dict):
        raise InputError(f"{path} is not a pflalign results.json: expected a JSON object, got {type(r).__name__}")
    for key, ok, need in (("algorithm", lambda v: isinstance(v, str) and v, "a name"),
                          ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
                          ("label", lambda v: v is None or isinstance(v, str), "a string")):
        if key not in r and key != "label":
            raise InputError(f"{path} is incomplete: it has no '{key}'")
        if key in r and not ok(r[key]):
            raise InputError(f"{path}: '{key}' must be {need} (got {r[key]!r})")
    values = {k: _get(r, k) for k in COLUMNS}
    bad = next((k for k, v in values.items() if v is not None and not _number(v)), None)
    if bad is not None:
        raise InputError(f"{path}: '{bad}' must be a number (got {values[bad]!r})")
    if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in values.values()):
        raise InputError(f"{path} is incomplete: none of the table's metrics ({', '.join(COLUMNS)})")
    return r


def load_results(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per run: its label, seed and every table field (NaN where absent)."""
    rows = []
    for d in run_dirs:
        r = read_results(d)
        values = {c: _get(r, k) for k, c in COLUMNS.items()}
        rows.append({"label": r.get("label") or r["algorithm"], "seed": r["seed"],
                     **{c: np.nan if v is None else float(v) for c, v in values.items()}})
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
