"""In-process runtime: one worker runs the clients one after another (tests, pdb, tiny runs)."""
from __future__ import annotations

from typing import Any

from ..client import ClientWorker
from ..store import DiskIO, MemoryIO


class LocalRuntime:
    def __init__(self, cfg, data, io: MemoryIO | DiskIO | None = None):
        self.worker = ClientWorker(cfg, data, io)
        self.io = self.worker.io

    def train(self, rnd: int, payload: dict, jobs: list[tuple[int, Any]]):
        return (self.worker.train(cid, rnd, payload, state) for cid, state in jobs)

    def evaluate(self, rnd: int, payload: dict, jobs: list[tuple[int, Any]], new: bool = False):
        """``new``: the jobs are held-out clients, each served as a newcomer (no state)."""
        if new:
            return [self.worker.evaluate_new(cid, rnd, payload) for cid, _ in jobs]
        return [self.worker.evaluate(cid, rnd, payload, state) for cid, state in jobs]

    def fetch_states(self, handles: list) -> list[dict]:
        return handles

    def close(self) -> None:
        pass
