"""Round-level observers of a federation: ``on_run_start(fed)``, ``on_round_end(fed, record)``,
``on_run_end(fed, results)``. They only watch; results never depend on them."""
from __future__ import annotations

from pathlib import Path

from .progress import ProgressBar


def default_callbacks(cfg, run_dir: Path) -> list:
    """What ``pflalign run`` attaches besides metrics.jsonl (every run has it): progress, and W&B
    unless disabled."""
    cbs = [ProgressBar(enabled=cfg.progress)]
    if cfg.wandb.mode != "disabled":
        from .wandb import WandbLogger
        cbs.append(WandbLogger(cfg, run_dir))
    return cbs


__all__ = ["ProgressBar", "default_callbacks"]
