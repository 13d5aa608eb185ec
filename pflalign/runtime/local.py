"""In-process runtime: one worker runs the clients one after another (tests, pdb, tiny runs)."""
from __future__ import annotations

from ..client import ClientWorker


class LocalRuntime:
    def __init__(self, cfg, data):
        self.worker = ClientWorker(cfg, data)

    def train(self, rnd: int, payload: dict, jobs: list[tuple[int, dict]]):
        return (self.worker.train(cid, rnd, payload, state) for cid, state in jobs)

    def evaluate(self, rnd: int, payload: dict, jobs: list[tuple[int, dict]]):
        return [self.worker.evaluate(cid, rnd, payload, state) for cid, state in jobs]

    def fetch_states(self, states: list) -> list[dict]:
        return states

    def close(self) -> None:
        pass
