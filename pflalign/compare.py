"""Many runs (variants x seeds) in parallel processes, and their comparison table.

A *variant* is a label and the keys that define a method: ``algorithm``, ``algo.*`` and
``train.*`` but ``train.local_epochs``. ``--algorithms A,B`` gives one per algorithm, labelled by
its name; ``--variants FILE`` maps each label to a mapping of those keys, or to a config file (a
sweep's ``best.yaml``) whose method keys are taken. Everything else is the comparison's shared
setting: ``data.*``, ``client_fraction`` and the seed, on which the partition and the
client-sampling stream depend (so for a given seed every variant sees the same ones), and also
the model, the rounds and the local epochs (``pflalign report`` tables runs that differ in them
apart), the runtime, ... Precedence, last wins: defaults <- ``--config`` <- ``KEY=VALUE`` <- the variant's keys
<- what compare sets per run (``seed`` from ``--seeds``, ``label``, ``out_dir``, ``name``).

Each run is an ordinary run directory; the table reads only ``results.json`` files, so it can
be rebuilt from finished runs at any time (``pflalign report`` does the same).
"""
from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from .checkpoint import identity_of
from .config import Config, load_config, parse_overrides, read_yaml, to_dict
from .errors import ConfigError, InputError
from .experiment import launch

# results.json field -> markdown header (accuracies: fractions in results.json and the CSV, % in markdown);
# the CSV names a metric by its field with "." -> "_" (final.acc_worst -> final_acc_worst_mean)
COLUMNS = {
    "acc_mean_last10": "acc (mean, last 10)",
    "acc_last10": "acc (weighted, last 10)",
    "final.acc_worst": "worst client",
    "final.acc_bottom10": "bottom 10%",
    "stability_std": "stability std",
    "global_acc_last10": "global model acc",
    "new_acc_mean_last10": "new clients acc (mean, last 10)",  # data.holdout_clients > 0
    "new_acc_worst_last10": "new clients worst (last 10)",
}
STD_NOTE = ("Cells are mean ± std over the row's runs (one per seed), in %: std is the sample standard deviation "
            "(ddof=1), so a single run has none; n is the *seeds* column (a cell with fewer runs says n=k). "
            "The CSV holds the same numbers unrounded, as fractions: `<metric>_mean`, `<metric>_std` "
            "(empty for n=1), `<metric>_n`.")
METHOD_KEYS = ("algorithm", "algo", "train")  # and not train.local_epochs: the budget is the setting's
METHOD_TEXT = "algorithm, algo.* and train.* (not train.local_epochs)"
LABEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@-]{0,63}")  # becomes part of run directory names
CONFIG_KEYS = {f.name for f in dataclasses.fields(Config)}


@dataclass
class Variant:
    label: str
    keys: dict                  # nested method keys, applied on top of the shared setting
    source: str | None = None   # the config file they came from (None: a mapping or --algorithms)
    rest: dict = field(default_factory=dict)  # that file's other keys (the comparison replaces them)


def algorithm_variants(names: list[str]) -> list[Variant]:
    """``--algorithms A,B``: one variant per algorithm, labelled by its name."""
    return [Variant(name, {"algorithm": name}) for name in names]


