"""FedPer (Arivazhagan, Aggarwal, Singh, Choudhary, "Federated Learning with Personalization
Layers", arXiv 1912.00818, 2019): the base layers (``body``) are trained by every client and
averaged by the server as in FedAvg; the personalization layers (``head``) never leave the
client. The client's model is the global body under its own head.

The helpers here (``part``, ``average_part``, ``train_only``) serve every body/head method
(FedRep, FedBABU, LG-FedAvg).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from .base import Algorithm, NoHparams, Params, Phase, Turn, Upload, weighted_mean


def part(params: Params, prefix: str) -> Params:
    """The tensors of one part of a :class:`SplitModel` (``body`` or ``head``)."""
    return {k: v for k, v in params.items() if k.startswith(prefix + ".")}


def average_part(uploads: Iterable[Upload], global_params: Params) -> Params:
    """w <- w + sum_i p_i u_i on the keys the updates carry; every other tensor is kept as is."""
    mean = weighted_mean((u.data["update"], u.weight) for u in uploads)
    return {k: global_params[k] + mean[k] if k in mean else global_params[k] for k in global_params}


def train_only(module, prefix: str) -> None:
    """Let autograd reach only ``prefix`` (``all`` restores everything): frozen parts cost no backward."""
    for k, p in module.model.named_parameters():
        p.requires_grad_(prefix == "all" or k.startswith(prefix + "."))


class FedPer(Algorithm):
    name = "fedper"
    Hparams = NoHparams  # the split itself is the model's body/head (model.*)
    evaluates_global = False  # the global head is never trained: there is no global model to report
    shared, local = "body", "head"

    @property
    def needs_parts(self) -> dict[str, str]:
        return {self.shared: "the server averages it", self.local: "each client keeps its own"}

    def _model(self, turn: Turn) -> Params:
        """Global shared part + this client's own local part (the global init before its first turn)."""
        return {**turn.payload["global"], **turn.state.get(self.local, {})}

    def download(self, payload: dict, client_id: int) -> dict:
        """Only the shared part travels (a first turn's local part is the seeded initialization)."""
        return {"global": part(payload["global"], self.shared)}

    def client_begin(self, module, turn: Turn) -> None:
        start = self._model(turn)
        module.load_params(start)
        turn.scratch["start"] = part(start, self.shared)

    def client_end(self, module, turn: Turn) -> dict:
        end = module.params()
        turn.state[self.local] = part(end, self.local)
        return {"update": {k: end[k] - s for k, s in turn.scratch["start"].items()}}

    def aggregate(self, uploads, global_params, server_state):
        return average_part(uploads, global_params), server_state

    def personalized_params(self, module, turn: Turn) -> Params:
        return self._model(turn)

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """A newcomer fits its own local part (FedPer, FedRep: the head; LG-FedAvg: the body) from
        the seeded initialization, as a training client's starts, under the global shared part,
        which it leaves as the server has it: a client's model is always that pair."""
        module.load_params(turn.payload["global"])
        train_only(module, self.local)
        try:
            turn.fit(replace(adapt, params=self.local))
        finally:
            train_only(module, "all")
        return module.params()
