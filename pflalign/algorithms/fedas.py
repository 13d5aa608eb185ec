"""FedAS (Yang, Huang, Ye, "FedAS: Bridging Inconsistency in Personalized Federated Learning",
CVPR 2024).

Two fixes for the inconsistency between shared and personalized parts. Parameter alignment:
before training, the client computes its class prototypes (mean body features per class)
with its own model, fits the incoming global body to them (MSE, ``align_epochs`` at
``align_lr``), and takes that aligned body under its own personalized head. Client
synchronization: after training the client measures how much its model has learned, the
trace of the empirical Fisher information (sum over train batches of the squared gradient of
the mean NLL), and the server averages the uploaded models weighted by these traces instead
of train sizes. The client's model is its local model after its last training.

As in PFLlib's clientas/serveras: a client without a local model yet starts from the global
one; alignment runs on the train split in the run's batch size (PFLlib: 16); the Fisher traces
of clients that were not sampled (which PFLlib only logs) are not computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from ..config import option
from .base import Algorithm, Params, Phase, Turn, Upload, sq_norm, weighted_mean


@dataclass
class FedASHparams:
    align_lr: float = option(0.01, "learning rate of the parameter alignment", lo=0, lo_open=True,
                             sweep="loguniform(0.001, 0.1)")
    align_epochs: int = option(1, "epochs of the parameter alignment per turn (0: off)", lo=0)


def prototypes(body, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch: int = 1024) -> torch.Tensor:
    """[C, d] mean body feature per class (NaN rows for classes the client lacks)."""
    with torch.no_grad():
        feats = torch.cat([body(x[i:i + batch]) for i in range(0, len(y), batch)])
    sums = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype).index_add_(0, y, feats)
    counts = torch.bincount(y, minlength=num_classes).to(feats.dtype)
    return sums / counts[:, None]  # 0/0 = NaN marks a missing class


def fisher_trace(module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """sum over minibatches of ||grad mean NLL||^2: PFLlib's empirical Fisher-information trace."""
    params = list(module.model.parameters())
    total = 0.0
    with torch.enable_grad():
        for i in range(0, len(y), batch):
            grads = torch.autograd.grad(F.cross_entropy(module(x[i:i + batch]), y[i:i + batch]), params)
            total += float(sq_norm(grads))
    return total


class FedAS(Algorithm):
    name = "fedas"
    Hparams = FedASHparams
    evaluates_global = True

    @property
    def needs_parts(self) -> dict[str, str]:
        return {"body": "parameter alignment fits it; algo.align_epochs=0 turns that off"} if self.hp.align_epochs else {}

    # ---- client side -------------------------------------------------------------------
    def client_begin(self, module, turn: Turn) -> None:
        w, theta = turn.payload["global"], turn.state.get("theta")
        start = w
        if theta is not None:
            if self.hp.align_epochs:
                module.load_params(theta)
                turn.scratch["protos"] = prototypes(module.model.body, turn.data.train_x, turn.data.train_y,
                                                    module.model.head.out_features)
            start = {k: w[k] if k.startswith("body.") else theta[k] for k in w}  # personal head
        module.load_params(start)
        turn.scratch["start"] = {k: v.clone() for k, v in start.items()}

    def local_phases(self, turn: Turn) -> list[Phase]:
        align = [Phase("align", params="body", epochs=self.hp.align_epochs, lr=self.hp.align_lr)]
        return (align if "protos" in turn.scratch else []) + [Phase("train")]

    def loss(self, module, batch, turn: Turn):
        if turn.phase.name != "align":
            return super().loss(module, batch, turn)
        x, y = batch
        protos = turn.scratch["protos"]
        if protos.device != x.device:  # Lightning moved the model to an accelerator
            protos = turn.scratch["protos"] = protos.to(x.device)
        rep = module.model.body(x)
        loss = rep.sum() * 0.0
        for c in y.unique():
            loss = loss + F.mse_loss(rep[y == c], protos[c].expand_as(rep[y == c]))
        return loss

    def client_end(self, module, turn: Turn) -> dict:
        end = module.params()
        turn.state["theta"] = end
        fim = fisher_trace(module, turn.data.train_x, turn.data.train_y, module.batch_size)
        return {"model": end, "fim": fim, "stats": {"fedas/fim_trace": fim}}

    def personalized_params(self, module, turn: Turn) -> Params:
        return turn.state.get("theta", turn.payload["global"])

    # ---- server side -------------------------------------------------------------------
    def aggregate(self, uploads: Iterable[Upload], global_params: Params, server_state: dict):
        uploads = list(uploads)
        fims = [u.data["fim"] for u in uploads]
        by_fim = sum(fims) > 0
        return weighted_mean((u.data["model"], f if by_fim else u.weight) for u, f in zip(uploads, fims)), \
            server_state
