"""The round loop: sample -> dispatch -> aggregate -> evaluate -> callbacks -> checkpoint.

The federation owns the global model, the algorithm's server state and a handle to every
client's persistent state (``store.ClientStates``: the states themselves live in memory or in
per-client files that the workers read and write); the runtime only executes turns. Client
sampling uses a stream derived from (seed, round), so every algorithm with the same seed sees
the same clients each round and a resumed run needs no saved RNG state.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .algorithms import build_algorithm
from .algorithms.base import nbytes
from .metrics import final_results, summarize, summarize_new
from .models import build_model
from .seeds import dropped_out, stragglers, turn_seed
from .store import ClientStates

SAMPLING, EVAL_SUBSET, HOLDOUT = 7, 8, 11  # purpose tags of streams in turn_seed (seeds.py: 9, 10)


def held_out(seed: int, num_clients: int, k: int) -> list[int]:
    """The ``data.holdout_clients`` clients kept out of training: a seeded choice, a pure function
    of (seed, num_clients, k), so every algorithm and every resumed run holds out the same ones."""
    if k == 0:
        return []
    rng = np.random.default_rng(turn_seed(seed, HOLDOUT))
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


class Federation:
    def __init__(self, cfg, data, runtime, callbacks: Iterable[Any] = (), state_dir: Path | None = None):
        self.cfg, self.data, self.runtime, self.callbacks = cfg, data, runtime, list(callbacks)
        self.algorithm = build_algorithm(cfg)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.input_shape, data.num_classes)
        self.global_params = {k: p.detach().clone() for k, p in model.named_parameters()}
        self.server_state = self.algorithm.init_server_state(self.global_params, data.train_sizes().tolist())
        self.states = ClientStates(runtime.io, data.num_clients, state_dir or getattr(runtime.io, "root", None))
        self.holdout = held_out(cfg.seed, data.num_clients, cfg.data.holdout_clients)
        self.training = sorted(set(range(data.num_clients)) - set(self.holdout))  # who may be sampled
        self.history: list[dict] = []
        self.timing: dict = {}  # the last round's wall times (train_s, eval_s, checkpoint_s, ...)
        self.round_started = 0.0  # perf_counter() at the start of the current round
        self.round = 0  # rounds completed

    @property
    def client_states(self) -> list[dict]:
        """Every client's state, loaded (tests and debugging of small runs)."""
        return [self.states.io.load(c, h) for c, h in enumerate(self.states.handles)]

    def sample(self, rnd: int) -> list[int]:
        """Round ``rnd``'s clients: ``client_fraction`` of the training clients (never a held-out one)."""
        pool = self.training
        k = max(1, round(self.cfg.client_fraction * len(pool)))
        if k == len(pool):
            return list(pool)
        rng = np.random.default_rng(turn_seed(self.cfg.seed, rnd, SAMPLING))
        return sorted(pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False))

    def completing(self, rnd: int, clients: list[int]) -> list[int]:
        """The sampled clients that upload this round (``sim.*``): not dropped out, and not
        stragglers when ``sim.straggler_mode=drop``. The others are sent the payload but never
        train: a late or lost upload would be discarded, so their state stays as it was."""
        sim, seed = self.cfg.sim, self.cfg.seed
        gone = dropped_out(seed, rnd, clients, sim.dropout)
        if sim.straggler_mode == "drop":
            gone |= stragglers(seed, self.data.num_clients, sim.stragglers)
        return [c for c in clients if c not in gone]

    def _is_eval_round(self, rnd: int) -> bool:
        return (rnd + 1) % self.cfg.eval_every == 0 or rnd + 1 == self.cfg.rounds

    def eval_clients(self, sampled: list[int]) -> list[int]:
        """Who is evaluated (``eval_clients``): every training client, this round's sampled clients,
        or a fixed seeded subset of ``eval_subset`` training clients (held-out ones: see ``step``)."""
        pool, how = self.training, self.cfg.eval_clients
        if how == "sampled":
            return sampled
        if how == "subset" and self.cfg.eval_subset < len(pool):
            rng = np.random.default_rng(turn_seed(self.cfg.seed, EVAL_SUBSET))
            return sorted(pool[int(i)] for i in rng.choice(len(pool), size=self.cfg.eval_subset, replace=False))
        return list(pool)

    def step(self, rnd: int) -> dict:
        """One round; returns its metrics record (wall times go to ``self.timing``, not the record:
        the record is the same on every rerun)."""
        start = self.round_started = time.perf_counter()
        clients = self.sample(rnd)
        completed = self.completing(rnd, clients)
        payload = self.algorithm.payload(self.global_params, self.server_state)
        client_stats: list[dict] = []
        up_bytes: list[int] = []
        steps: list[int] = []

        def uploads():  # in client order, as the runtime delivers them: aggregation streams
            for upload, handle in self.runtime.train(rnd, payload, self.states.jobs(completed)):
                self.states.update(upload.client_id, rnd + 1, handle)
                client_stats.append(upload.data.pop("stats", {}))
                steps.append(client_stats[-1].pop("local_steps", 0))
                up_bytes.append(nbytes(upload.data))
                yield upload

        if completed:  # else nothing to aggregate: the global model and server state stay as they are
            stream = uploads()
            self.global_params, self.server_state = self.algorithm.aggregate(
                stream, self.global_params, self.server_state)
            for _ in stream:  # an algorithm that ignores uploads (local) must still train everyone
                pass
        stats = self.algorithm.round_stats(client_stats)
        record = {"round": rnd + 1, "clients": len(clients), "clients_completed": len(completed),
                  "local_steps": sum(steps), **stats, **self._communication(payload, clients, up_bytes)}
        self.timing = {"round": rnd + 1, "train_s": time.perf_counter() - start, "eval_s": 0.0}
        if self._is_eval_round(rnd):
            start = time.perf_counter()
            payload = self.algorithm.payload(self.global_params, self.server_state)
            evaluated = self.eval_clients(clients)
            evals = self.runtime.evaluate(rnd, payload, self.states.jobs(evaluated))
            record.update(summarize(evals))
            if self.cfg.eval_clients != "all":  # never mistaken for an evaluation of everyone
                record["eval_clients"] = len(evaluated)
            if self.holdout:  # every held-out client, whatever eval_clients says: served as a newcomer
                record.update(summarize_new(self.runtime.evaluate(rnd, payload, [(c, None) for c in self.holdout],
                                                                  new=True)))
            self.timing["eval_s"] = time.perf_counter() - start
        return record

    def _communication(self, payload: dict, clients: list[int], up_bytes: list[int]) -> dict:
        """Bytes the sampled clients were sent (dropped ones too: they got the payload) and the
        completed ones uploaded this round, and all rounds' so far."""
        down = sum(nbytes(self.algorithm.download(payload, c)) for c in clients)
        before = self.history[-1].get("comm_total_bytes", 0) if self.history else 0
        return {"comm_up_bytes": sum(up_bytes), "comm_down_bytes": down,
                "comm_total_bytes": before + sum(up_bytes) + down}

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
    def restore(self, snap: dict) -> None:
        """Continue from a checkpoint (``checkpoint.load_checkpoint`` plus the ``history`` of its rounds)."""
        self.round, self.global_params, self.server_state = snap["round"], snap["global"], snap["server"]
        self.states.restore(snap["versions"])
        self.history = snap["history"]
