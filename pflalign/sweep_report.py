"""The sweep part of ``pflalign report``: what a sweep selected on, and how each trial scored.

A sweep directory (``tune/runner.py``) holds ``sweep.yaml`` (metric, mode, search space),
``trials.csv`` (one row per trial, best first: status, round reached, the metric Tune saw,
every searched hyperparameter, the last test accuracy) and, once every trial ended,
``best.yaml`` (its first line names the selected trial). Only files are read: no Ray, no Tune.
Test numbers are shown but marked as not used for selection: the sweep selected on validation.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .errors import InputError

NOT_USED = "(not used for selection)"
STATUS_COLORS = {"completed": "tab:blue", "stopped": "tab:orange", "diverged": "tab:purple", "error": "tab:red",
                 "unfinished": "tab:grey"}


@dataclass
class SweepInfo:
    sweep_dir: Path
    name: str
    metric: str
    mode: str
    space: dict[str, str]     # config key -> distribution, e.g. "loguniform(0.01, 1)"
    scheduler: str
    trials: pd.DataFrame      # trials.csv
    selected: str | None      # the trial best.yaml was written from (None: the sweep has not ended)


def find_sweeps(dirs: list[Path]) -> list[Path]:
    """Sweep directories among or under ``dirs`` (a ``sweep.yaml`` beside a ``trials/``)."""
    found = []
    for d in dirs:
        candidates = [Path(d) / "sweep.yaml", *Path(d).rglob("*/sweep.yaml")] if Path(d).is_dir() else []
        found += [p.parent for p in candidates if p.is_file() and (p.parent / "trials").is_dir()]
    return list(dict.fromkeys(found))


def read_sweep(sweep_dir: Path) -> SweepInfo:
    """sweep.yaml, trials.csv and best.yaml's selected trial, checked for what the report reads."""
    path = sweep_dir / "sweep.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"cannot read {path} (the sweep's definition): {type(e).__name__}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("metric"), str) or not isinstance(raw.get("space"), dict) \
            or not raw["space"]:
        raise InputError(f"{path} is not a pflalign sweep.yaml (it needs metric: and a space: of searched keys)")
    csv = sweep_dir / "trials.csv"
    if not csv.is_file():
        raise InputError(f"{sweep_dir} has no trials.csv (the sweep has not finished a session); "
                         f"continue it with: pflalign tune --resume {sweep_dir}")
    try:
        trials = pd.read_csv(csv, dtype={"trial": str})
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"cannot read {csv} (the sweep's trials table): {type(e).__name__}") from None
    missing = [c for c in ("trial", "status", "round", raw["metric"], *raw["space"]) if c not in trials]
    if missing:
        raise InputError(f"{csv} has no column '{missing[0]}' (trials.csv of sweep {sweep_dir} is incomplete)")
    text = next((c for c in ("round", raw["metric"]) if not pd.api.types.is_numeric_dtype(trials[c])), None)
    if text is not None:
        raise InputError(f"{csv}: column '{text}' must hold numbers")
    best = sweep_dir / "best.yaml"
    first = best.read_text().split("\n", 1)[0] if best.is_file() else ""
    match = re.match(r"# Best trial (\S+) of sweep", first)
    scheduler = raw.get("scheduler")
    return SweepInfo(sweep_dir, str(raw.get("name") or sweep_dir.name), raw["metric"],
                     raw.get("mode") or ("min" if raw["metric"].endswith("loss") else "max"),
                     {str(k): str(v) for k, v in raw["space"].items()},
                     scheduler.get("name", "asha") if isinstance(scheduler, dict) else str(scheduler or "asha"),
                     trials, match.group(1) if match else None)


def _percent(name: str) -> bool:
    return "acc" in name


