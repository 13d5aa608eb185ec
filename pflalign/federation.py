"""The round loop: sample -> dispatch -> aggregate -> evaluate -> callbacks -> checkpoint.

The federation owns the global model, the algorithm's server state and every client's
persistent state; the runtime only executes turns. Client sampling uses a stream derived
from (seed, round), so every algorithm with the same seed sees the same clients each round
and a resumed run needs no saved RNG state.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from .algorithms import build_algorithm
from .client import turn_seed
from .metrics import final_results, summarize
from .models import build_model

SAMPLING = 7  # purpose tag of the sampling stream in turn_seed


class Federation:
    def __init__(self, cfg, data, runtime, callbacks: Iterable[Any] = ()):
        self.cfg, self.data, self.runtime, self.callbacks = cfg, data, runtime, list(callbacks)
        self.algorithm = build_algorithm(cfg)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.input_shape, data.num_classes)
        self.global_params = {k: p.detach().clone() for k, p in model.named_parameters()}
        self.server_state = self.algorithm.init_server_state(self.global_params, data.train_sizes().tolist())
        self.client_states: list[Any] = [{} for _ in data.clients]
        self.history: list[dict] = []
        self.round = 0  # rounds completed

    def sample(self, rnd: int) -> list[int]:
        n = len(self.client_states)
        k = max(1, round(self.cfg.client_fraction * n))
        if k == n:
            return list(range(n))
        rng = np.random.default_rng(turn_seed(self.cfg.seed, rnd, SAMPLING))
        return sorted(int(c) for c in rng.choice(n, size=k, replace=False))

    def _is_eval_round(self, rnd: int) -> bool:
        return (rnd + 1) % self.cfg.eval_every == 0 or rnd + 1 == self.cfg.rounds

    def step(self, rnd: int) -> dict:
        """One round; returns its metrics record."""
        clients = self.sample(rnd)
        payload = self.algorithm.payload(self.global_params, self.server_state)
        results = self.runtime.train(rnd, payload, [(c, self.client_states[c]) for c in clients])
        client_stats: list[dict] = []

        def uploads():  # in client order, as the runtime delivers them: aggregation streams
            for upload, state in results:
                self.client_states[upload.client_id] = state
                client_stats.append(upload.data.pop("stats", {}))
                yield upload

        stream = uploads()
        self.global_params, self.server_state = self.algorithm.aggregate(
            stream, self.global_params, self.server_state)
        for _ in stream:  # an algorithm that ignores uploads (local) must still train everyone
            pass
        stats = self.algorithm.round_stats(client_stats)
        record = {"round": rnd + 1, "clients": len(clients), **stats}
        if self._is_eval_round(rnd):
            payload = self.algorithm.payload(self.global_params, self.server_state)
            evals = self.runtime.evaluate(rnd, payload, list(enumerate(self.client_states)))
            record.update(summarize(evals))
        return record

    def run(self) -> dict:
        for cb in self.callbacks:
            cb.on_run_start(self)
        for rnd in range(self.round, self.cfg.rounds):
            record = self.step(rnd)
            self.history.append(record)
            self.round = rnd + 1
            for cb in self.callbacks:
                cb.on_round_end(self, record)
        results = final_results(self.history, self.cfg.stability_window)
        for cb in self.callbacks:
            cb.on_run_end(self, results)
        return results

    # ---- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """A consistent snapshot: everything the next round depends on."""
        return {"round": self.round, "global": self.global_params, "server": self.server_state,
                "clients": self.runtime.fetch_states(self.client_states), "history": self.history}

    def load_state_dict(self, snap: dict) -> None:
        self.round, self.global_params = snap["round"], snap["global"]
        self.server_state, self.client_states, self.history = snap["server"], snap["clients"], snap["history"]
