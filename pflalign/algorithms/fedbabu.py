"""FedBABU (Oh, Kim, Yun, "FedBABU: Toward Enhanced Representation for Federated Image
Classification", ICLR 2022): during federated training the head stays frozen at its random
initialization and only the body is trained and averaged; personalization is fine-tuning the
global model on the client's train split at evaluation time.

The client's model is the global model fine-tuned for ``finetune_epochs`` (PFLlib's default,
10, whole model) at every evaluation; the fine-tune never touches the persistent state.
Evaluation therefore costs ``finetune_epochs`` epochs per client: raise ``eval_every`` on
large runs. The global model (random head) is reported too, as the paper's "before fine-tuning".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option
from .base import Algorithm, Params, Phase, Turn
from .fedper import average_part, part, train_only


@dataclass
class FedBABUHparams:
    finetune_epochs: int = option(10, "fine-tuning epochs at evaluation (0: evaluate the global model)", lo=0)
    finetune: str = option("all", "what fine-tuning trains", choices=["all", "head", "body"])
    finetune_lr: Optional[float] = option(None, "fine-tuning learning rate; null = train.lr", lo=0, lo_open=True,
                                          sweep="loguniform(0.001, 0.5)")


class FedBABU(Algorithm):
    name = "fedbabu"
    Hparams = FedBABUHparams
    evaluates_global = True
    needs_parts = {"body": "it is all that federated training trains"}

    def local_phases(self, turn: Turn) -> list[Phase]:
        return [Phase("body", params="body")]

    def download(self, payload: dict, client_id: int) -> dict:
        """The body: the head is the seeded initialization, never updated."""
        return {"global": part(payload["global"], "body")}

    def client_begin(self, module, turn: Turn) -> None:
        module.load_params(turn.payload["global"])
        turn.scratch["start"] = part(turn.payload["global"], "body")

    def begin_phase(self, module, turn: Turn) -> None:
        train_only(module, turn.phase.params)

    def end_phase(self, module, turn: Turn) -> None:
        train_only(module, "all")

    def client_end(self, module, turn: Turn) -> dict:
        end = module.params()
        return {"update": {k: end[k] - s for k, s in turn.scratch["start"].items()}}

    def aggregate(self, uploads, global_params, server_state):
        return average_part(uploads, global_params), server_state  # the head keeps its init

    def personalized_params(self, module, turn: Turn) -> Params:
        if not self.hp.finetune_epochs:
            return turn.payload["global"]
        return self._finetune(module, turn, self.hp.finetune_epochs, self.hp.finetune_lr)

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """FedBABU's own personalization: its fine-tuning of the global model (``algo.finetune``
        part, at ``algo.finetune_lr`` unless ``eval.adapt_lr`` is set), for ``eval.adapt_epochs``."""
        return self._finetune(module, turn, adapt.epochs, adapt.lr if adapt.lr is not None else self.hp.finetune_lr)

    def _finetune(self, module, turn: Turn, epochs: int, lr: Optional[float]) -> Params:
        module.load_params(turn.payload["global"])
        turn.fit(Phase("finetune", params=self.hp.finetune, epochs=epochs, lr=lr))
        return module.params()
