"""One run, end to end: validate -> data -> run directory -> federation -> results.json.

Everything that can reject the input (config, dataset files, partition, model/data fit) runs
before the run directory exists, so bad input never leaves a half-written run behind.
"""
from __future__ import annotations

import json
import logging
import platform
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from omegaconf import OmegaConf

from .algorithms import build_algorithm
from .checkpoint import (CHECKPOINT, RESUMABLE_TEXT, Checkpointer, experiment_identity, load_checkpoint, load_history,
                         remove_stale_temp_files, write_json, write_text)
from .config import Config, load_config, resolve_hparams, to_dict
from .data import build_federated_data
from .errors import ConfigError, NonFiniteLossError, RunInterrupted
from .federation import Federation
from .models import build_model, check_parts, model_bytes
from .plugins import short_name
from .runlog import JsonlWriter, TimingLog
from .runtime import build_runtime
from .store import STATES, DiskIO, MemoryIO, choose_kind

log = logging.getLogger(__name__)
CallbackFactory = Callable[[Config, Path], Iterable[Any]]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("pflalign", "torch", "lightning", "torchmetrics", "numpy", "ray", "wandb"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_version() -> dict | None:
    """The commit of the checkout pflalign runs from, and whether its tracked files differ from
    it (results must name the code that made them); None when installed from a wheel."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def communication(history: list[dict]) -> dict:
    """Bytes uploaded and sent over all rounds (metrics.jsonl has them per round)."""
    return {"up_bytes": sum(h.get("comm_up_bytes", 0) for h in history),
            "down_bytes": sum(h.get("comm_down_bytes", 0) for h in history),
            "total_bytes": history[-1].get("comm_total_bytes", 0) if history else 0}


def prepare(cfg: Config):
    """Build (or load from cache) the federated data and check the model fits it and the algorithm."""
    data = build_federated_data(cfg.data, cfg.seed)
    try:  # conv nets probe their layer sizes while being built: an input too small fails there
        model = build_model(cfg.model, data.input_shape, data.num_classes)
        check_parts(model, build_algorithm(cfg).needs_parts, cfg.model.name, cfg.algorithm)
        with torch.no_grad():
            model(data.clients[0].train_x[:1])
    except RuntimeError as e:
        raise ConfigError(f"model.name={cfg.model.name} does not fit dataset {cfg.data.dataset} "
                          f"(inputs {data.input_shape}): {str(e).splitlines()[0]}") from None
    return data


def _taken(path: Path) -> ConfigError:
    return ConfigError(f"run directory {path} exists (use --resume {path} or another name)")


def _check_free_name(cfg: Config, resume: Path | None) -> None:
    """A named new run must not land on an existing one: refused before the data is built."""
    if resume is None and cfg.name and (Path(cfg.out_dir) / cfg.name).exists():
        raise _taken(Path(cfg.out_dir) / cfg.name)


def new_run_dir(cfg: Config) -> Path:
    # import paths (pkg.mod:Class) shortened: a W&B run id (the directory name) refuses ":"
    name = cfg.name or f"{short_name(cfg.algorithm)}-{short_name(cfg.data.dataset)}-s{cfg.seed}-{datetime.now():%Y%m%d-%H%M%S}"
    parent = Path(cfg.out_dir)
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = parent / (name if i == 0 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if cfg.name:  # made by another process since _check_free_name
                raise _taken(path) from None
    raise ConfigError(f"cannot find a free run directory name under {parent}")


def _first_difference(a: dict, b: dict) -> str | None:
    return next((k for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")), None)


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    """The run's config.yaml with the overrides a resume may apply (RESUMABLE; rounds only up)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
    saved, cfg = load_config(path), load_config(path, overrides)
    before, after = experiment_identity(saved), experiment_identity(cfg)
    key = _first_difference(before, after)
    if key is not None:
        raise ConfigError(f"--resume cannot change '{key}' ({before.get(key)!r} -> {after.get(key)!r}): it changes "
                          f"the experiment; a resume may change only {RESUMABLE_TEXT} (rounds only upward)")
    if cfg.rounds < saved.rounds:
        raise ConfigError(f"--resume: rounds={cfg.rounds} is below the run's rounds={saved.rounds} (it can only grow)")
    return cfg


def finished_rounds(run_dir: Path) -> int | None:
    """Rounds of a finished run (its results.json), None when it has not finished."""
    try:
        return int(json.loads((Path(run_dir) / "results.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_config(run_dir: Path, cfg: Config) -> None:
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))


def open_run(cfg: Config, data, resume: Path | None = None) -> tuple[Path, dict | None]:
    """The run directory (a new one, or ``resume``) and the checkpoint to continue from.

    On resume the checkpoint must be readable and of this experiment; only then are the
    allowed config changes written, so a refused resume leaves the directory as it was.
    """
    if resume is None:
        run_dir = new_run_dir(cfg)
        _write_config(run_dir, cfg)
        write_json(run_dir / "partition.json", data.summary())
        return run_dir, None
    run_dir = Path(resume)
    snapshot = load_checkpoint(run_dir)
    if snapshot is not None:
        now = experiment_identity(cfg)
        key = _first_difference(with_defaults(snapshot["config"], cfg.algorithm), now)
        if key is not None:
            raise ConfigError(f"--resume: {run_dir / 'config.yaml'} no longer matches {run_dir / CHECKPOINT}: "
                              f"'{key}' is {now.get(key)!r} there, {snapshot['config'].get(key)!r} in the checkpoint")
        if len(snapshot["versions"]) != data.num_clients:
            raise ConfigError(f"--resume: {run_dir / CHECKPOINT} has {len(snapshot['versions'])} clients, the data "
                              f"{data.num_clients}")
        snapshot["history"] = load_history(run_dir, snapshot["round"])
    for stale in remove_stale_temp_files(run_dir):
        log.info("removed %s, left by an interrupted write", stale)
    _write_config(run_dir, cfg)
    if not (run_dir / "partition.json").exists():
        write_json(run_dir / "partition.json", data.summary())
    return run_dir, snapshot


def with_defaults(identity: dict, algorithm: str) -> dict:
    """A checkpoint's experiment identity with the keys added to pflalign since it was written
    (absent from it) at their defaults: those runs had exactly the default behaviour, so they
    stay resumable, while setting a new key to anything else is still a change."""
    defaults = Config(algorithm=algorithm)
    defaults.algo = resolve_hparams(algorithm, {})
    return {**{k: v for k, v in experiment_identity(defaults).items() if k not in identity}, **identity}


def resume_hint(run_dir: Path) -> str:
    return f"resume with: pflalign run --resume {run_dir}"


class _Interrupt(BaseException):
    """SIGINT during a local run. Not a KeyboardInterrupt: Lightning's fit turns those into a
    silent ``sys.exit(1)``; other exceptions it re-raises."""


@contextmanager
def _sigint_raises_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Interrupt

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def state_io(cfg: Config, data, run_dir: Path) -> MemoryIO | DiskIO:
    """Where this run keeps client states (``state_store``; ``auto`` sizes them first)."""
    kind = choose_kind(cfg.state_store, data.num_clients, model_bytes(cfg.model, data.input_shape, data.num_classes))
    return DiskIO(Path(run_dir) / STATES) if kind == "disk" else MemoryIO()


def run_federation(cfg: Config, data, run_dir: Path, snapshot: dict | None,
                   callbacks: CallbackFactory = lambda cfg, run_dir: (), runtime=None) -> Path:
    """Run the round loop in this process from ``snapshot`` (None: round 0); writes results.json.
    ``runtime``: where the turns run (default: ``cfg.runtime`` with the ``state_store`` it asks for)."""
    runtime = runtime or build_runtime(cfg, data, state_io(cfg, data, run_dir))
    metrics, timings = JsonlWriter(run_dir), TimingLog(run_dir)
    checkpointer = Checkpointer(run_dir, cfg.checkpoint_every, snapshot["round"] if snapshot else None)
    start = time.perf_counter()
    try:
        fed = Federation(cfg, data, runtime, [metrics, checkpointer, timings, *callbacks(cfg, run_dir)],
                         state_dir=Path(run_dir) / STATES)
        if snapshot is not None:
            fed.restore(snapshot)
        with _sigint_raises_interrupt():
            results = fed.run()
    except _Interrupt:
        raise RunInterrupted(f"interrupted at round {fed.round + 1}; {resume_hint(run_dir)}") from None
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"{e}; {checkpointer.kept()}") from None
    finally:
        metrics.close()
        runtime.close()
    record = {
        "algorithm": cfg.algorithm, "label": cfg.label or cfg.algorithm, "seed": cfg.seed, "experiment": cfg.experiment, **results,
        "rounds": fed.round, "wall_time_s": round(time.perf_counter() - start, 3), "time_s": timings.totals(),
        "comm": communication(fed.history),
        "resumed_from_round": snapshot["round"] if snapshot else None, "state_store": runtime.io.kind,
        "evaluated": cfg.eval_clients if cfg.eval_clients != "subset" else f"subset of {cfg.eval_subset}",
        "versions": versions(), "git": git_version(), "command": " ".join(sys.argv), "config": to_dict(cfg)}
    write_json(run_dir / "results.json", record)
    for cb in fed.callbacks:  # observers that keep the finished run (W&B) see results.json as written
        if hasattr(cb, "on_results"):
            cb.on_results(fed, record)
    return run_dir


def run_experiment(cfg: Config, callbacks: CallbackFactory = lambda cfg, run_dir: (),
                   resume: Path | None = None) -> Path:
    """Run (or resume) one federation in this process; returns the run directory."""
    _check_free_name(cfg, resume)
    data = prepare(cfg)
    run_dir, snapshot = open_run(cfg, data, resume)
    return run_federation(cfg, data, run_dir, snapshot, callbacks)


def launch(cfg: Config, callbacks: CallbackFactory, resume: Path | None = None) -> Path:
    """Run where ``cfg.runtime`` says: in this process, or in a driver actor on Ray.

    The data, the run directory and a resumed checkpoint are checked here, before any actor
    starts (the CLI may have started a local Ray instance already, see ``cluster.connected``).
    """
    if cfg.runtime != "ray":
        return run_experiment(cfg, callbacks, resume)
    _check_free_name(cfg, resume)
    data = prepare(cfg)
    from .runtime.ray import run_on_ray

    return run_on_ray(cfg, data, callbacks, lambda: open_run(cfg, data, resume))
