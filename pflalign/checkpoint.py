"""Atomic files and consistent round checkpoints.

Every file a run writes that a reader may trust goes through a temp file in the same
directory and ``os.replace``: a crash leaves the old version or the new one, never half.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"


def _atomic(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(run_dir: Path, snapshot: dict) -> None:
    _atomic(Path(run_dir) / CHECKPOINT, lambda f: torch.save(snapshot, f))


def load_checkpoint(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CHECKPOINT
    return torch.load(path, weights_only=False) if path.exists() else None


class Checkpointer:
    """Round callback: snapshot the federation every ``every`` rounds and after the last."""

    def __init__(self, run_dir: Path, every: int):
        self.run_dir, self.every = Path(run_dir), every

    def on_run_start(self, fed) -> None:
        pass

    def on_round_end(self, fed, record: dict) -> None:
        if self.every and fed.round % self.every == 0:
            save_checkpoint(self.run_dir, fed.state_dict())

    def on_run_end(self, fed, results: dict) -> None:
        save_checkpoint(self.run_dir, fed.state_dict())
