"""pFLAlign's gradient-variance diagnostic, summarized from finished runs.

Reads the ``align/*`` values that pFLAlign logs every ``algo.diag_every`` rounds (clients
0..diag_clients-1, ``diag_batches`` random minibatches against the full-batch gradient) and
prints, per label, their mean over the logged rounds and seeds:

    python benchmarks/gradvar.py benchmarks/results/runs/reference   # after benchmarks/reference.py

``grad_var`` = E||P g_b - P g||^2 / ||P g||^2 (lower: minibatch steps closer to the full
gradient), ``cos`` = mean cos(P g_b, P g); ``pre`` with the preconditioner P, ``sgd`` with P = 1.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

KEYS = ["align/grad_var_pre", "align/grad_var_sgd", "align/cos_pre", "align/cos_sgd"]


def collect(dirs: list[Path]) -> pd.DataFrame:
    rows = []
    for results in (p for d in dirs for p in sorted(Path(d).glob("**/results.json"))):
        label = json.loads(results.read_text()).get("label")
        for line in (results.parent / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if KEYS[0] in record:
                rows.append({"label": label, "round": record["round"], **{k: record[k] for k in KEYS}})
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean of each diagnostic per label, named without the ``align/`` prefix."""
    return df.groupby("label")[KEYS].mean().rename(columns=lambda k: k.split("/")[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path)
    df = collect(ap.parse_args().dirs)
    if df.empty:
        raise SystemExit("no align/grad_var_* records found (pFLAlign runs with algo.diag_every > 0)")
    table = summarize(df)
    table.insert(0, "measurements", df.groupby("label").size())
    print(table.round(3).to_markdown())


if __name__ == "__main__":
    main()
