"""Run (or resume) a sweep with Ray Tune, then write ``best.yaml`` and the trials table.

Sweep directory (``<out_dir>/<sweep name>-<time>/``, Tune's experiment directory):
``sweep.yaml`` (the resolved sweep, read back by ``--resume``), ``trials/<id>/`` (one run
directory per trial), ``tune_<id>/`` (Tune's per-trial results and checkpoints),
``trials.csv``/``trials.md`` and ``best.yaml``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from pflalign.checkpoint import write_text
from pflalign.config import load_config, to_dict
from pflalign.errors import ConfigError
from pflalign.serialize import umask

from .spec import Sweep, load_sweep, nest, parse_distribution
from .trial import DIVERGED


@dataclass
class Outcome:
    sweep_dir: Path
    table: pd.DataFrame
    best: dict | None   # the best trial's row (None until every trial has ended)
    incomplete: int     # trials that ended in an error or were interrupted: --resume them


def _trial_dirname(trial) -> str:
    return f"tune_{trial.trial_id}"


def _tuner(sweep: Sweep, sweep_dir: Path, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from callbacks.wandb import resolve_mode

    from .trial import WANDB_ENV, run_trial

    # Trials checkpoint often on purpose (small snapshots); Tune's warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    env = {k: os.environ[k] for k in WANDB_ENV if k in os.environ}
    env["WANDB_MODE"] = resolve_mode(sweep.cfg.wandb.mode)  # decided once, here
    env.setdefault("WANDB_SILENT", "true")  # a run summary per trial would drown Tune's status
    # experiment (the trials' W&B group): the sweep directory's name, so each sweep is its own group
    fn = tune.with_parameters(run_trial, base=sweep.base, sweep_dir=str(sweep_dir), experiment=sweep_dir.name,
                              env=env, umask=umask(), fault_round=sweep.fault_round)
    trainable = tune.with_resources(fn, {"cpu": sweep.resources["cpus"], "gpu": sweep.resources["gpus"]})
    if resume:
        return tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_errored=True)
    dists = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint,
             "choice": tune.choice, "grid": tune.grid_search}
    space = {}
    for key, spec in sweep.space.items():
        name, args = parse_distribution(key, spec)
        space[key] = dists[name](*args)
    sched = sweep.scheduler
    scheduler = FIFOScheduler() if sched["name"] == "fifo" else ASHAScheduler(
        time_attr="round", max_t=sweep.cfg.rounds, grace_period=sched["grace_period"],
        reduction_factor=sched["reduction_factor"])
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                    scheduler=scheduler, reuse_actors=True, trial_dirname_creator=_trial_dirname,
                                    search_alg=BasicVariantGenerator(points_to_evaluate=sweep.defaults(),
                                                                     random_state=sweep.seed)),
        run_config=tune.RunConfig(name=sweep_dir.name, storage_path=str(sweep_dir.parent),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1))


def run_sweep(sweep: Sweep, sweep_dir: Path | None = None) -> Outcome:
    """A new sweep (``sweep_dir=None``) or the continuation of the one in ``sweep_dir``."""
    from pflalign.runtime.cluster import connected

    resume = sweep_dir is not None
    if not resume:
        sweep_dir = Path(sweep.cfg.out_dir) / f"{sweep.name}-{datetime.now():%Y%m%d-%H%M%S}"
        sweep_dir.mkdir(parents=True)
        write_text(sweep_dir / "sweep.yaml", sweep.to_yaml())
    sweep_dir = sweep_dir.resolve()  # Tune's storage_path must be absolute
    with connected(sweep.cfg.ray):  # reuses an initialized Ray, else joins/starts one
        grid = _tuner(sweep, sweep_dir, resume).fit()
    return finish(sweep, sweep_dir, grid)


def check_only_mine(root: Path) -> None:
    """Refuse a sweep directory that someone else could have written to.

    Ray Tune restores a sweep by unpickling its own state (tuner.pkl, the experiment state, the
    trials' params.pkl): a pickle runs code. pflalign's own files are never pickles, but Tune's
    are, so, as ssh does with its keys, ``--resume`` goes on only when every file and directory
    of the sweep is yours and not writable by group or others.
    """
    me = os.geteuid()
    for p in [Path(root), *Path(root).rglob("*")]:
        st = p.lstat()
        if p.is_symlink() or st.st_uid != me or st.st_mode & 0o022:
            why = ("is a symlink" if p.is_symlink() else "belongs to another user" if st.st_uid != me
                   else "is writable by group or others")
            raise ConfigError(f"--resume: {p} {why}; Ray Tune unpickles this sweep's state, so only a sweep that "
                              f"nobody else can write is resumed (fix with: chmod -R go-w {root})")


def resume_sweep(sweep_dir: Path) -> Outcome:
    if not (Path(sweep_dir) / "sweep.yaml").is_file() or not (Path(sweep_dir) / "tuner.pkl").is_file():
        raise ConfigError(f"--resume: {sweep_dir} is not a sweep directory (no sweep.yaml/tuner.pkl)")
    check_only_mine(Path(sweep_dir))
    return run_sweep(load_sweep(Path(sweep_dir) / "sweep.yaml"), Path(sweep_dir))


def _trial_id(result) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("tune_")


def trials_table(sweep: Sweep, sweep_dir: Path, grid) -> pd.DataFrame:
    """One row per trial, best first: status, rounds reached, the metric (last, best), params."""
    from ray.tune import ExperimentAnalysis

    # TERMINATED covers trials ASHA stopped; PENDING/RUNNING/PAUSED ones were interrupted.
    statuses = {t.trial_id: t.status for t in ExperimentAnalysis(str(sweep_dir)).trials}
    rows = []
    for r in grid:
        m, hist = r.metrics or {}, r.metrics_dataframe
        last_round, status = m.get("round", 0), statuses.get(_trial_id(r))
        status = {"TERMINATED": "completed" if last_round == sweep.cfg.rounds else "stopped",
                  "ERROR": "error"}.get(status, "unfinished")
        if status != "error" and (sweep_dir / "trials" / _trial_id(r) / DIVERGED).is_file():
            status = "diverged"  # ended by a non-finite loss: its metric is not a score
        best = hist[sweep.metric].agg(sweep.mode) if hist is not None and sweep.metric in hist else math.nan
        rows.append({"trial": _trial_id(r), "status": status, "round": last_round,
                     sweep.metric: math.nan if status == "diverged" else m.get(sweep.metric, math.nan),
                     f"{sweep.metric} (best round)": best, "test acc (not used)": m.get("acc", math.nan),
                     **{k: (r.config or {}).get(k) for k in sweep.space}})
    df = pd.DataFrame(rows)
    df["_done"] = df["status"] == "completed"
    df = df.sort_values(["_done", sweep.metric], ascending=[False, sweep.mode == "min"], na_position="last")
    return df.drop(columns="_done").reset_index(drop=True)


def table_markdown(table: pd.DataFrame) -> str:
    """The trials table as markdown; trial ids like ``12345_00000`` stay text, not numbers."""
    return table.to_markdown(index=False, floatfmt=".4g", disable_numparse=[0])


def finish(sweep: Sweep, sweep_dir: Path, grid) -> Outcome:
    """Trials table (CSV + markdown); once every trial has ended, ``best.yaml``: the best
    completed trial (the best stopped one if none completed)."""
    table = trials_table(sweep, sweep_dir, grid)
    table.to_csv(sweep_dir / "trials.csv", index=False)
    write_text(sweep_dir / "trials.md", table_markdown(table) + "\n")
    incomplete = int(table["status"].isin(["error", "unfinished"]).sum())
    scored = table[table[sweep.metric].notna()]
    best = scored.iloc[0].to_dict() if len(scored) and not incomplete else None
    if best is not None:
        params = next(r.config for r in grid if _trial_id(r) == best["trial"])
        cfg = load_config(None, [], sweep.base, nest(params))
        header = (f"# Best trial {best['trial']} of sweep {sweep.name} ({sweep_dir}):\n"
                  f"# {sweep.metric} = {best[sweep.metric]:.4f} ({sweep.mode}, validation split) at round "
                  f"{best['round']}; {', '.join(f'{k}={v}' for k, v in params.items())}\n"
                  f"# Run it: pflalign run --config {sweep_dir / 'best.yaml'}\n")
        write_text(sweep_dir / "best.yaml", header + OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
    return Outcome(sweep_dir, table, best, incomplete)
