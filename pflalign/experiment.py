"""One run, end to end: validate -> data -> run directory -> federation -> results.json.

Everything that can reject the input (config, dataset files, partition, model/data fit) runs
before the run directory exists, so bad input never leaves a half-written run behind.
"""
from __future__ import annotations

import platform
import sys
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from omegaconf import OmegaConf

from .checkpoint import Checkpointer, load_checkpoint, write_json, write_text
from .config import Config, load_config, to_dict
from .data import build_federated_data
from .errors import ConfigError
from .federation import Federation
from .models import build_model
from .runtime import build_runtime

CallbackFactory = Callable[[Config, Path], Iterable[Any]]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("pflalign", "torch", "lightning", "torchmetrics", "numpy", "ray", "wandb"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def prepare(cfg: Config):
    """Build (or load from cache) the federated data and check the model fits it."""
    data = build_federated_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    try:
        with torch.no_grad():
            model(data.clients[0].train_x[:1])
    except RuntimeError as e:
        raise ConfigError(f"model.name={cfg.model.name} does not fit dataset {cfg.data.dataset} "
                          f"(inputs {data.input_shape}): {str(e).splitlines()[0]}") from None
    return data


def new_run_dir(cfg: Config) -> Path:
    name = cfg.name or f"{cfg.algorithm}-{cfg.data.dataset}-s{cfg.seed}-{datetime.now():%Y%m%d-%H%M%S}"
    parent = Path(cfg.out_dir)
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = parent / (name if i == 0 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if cfg.name:
                raise ConfigError(f"run directory {path} exists (use --resume {path} or another name)") from None
    raise ConfigError(f"cannot find a free run directory name under {parent}")


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
    return load_config(path, overrides)


def run_experiment(cfg: Config, callbacks: CallbackFactory = lambda cfg, run_dir: (),
                   resume: Path | None = None) -> Path:
    """Run (or resume) one federation; returns the run directory."""
    data = prepare(cfg)
    snapshot = None
    if resume is not None:
        run_dir = Path(resume)
        snapshot = load_checkpoint(run_dir)
    else:
        run_dir = new_run_dir(cfg)
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
        write_json(run_dir / "partition.json", data.summary())
    runtime = build_runtime(cfg, data)
    start = time.perf_counter()
    try:
        fed = Federation(cfg, data, runtime, [*callbacks(cfg, run_dir), Checkpointer(run_dir, cfg.checkpoint_every)])
        if snapshot is not None:
            fed.load_state_dict(snapshot)
        results = fed.run()
    finally:
        runtime.close()
    write_json(run_dir / "results.json", {
        "algorithm": cfg.algorithm, "label": cfg.label or cfg.algorithm, "seed": cfg.seed, "experiment": cfg.experiment, **results,
        "rounds": fed.round, "wall_time_s": round(time.perf_counter() - start, 3),
        "resumed_from_round": snapshot["round"] if snapshot else None,
        "versions": versions(), "command": " ".join(sys.argv), "config": to_dict(cfg)})
    return run_dir


def launch(cfg: Config, callbacks: CallbackFactory, resume: Path | None = None) -> Path:
    """Run where ``cfg.runtime`` says: in this process, or in a driver actor on Ray."""
    if cfg.runtime == "ray":
        prepare(cfg)  # bad input fails here, before Ray starts
        from .runtime.ray import run_on_ray

        return run_on_ray(cfg, callbacks, resume)
    return run_experiment(cfg, callbacks, resume)
