"""Ditto (Li, Hu, Beirami, Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021): the global model w is trained exactly as in FedAvg, and each
client also keeps a personal model v_i trained on F_i(v) + lambda/2 ||v - w^t||^2, pulled
toward the round's global model w^t. The client's model is v_i.

Each turn has two phases from w^t: ``personal`` (v_i, ``personal_epochs``) then ``global``
(w, ``train.local_epochs``; its update is what is averaged), as PFLlib orders them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option
from .base import Algorithm, Params, Phase, Turn, sq_dist


@dataclass
class DittoHparams:
    lam: float = option(0.1, "lambda: weight of the proximal pull of v_i toward the global model", lo=0,
                        sweep="loguniform(0.01, 2)")
    personal_epochs: int = option(1, "epochs on the personal model per turn (PFLlib plocal_epochs)", lo=1)
    personal_lr: Optional[float] = option(None, "learning rate of the personal model; null = train.lr",
                                          lo=0, lo_open=True, sweep="loguniform(0.001, 0.5)")


class Ditto(Algorithm):
    name = "ditto"
    Hparams = DittoHparams
    evaluates_global = True

    def local_phases(self, turn: Turn) -> list[Phase]:
        return [Phase("personal", epochs=self.hp.personal_epochs, lr=self.hp.personal_lr), Phase("global")]

    def begin_phase(self, module, turn: Turn) -> None:
        personal = turn.phase.name == "personal"
        module.load_params(self.personalized_params(module, turn) if personal else turn.payload["global"])

    def end_phase(self, module, turn: Turn) -> None:
        if turn.phase.name == "personal":
            turn.state["v"] = module.params()

    def loss(self, module, batch, turn: Turn):
        loss = super().loss(module, batch, turn)
        if turn.phase.name != "personal":
            return loss
        return loss + self.hp.lam / 2 * sq_dist(module, turn.payload["global"])

    def personalized_params(self, module, turn: Turn) -> Params:
        return turn.state.get("v", turn.payload["global"])

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """A newcomer trains its personal model v only: from the global model, with the proximal
        pull toward it, at ``algo.personal_lr`` unless ``eval.adapt_lr`` is set (the global phase
        would only feed an upload, and a newcomer's is dropped)."""
        turn.fit(Phase("personal", epochs=adapt.epochs, lr=adapt.lr if adapt.lr is not None else self.hp.personal_lr))
        return module.params()
