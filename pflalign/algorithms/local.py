"""Local training only: each client trains its own model from the common initialization and
never communicates. The floor every personalized method must beat."""
from __future__ import annotations

from .base import Algorithm, Turn


class Local(Algorithm):
    name = "local"
    evaluates_global = False

    def client_begin(self, module, turn: Turn) -> None:
        module.load_params(turn.state.get("theta", turn.payload["global"]))

    def download(self, payload: dict, client_id: int) -> dict:
        return {}  # the common initialization comes from the seed, not from a server

    def client_end(self, module, turn: Turn) -> dict:
        turn.state["theta"] = module.params()
        return {}

    def aggregate(self, uploads, global_params, server_state):
        return global_params, server_state

    def personalized_params(self, module, turn: Turn):
        return turn.state.get("theta", turn.payload["global"])
