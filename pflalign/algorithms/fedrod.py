"""FedRoD (Chen, Chao, "On Bridging Generic and Personalized Federated Learning for Image
Classification", ICLR 2022).

Two heads on one shared body. The generic model (body + generic head) is trained with the
balanced softmax loss, cross-entropy on logits + log(n_c) where n_c are the client's class
counts, which targets the class-balanced objective, and is averaged by the server as in
FedAvg. A personalized head, kept by each client, reads the detached body features and is
trained with plain cross-entropy on the sum generic logits (detached) + personal logits. The
client's prediction is generic + personal head logits.

Both heads are linear (every model of the registry has an ``nn.Linear`` head), so the sum of
their logits is the logits of one linear head with summed weights and biases: that is the
personalized model handed to evaluation. Like PFLlib, the personal head starts as a copy of
the initial head and takes SGD steps at train.lr (no weight decay) from the same forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import option
from ..errors import ConfigError
from .base import Algorithm, Params, Phase, Turn


@dataclass
class FedRoDHparams:
    balanced: bool = option(True, "train the generic head with balanced softmax (off: plain cross-entropy)")


def balanced_softmax_loss(logits: torch.Tensor, y: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on logits + log(class counts) (Ren et al., NeurIPS 2020)."""
    return F.cross_entropy(logits + counts.to(logits).log(), y)


def head_names(module) -> tuple[str, str]:
    if not isinstance(module.model.head, nn.Linear):
        raise ConfigError("fedrod needs a model whose head is one linear layer")
    return "head.weight", "head.bias"


class FedRoD(Algorithm):
    name = "fedrod"
    Hparams = FedRoDHparams
    evaluates_global = True

    def client_begin(self, module, turn: Turn) -> None:
        super().client_begin(module, turn)
        wk, bk = head_names(module)
        head = turn.state.get("head") or {k: turn.payload["global"][k] for k in (wk, bk)}
        turn.scratch["head"] = {k: v.detach().clone().requires_grad_(True) for k, v in head.items()}
        turn.scratch["counts"] = torch.bincount(turn.data.train_y, minlength=module.model.head.out_features)

    def loss(self, module, batch, turn: Turn):
        x, y = batch
        sc = turn.scratch
        if sc["counts"].device != x.device:  # Lightning moved the model to an accelerator
            sc["head"] = {k: v.detach().to(x.device).requires_grad_(True) for k, v in sc["head"].items()}
            sc["counts"] = sc["counts"].to(x.device)
        rep = module.model.body(x)
        out_g = module.model.head(rep)
        generic = balanced_softmax_loss(out_g, y, sc["counts"]) if self.hp.balanced else F.cross_entropy(out_g, y)
        wk, bk = head_names(module)
        out_p = F.linear(rep.detach(), sc["head"][wk], sc["head"][bk])
        personal = F.cross_entropy(out_g.detach() + out_p, y)
        return generic + personal  # disjoint graphs: the body/generic head see only the first term

    @torch.no_grad()
    def transform_gradients(self, module, turn: Turn) -> None:
        lr = turn.phase.lr if turn.phase.lr is not None else module.train_cfg.lr
        for v in turn.scratch["head"].values():
            if v.grad is not None:
                v.sub_(v.grad, alpha=lr)
                v.grad = None

    def client_end(self, module, turn: Turn) -> dict:
        turn.state["head"] = {k: v.detach().to("cpu", copy=True) for k, v in turn.scratch["head"].items()}
        return super().client_end(module, turn)

    def personalized_params(self, module, turn: Turn) -> Params:
        """Generic model with head = generic + personal head (logits add up)."""
        w = turn.payload["global"]
        if "head" not in turn.state:
            return w
        return {k: w[k] + turn.state["head"][k] if k in turn.state["head"] else w[k] for k in w}

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """FedRoD's own first turn: the personal head, from a copy of the global head, trains on the
        generic logits; the model is the global generic model plus that head."""
        return self.first_turn(module, turn, adapt)