def read_variants(path: str | Path) -> list[Variant]:
    """``--variants FILE``: label -> mapping of method keys (nested or dotted), or -> the path of a
    config file, relative to FILE's directory (so a variants file and the configs beside it move
    together). From a config file only the method keys are taken."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"variants file not found: {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # noqa: BLE001 - yaml and OmegaConf errors alike: one line naming the file
        raise InputError(f"cannot read variants file {path}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"variants file {path} must be a mapping of label -> variant, e.g. "
                         f"'gateA: {{algorithm: pflalign, algo.gamma0: 1}}' (got {type(raw).__name__} {raw!r:.60})")
    for label in raw:
        if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
            raise InputError(f"variants file {path}: label {label!r} is not a valid name (1-64 letters, digits and "
                             f". _ - + = @, not starting with . - + = @)")
    return [_variant(label, value, path) for label, value in raw.items()]


def _variant(label: str, value, path: Path) -> Variant:
    where = f"variants file {path}: variant '{label}'"
    if isinstance(value, str) and value.strip():
        file = Path(value).expanduser()
        file = file if file.is_absolute() else path.parent / file
        try:
            cfg = OmegaConf.to_container(read_yaml(file))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        unknown = next((k for k in cfg if k not in CONFIG_KEYS), None)
        if unknown is not None:
            raise ConfigError(f"{where}: unknown config key '{unknown}' in {file}")
        method, rest = ({k: v for k, v in cfg.items() if (k in METHOD_KEYS) == mine} for mine in (True, False))
        if isinstance(method.get("train"), dict) and "local_epochs" in method["train"]:
            rest["train"] = {"local_epochs": method["train"].pop("local_epochs")}
        return Variant(label, method, str(file), rest)
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of config keys or the path of a config file (got {value!r:.60})")
    keys = OmegaConf.create({})
    for key, v in value.items():
        top = str(key).split(".")[0]
        if top not in CONFIG_KEYS:
            raise ConfigError(f"{where}: unknown config key '{key}'")
        if top not in METHOD_KEYS:
            raise ConfigError(f"{where} sets '{key}', but a variant sets only {METHOD_TEXT}: every other key is shared "
                              f"(KEY=VALUE or --config), so all variants run on the same partitions and client sampling")
        OmegaConf.update(keys, str(key), v, merge=True)
    if OmegaConf.is_dict(keys.get("train")) and "local_epochs" in keys.train:
        raise ConfigError(f"{where} sets 'train.local_epochs', but a variant sets only {METHOD_TEXT}: the local "
                          f"epochs are shared (KEY=VALUE or --config), like the rounds")
    return Variant(label, OmegaConf.to_container(keys))


def _free_dir(path: Path) -> Path:
    """``path``, or ``path-1``, ``path-2``... when a comparison started in the same second."""
    for i in range(1000):
        candidate = path if i == 0 else Path(f"{path}-{i}")
        if not candidate.exists():
            return candidate
    raise ConfigError(f"cannot find a free directory name like {path} (1000 taken)")


def plan(variants: list[Variant], seeds: list[int], config_file: str | None,
         overrides: list[str]) -> tuple[list[Config], Path, list[str]]:
    """Every (variant, seed) run's config, all validated before any run starts, the comparison's
    directory, and notes for stderr (what a config-file variant left behind).

    The shared layers are checked first without ``algo.*``: those belong to the variants'
    algorithms, so an error in them names the variant (``compare --algorithms pflalign,ditto
    algo.lam=0.5`` fails for pflalign, which has no ``lam``).
    """
    labels = [v.label for v in variants]
    twice = next((x for x in labels if labels.count(x) > 1), None)
    if twice is not None:
        raise InputError(f"variant label '{twice}' is given twice (--algorithms and --variants)")
    cli = OmegaConf.to_container(parse_overrides(list(overrides)))
    for key, why in (("seed", "seeds come from --seeds"), ("label", "each variant's label is its --algorithms name "
                                                                    "or its key in --variants")):
        if key in cli:
            raise ConfigError(f"{key} cannot be set for compare: {why}")
    shared = load_config(config_file, [], {k: v for k, v in cli.items() if k != "algo"})
    if shared.name is not None:
        raise InputError("name cannot be set for compare: every run gets its own directory under out_dir/compare-<time>")
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    out = _free_dir(Path(shared.out_dir) / f"compare-{stamp}")
    cfgs = []
    for v in variants:
        where = f"variant '{v.label}' (algorithm {v.keys.get('algorithm', shared.algorithm)})"
        name = re.sub(r"[^A-Za-z0-9._+=@-]", "_", f"{v.label}-{shared.data.dataset}")
        for s in seeds:
            own = {"seed": s, "label": v.label, "out_dir": str(out), "name": f"{name}-s{s}-{stamp}"}
            try:
                cfgs.append(load_config(config_file, [], cli, v.keys, own))
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
    return cfgs, out, [n for v in variants if (n := _replaced(v, shared))]


def _replaced(v: Variant, shared: Config) -> str | None:
    """A config-file variant's keys that would change the experiment and that the shared setting replaces."""
    if v.source is None:
        return None
    mine, ours = identity_of(v.rest), identity_of(to_dict(shared))
    mine["rounds"], ours["rounds"] = v.rest.get("rounds", shared.rounds), shared.rounds
    differ = [k for k in mine if k not in ("seed", "out_dir", "name") and mine[k] != ours.get(k, mine[k])]
    if not differ:
        return None
    return (f"variant '{v.label}' takes {METHOD_TEXT} from {v.source}; the comparison replaces its "
            + ", ".join(f"{k}={mine[k]} (-> {ours[k]})" for k in differ))


