"""FedAvg + fine-tuning: the client's model is the global model fine-tuned for the local
epochs of its turn (the update it sends is the same training). ``persistent_momentum`` keeps a
per-client bias-corrected gradient EMA across rounds and steps along it: ALGORITHM.md's control
that isolates pFLAlign's preconditioner from plain persistence."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from .base import Algorithm, Params, Phase, Turn
from .moments import update_moments


@dataclass
class FedAvgFTHparams:
    persistent_momentum: bool = option(False, "step along a per-client EMA of gradients kept across rounds")
    b1: float = option(0.9, "EMA decay of the persistent momentum", lo=0, hi=0.9999, sweep="uniform(0.8, 0.95)")


class FedAvgFT(Algorithm):
    name = "fedavg_ft"
    Hparams = FedAvgFTHparams

    def transform_gradients(self, module, turn: Turn) -> None:
        if not self.hp.persistent_momentum:
            return
        turn.state["s"] = turn.state.get("s", 0) + 1
        named = [(k, p) for k, p in module.model.named_parameters() if p.grad is not None]
        mh, _ = update_moments(turn.state, [k for k, _ in named], [p.grad for _, p in named], self.hp.b1, None)
        for (_, p), h in zip(named, mh):
            p.grad = h

    def client_end(self, module, turn: Turn) -> dict:
        turn.state["theta"] = module.params()
        return super().client_end(module, turn)

    def personalized_params(self, module, turn: Turn):
        return turn.state.get("theta", turn.payload["global"])

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """FedAvg-FT's own first turn: the global model fine-tuned with its own steps (along a
        fresh persistent momentum when ``algo.persistent_momentum`` is on)."""
        return self.first_turn(module, turn, adapt)
