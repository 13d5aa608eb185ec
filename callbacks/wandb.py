"""Weights & Biases: one run per (algorithm, seed), grouped by experiment, job_type = algorithm.

Offline unless an API key is configured (``wandb sync <run_dir>/wandb/offline-run-*`` later);
``WANDB_MODE`` in the environment wins over ``wandb.mode``.
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path

from pflalign.config import to_dict


def resolve_mode(mode: str) -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode != "auto":
        return mode
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir, self.run = cfg, Path(run_dir), None

    def on_run_start(self, fed) -> None:
        import wandb

        cfg = self.cfg
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.experiment, job_type=cfg.algorithm,
            name=self.run_dir.name, id=self.run_dir.name.replace("/", "-")[-64:], resume="allow",
            config=to_dict(cfg), dir=str(self.run_dir), mode=resolve_mode(cfg.wandb.mode),
            tags=[cfg.algorithm, cfg.data.dataset, f"seed{cfg.seed}"])
        if fed.round == 0:
            from pflalign.plots import partition_heatmap
            fig = partition_heatmap(fed.data.histograms("train"))
            self.run.log({"partition": wandb.Image(fig)}, step=0)

    def on_round_end(self, fed, record: dict) -> None:
        import wandb

        row = {k: v for k, v in record.items() if not isinstance(v, list)}
        if "client_acc" in record:
            row["client_acc"] = wandb.Histogram(record["client_acc"])
        self.run.log(row, step=record["round"])

    def on_run_end(self, fed, results: dict) -> None:
        flat = {k: v for k, v in results.items() if not isinstance(v, dict)}
        flat.update({f"final/{k}": v for k, v in results.get("final", {}).items()})
        self.run.summary.update(flat)
        self.run.finish()