def sweep_table(info: SweepInfo, last10: dict[Path, float]) -> pd.DataFrame:
    """One row per trial (best first, as Tune ranked them): status, round reached, the selection
    metric, every searched hyperparameter, then test accuracy marked as not used for selection.
    ``last10``: run directory -> its results.json's acc_mean_last10 (completed trials have one)."""
    t = info.trials
    pct = 100 if _percent(info.metric) else 1
    unit = " (%)" if pct == 100 else ""
    out = pd.DataFrame({
        "trial": [f"**{x}** (selected)" if x == info.selected else x for x in t["trial"]],
        "status": t["status"], "round": t["round"],
        f"{info.metric}{unit}, validation (selected on)": t[info.metric] * pct})
    if f"{info.metric} (best round)" in t:
        out[f"{info.metric}{unit}, best round"] = t[f"{info.metric} (best round)"] * pct
    for key in info.space:
        out[key] = t[key]
    if "test acc (not used)" in t:
        out[f"test acc (%), last reported round {NOT_USED}"] = t["test acc (not used)"] * 100
    trials = info.sweep_dir / "trials"
    out[f"test acc (%), mean, last 10 {NOT_USED}"] = [last10.get(trials / x, math.nan) * 100 for x in t["trial"]]
    return out


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Numbers as text: metrics (%) to 2 decimals, hyperparameters to 4 significant digits, NaN empty."""
    def cell(v, spec: str) -> str:
        return "" if isinstance(v, float) and math.isnan(v) else format(v, spec) if isinstance(v, float) else str(v)

    return pd.DataFrame({c: [cell(v, ".2f" if "(%)" in c else ".4g") for v in table[c]] for c in table})


def sweep_markdown(info: SweepInfo, table: pd.DataFrame, figure: str) -> list[str]:
    selected = (f"selected trial: **{info.selected}** (`best.yaml`)" if info.selected else
                "no trial selected yet (best.yaml is written once every trial has ended)")
    return [f"## Sweep {info.name} (`{info.sweep_dir}`)", "",
            f"Selected on **{info.metric}** ({info.mode}, on the validation split), scheduler {info.scheduler}; "
            f"{len(info.trials)} trials, {selected}. Searched: "
            + ", ".join(f"`{k}` {v}" for k, v in info.space.items()) + ". Stopped trials (ASHA) show the metric "
            f"at the round they reached. Test columns are {NOT_USED[1:-1]}; so are the tables and plots of "
            "completed trials below (labelled by trial id).", "",
            _formatted(table).to_markdown(index=False, disable_numparse=True), "",
            f"![{info.name}: {info.metric} per hyperparameter]({figure})", ""]


def sensitivity_figure(info: SweepInfo):
    """One panel per searched hyperparameter: each trial's selection metric against its value,
    coloured by status, the selected trial starred; log axes for loguniform keys."""
    from matplotlib.ticker import NullFormatter

    from .plots import settings_figure

    t = info.trials
    pct = 100 if _percent(info.metric) else 1
    title = (f"sweep {info.name}: {info.metric} ({info.mode}, validation) per hyperparameter, {len(t)} trials; "
             f"star: selected")
    fig, [(_, sub, axes)] = settings_figure({"sweep": title}, {"sweep": len(info.space)}, w=3.6, h=3.0, ncols=4)
    y = t[info.metric].to_numpy(dtype=float) * pct
    for ax, (key, spec) in zip(axes, info.space.items()):
        values = t[key]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        cats = [] if numeric else sorted(values.astype(str).unique())
        x = values.to_numpy(dtype=float) if numeric else np.array([cats.index(v) for v in values.astype(str)], float)
        for status, color in STATUS_COLORS.items():
            m = (t["status"] == status).to_numpy() & np.isfinite(y)
            if m.any():
                ax.scatter(x[m], y[m], color=color, label=status, gid=status, s=30, edgecolors="black", linewidths=0.3)
        chosen = (t["trial"] == info.selected).to_numpy()
        if chosen.any():
            ax.scatter(x[chosen], y[chosen], marker="*", s=220, color="gold", edgecolors="black", gid="selected",
                       label="selected", zorder=3)
        if spec.startswith("loguniform"):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-2, 3x10^-2, ... would overlap
        if cats:
            ax.set_xticks(range(len(cats)), cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        ax.set(xlabel=key, ylabel=f"{info.metric}{' (%)' if pct == 100 else ''}")
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    sub.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=9, title="trial status")
    return fig
