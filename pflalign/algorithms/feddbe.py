"""FedDBE (Zhang, Hua, Cao, Wang, Song, Xue, Ma, Guan, "Eliminating Domain Bias for Federated
Learning in Representation Space", NeurIPS 2023): FedAvg + the Domain Bias Eliminator.

DBE has two parts. A personalized representation bias (PRBias) c_i, a vector the size of the
body's output kept by each client, is added to the features before the head, head(z + c_i),
and trained locally with the model; it absorbs the client's domain bias so that the shared
body and head (averaged as in FedAvg) stay generic. Mean regularization (MR) pulls the
client's running feature mean (an EMA of batch means with rate ``momentum``, restarted every
turn) toward a consensus global mean: + ``kl_weight`` * mean(0.5 (mean_i - mean_g)^2). The
global mean is the train-size-weighted average of the clients' running means from an
initialization period and stays fixed afterwards. The client's model is the global model with
its own PRBias.

The reference obtains the global mean from an extra no-DBE epoch of every client before round
0 and discards the models it trained; here round 0 is that period (plain FedAvg; its model
update is kept) and DBE is on from round 1, with the mean of the clients that took part in
round 0. With the registry's linear heads head(z + c) = W z + (b + W c), so the personalized
model is the global one with head bias b + W c. The PRBias takes SGD steps at the phase's
rate, no weight decay, as in the reference. Defaults: momentum 0.1 (PFLlib), kl_weight 50
(the authors' run script; PFLlib's default 0 disables MR).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import option
from ..errors import ConfigError
from .base import Algorithm, Params, Phase, Turn, Upload, weighted_mean


@dataclass
class FedDBEHparams:
    momentum: float = option(0.1, "rate of the running feature mean: m <- (1 - rate) m + rate * batch mean",
                             lo=0, hi=1, lo_open=True, sweep="uniform(0.05, 1)")
    kl_weight: float = option(50.0, "weight kappa of the mean regularization", lo=0, sweep="loguniform(0.1, 100)")


def fold_bias(params: Params, c: torch.Tensor) -> Params:
    """The linear head of head(z + c): bias b + W c, everything else unchanged."""
    out = dict(params)
    out["head.bias"] = params["head.bias"] + params["head.weight"] @ c
    return out


class FedDBE(Algorithm):
    name = "feddbe"
    Hparams = FedDBEHparams
    evaluates_global = True

    # ---- server side -------------------------------------------------------------------
    def payload(self, global_params: Params, server_state: dict) -> dict:
        return {"global": global_params, **({"global_mean": server_state["global_mean"]}
                                            if "global_mean" in server_state else {})}

    def aggregate(self, uploads: Iterable[Upload], global_params: Params, server_state: dict):
        uploads = list(uploads)
        new_global, _ = super().aggregate(uploads, global_params, server_state)
        if "global_mean" not in server_state:  # end of the initialization period: fix the consensus
            rm = [(u.data["running_mean"], u.weight) for u in uploads if "running_mean" in u.data]
            if rm:
                server_state = {**server_state,
                                "global_mean": weighted_mean(({"m": m}, w) for m, w in rm)["m"]}
        return new_global, server_state

    # ---- client side -------------------------------------------------------------------
    def client_begin(self, module, turn: Turn) -> None:
        super().client_begin(module, turn)
        if not isinstance(module.model.head, nn.Linear):
            raise ConfigError("feddbe needs a model whose head is one linear layer")
        dim = module.model.head.in_features
        c = turn.state.get("prbias", torch.zeros(dim))
        turn.scratch.update(c=c.detach().clone().requires_grad_(True), running_mean=torch.zeros(dim),
                            global_mean=turn.payload.get("global_mean"))

    def loss(self, module, batch, turn: Turn):
        x, y = batch
        sc = turn.scratch
        if sc["c"].device != x.device:  # Lightning moved the model to an accelerator
            sc["c"] = sc["c"].detach().to(x.device).requires_grad_(True)
            sc["running_mean"] = sc["running_mean"].to(x.device)
            if sc["global_mean"] is not None:
                sc["global_mean"] = sc["global_mean"].to(x.device)
        rep = module.model.body(x)
        m = (1 - self.hp.momentum) * sc["running_mean"] + self.hp.momentum * rep.mean(0)
        sc["running_mean"] = m.detach()
        if sc["global_mean"] is None:  # initialization period: no DBE
            return F.cross_entropy(module.model.head(rep), y)
        mr = (0.5 * (m - sc["global_mean"]).pow(2)).mean()
        return F.cross_entropy(module.model.head(rep + sc["c"]), y) + self.hp.kl_weight * mr

    @torch.no_grad()
    def transform_gradients(self, module, turn: Turn) -> None:
        c = turn.scratch["c"]
        if c.grad is not None:
            c.sub_(c.grad, alpha=turn.phase.lr if turn.phase.lr is not None else module.train_cfg.lr)
            c.grad = None

    def client_end(self, module, turn: Turn) -> dict:
        sc = turn.scratch
        out = super().client_end(module, turn)
        if sc["global_mean"] is None:
            out["running_mean"] = sc["running_mean"].cpu()
        else:
            turn.state["prbias"] = sc["c"].detach().to("cpu", copy=True)
        return out

    def personalized_params(self, module, turn: Turn) -> Params:
        w = turn.payload["global"]
        return fold_bias(w, turn.state["prbias"]) if "prbias" in turn.state else w

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """FedDBE's own first turn: the newcomer learns its PRBias (once the server has fixed the
        consensus mean); the model is the global one with that bias folded into its head."""
        return self.first_turn(module, turn, adapt)
