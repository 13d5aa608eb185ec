"""FedRep (Collins, Hassani, Mokhtari, Shakkottai, "Exploiting Shared Representations for
Personalized Federated Learning", ICML 2021): each turn first fits the client's own head for
``head_epochs`` with the representation frozen, then trains the representation (``body``) for
the run's local epochs with the head frozen; only the body is averaged by the server.
The client's model is the global body under its own head.

Defaults follow the paper's code (10 head epochs, then ``train.local_epochs`` body epochs,
same learning rate); PFLlib's default ``plocal_epochs`` is 1 (set ``algo.head_epochs=1``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from .base import Phase, Turn
from .fedper import FedPer, train_only


@dataclass
class FedRepHparams:
    head_epochs: int = option(10, "epochs fitting the local head (body frozen) before the body epochs", lo=0)


class FedRep(FedPer):
    name = "fedrep"
    Hparams = FedRepHparams
    evaluates_global = False
    shared, local = "body", "head"

    def local_phases(self, turn: Turn) -> list[Phase]:
        return [Phase("head", params="head", epochs=self.hp.head_epochs), Phase("body", params="body")]

    def begin_phase(self, module, turn: Turn) -> None:
        train_only(module, turn.phase.params)

    def end_phase(self, module, turn: Turn) -> None:
        train_only(module, "all")