def _run(args) -> str:
    cfg, callbacks = args
    return str(launch(cfg, callbacks))


def _add_env(env: dict[str, str]) -> None:
    os.environ.update(env)


def run_many(cfgs: list, jobs: int, callbacks: Callable, env: dict[str, str] | None = None) -> list[Path]:
    """Run every config (``jobs`` at a time, each in its own process, with ``env`` added to its
    environment); returns run dirs in order."""
    if jobs <= 1:
        return [Path(_run((c, callbacks))) for c in cfgs]
    with ProcessPoolExecutor(min(jobs, len(cfgs)), mp_context=mp.get_context("spawn"),
                             initializer=_add_env, initargs=(dict(env or {}),)) as pool:
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
    """One row per run: its label, seed and every table field (NaN where absent), headed as in markdown."""
    rows = []
    for d in run_dirs:
        r = read_results(d)
        values = {c: _get(r, k) for k, c in COLUMNS.items()}
        rows.append({"label": r.get("label") or r["algorithm"], "seed": r["seed"],
                     **{c: np.nan if v is None else float(v) for c, v in values.items()}})
    return pd.DataFrame(rows)


def metric_names() -> dict[str, str]:
    """Markdown header -> the CSV's metric name (the results.json field, "." -> "_")."""
    return {header: field.replace(".", "_") for field, header in COLUMNS.items()}


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per label, the numbers of the CSVs: ``seeds`` (runs in the row) and, per metric,
    ``<metric>_mean``, ``<metric>_std`` (sample std, ddof=1: NaN for one run) and ``<metric>_n``,
    in results.json units; best mean personalized accuracy first."""
    names = {h: m for h, m in metric_names().items() if h in df and df[h].notna().any()}
    grouped = df.groupby("label", sort=False)
    stats = grouped[list(names)].agg(["mean", "std", "count"])
    stats.columns = [f"{names[h]}_{'n' if s == 'count' else s}" for h, s in stats.columns]
    stats.insert(0, "seeds", grouped.size())
    return stats.sort_values(f"{next(iter(names.values()))}_mean", ascending=False, kind="stable")


def _cell(mean: float, std: float, n: int, runs: int) -> str:
    if n == 0:
        return ""
    return (f"{100 * mean:.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}")
            + ("" if n == runs else f" (n={n})"))


def format_table(stats: pd.DataFrame) -> pd.DataFrame:
    """The markdown view of :func:`summary_table`: one "mean ± std" cell per metric, in %."""
    table = stats[["seeds"]].copy()
    for header, m in metric_names().items():
        if f"{m}_mean" in stats:
            table[header] = [_cell(*row) for row in zip(stats[f"{m}_mean"], stats[f"{m}_std"], stats[f"{m}_n"],
                                                         stats["seeds"])]
    return table


def markdown(stats: pd.DataFrame) -> str:
    return format_table(stats).to_markdown(disable_numparse=True)


def write_table(stats: pd.DataFrame, out_prefix: Path) -> str:
    """:func:`summary_table` as markdown (with :data:`STD_NOTE`) to ``<prefix>.md`` and as numbers to
    ``<prefix>.csv``; returns the markdown."""
    md = f"{markdown(stats)}\n\n{STD_NOTE}"
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out_prefix}.md").write_text(md + "\n")
    stats.to_csv(f"{out_prefix}.csv")
    return md
