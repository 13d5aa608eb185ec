"""FedCP (Zhang, Hua, Wang, Song, Xue, Ma, Guan, "FedCP: Separating Feature Information for
Personalized Federated Learning via Conditional Policy", KDD 2023).

A Conditional Policy Network (CPN), shared by all clients, splits each sample's feature vector
h into a personalized and a global part: from h * v_i (v_i, the client's condition: the
normalized column sums of its personalized head's weight) it outputs two scores per feature,
and a Gumbel-softmax over each pair (temperature 1, soft) gives policies r, s >= 0 with
r + s = 1. The personalized part h * r goes to the client's own head, the global part h * s to
the global head (frozen in local training); the logits add, so the two heads' inputs sum to h.
The local objective adds feature-level alignment: ``lam`` * MMD^2 (RBF kernels of bandwidths
10, 15, 20, 50) between the features of the extractor being trained and of the global extractor
received this round (frozen). The client uploads its extractor, its CPN and the mean of its
personalized head and the global head; the server averages the three (weights n_i). The
personalized head never leaves the client.

Here the model (body + head) is the global model, extractor and global head; the CPN and the
personalized head are the algorithm's extra modules and the prediction is
``personalized_forward``. As in the reference code (github.com/TsingZ0/FedCP, PFLlib's
clientcp/servercp): the Gumbel noise is drawn in evaluation too (from the evaluation turn's
seeded stream: reproducible on every runtime); v_i is fixed for a turn (from the head the turn
starts with) and in evaluation is the current head's. Decisions where the reference has
another choice: a client's personalized head starts as a copy of the current global head (the
reference: of the initial head, which is the global head of round 1) and its first v_i is that
head's (the reference: a uniform random vector); the model of a client is always the current
global extractor, global head and CPN with its own head (the reference under full
participation). The paper reports no global model, so none is evaluated. Default ``lam`` = 5
(the authors' script).
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

BANDWIDTHS = (10.0, 15.0, 20.0, 50.0)  # the reference's RBF kernel bandwidths (as variances)


@dataclass
class FedCPHparams:
    lam: float = option(5.0, "weight of the MMD alignment of local features to the global extractor's", lo=0,
                        sweep="loguniform(0.5, 50)")


def linear_head(params: Params) -> tuple[int, int]:
    """(classes, feature dim) of a model whose head is one linear layer, else a clear error."""
    w, b = params.get("head.weight"), params.get("head.bias")
    if w is None or b is None or w.dim() != 2 or {k for k in params if k.startswith("head.")} != {"head.weight", "head.bias"}:
        raise ConfigError("this algorithm needs a model whose head is one linear layer (head.weight, head.bias)")
    return w.shape[0], w.shape[1]


def named(modules: dict[str, nn.Module]) -> Params:
    """The modules' parameters as the client module names its extras: ``<name>.<param>``."""
    return {k: p.detach().clone() for k, p in nn.ModuleDict(modules).named_parameters()}


def average_shared(uploads: Iterable[Upload], global_params: Params, extra: Params) -> tuple[Params, Params]:
    """The global model and the shared extra modules moved by the weighted mean of the clients'
    updates (on the keys the updates carry; every other tensor is kept)."""
    mean = weighted_mean((u.data["update"], u.weight) for u in uploads)
    return tuple({k: v + mean[k] if k in mean else v for k, v in p.items()} for p in (global_params, extra))


def mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased MMD^2 of two equal-size samples under a sum of RBF kernels exp(-d^2 / (2 a))."""
    z = torch.cat([x, y])
    sq = z.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)
    k = sum(torch.exp(-d2 / (2 * a)) for a in BANDWIDTHS)
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def policy_net(dim: int) -> nn.Module:
    """The CPN: features (times the condition) -> two scores per feature."""
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.ReLU())


class FedCP(Algorithm):
    name = "fedcp"
    Hparams = FedCPHparams
    evaluates_global = False

    # ---- modules ------------------------------------------------------------------------
    def _modules(self, classes: int, dim: int) -> dict[str, nn.Module]:
        return {"cpn": policy_net(dim), "phead": nn.Linear(dim, classes)}

    def extra_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return self._modules(*linear_head(dict(model.named_parameters())))

    @staticmethod
    def context(module) -> torch.Tensor:
        """v_i: the normalized column sums of the personalized head's weight (no gradient)."""
        return F.normalize(module.extra["phead"].weight.detach().sum(0), dim=0)

    @staticmethod
    def split(module, rep: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(personalized part h * r, global part h * s) of each sample's features; r + s = 1."""
        scores = module.extra["cpn"](rep * context).view(len(rep), 2, -1)
        r, s = F.gumbel_softmax(scores, tau=1.0, hard=False, dim=1).unbind(1)
        return rep * r, rep * s

    def logits(self, module, rep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Personalized head on the personalized part + global head (frozen) on the global part."""
        personal, shared = self.split(module, rep, context)
        head = module.model.head
        return module.extra["phead"](personal) + F.linear(shared, head.weight.detach(), head.bias.detach())

    def personalized_forward(self, module, turn: Turn, x: torch.Tensor) -> torch.Tensor:
        return self.logits(module, module.model.body(x), self.context(module))

    # ---- server side -------------------------------------------------------------------
    def init_server_state(self, global_params: Params, client_weights: list[float]) -> dict:
        """The CPN every client starts from (initialized from the run's seeded stream)."""
        return {"extra": {k: v for k, v in named(self._modules(*linear_head(global_params))).items()
                          if k.startswith("cpn.")}}

    def payload(self, global_params: Params, server_state: dict) -> dict:
        return {"global": global_params, "extra": server_state["extra"]}

    def aggregate(self, uploads, global_params, server_state):
        new_global, extra = average_shared(uploads, global_params, server_state["extra"])
        return new_global, {**server_state, "extra": extra}

    # ---- client side -------------------------------------------------------------------
    def _model(self, turn: Turn) -> Params:
        """Global extractor, global head and CPN with this client's head (before its first turn:
        a copy of the global head)."""
        g = turn.payload["global"]
        head = turn.state.get("phead") or {"p" + k: g[k] for k in ("head.weight", "head.bias")}
        return {**g, **turn.payload["extra"], **head}

    def client_begin(self, module, turn: Turn) -> None:
        module.load_params(self._model(turn))
        start = module.params()
        turn.scratch.update(start=start, context=self.context(module),
                            extractor={k[len("body."):]: v for k, v in start.items() if k.startswith("body.")})

    def loss(self, module, batch, turn: Turn) -> torch.Tensor:
        x, y = batch
        sc = turn.scratch
        rep = module.model.body(x)
        loss = F.cross_entropy(self.logits(module, rep, sc["context"]), y)
        if self.hp.lam:
            with torch.no_grad():  # the global extractor of this round, frozen
                rep_global = torch.func.functional_call(module.model.body, sc["extractor"], (x,))
            loss = loss + self.hp.lam * mmd(rep, rep_global)
        return loss

    def client_end(self, module, turn: Turn) -> dict:
        """Upload extractor and CPN updates and (personalized + global head) / 2 as the global
        head's; keep the personalized head."""
        start, end = turn.scratch["start"], module.params()
        turn.state["phead"] = {k: v.to("cpu", copy=True) for k, v in end.items() if k.startswith("phead.")}
        update = {k: end[k] - start[k] for k in start if k.startswith(("body.", "cpn."))}
        update.update({k: 0.5 * (end["p" + k] - start[k]) for k in ("head.weight", "head.bias")})
        return {"update": update}

    def personalized_params(self, module, turn: Turn) -> Params:
        return self._model(turn)

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """FedCP's own first turn: the newcomer trains its head (from the global head) with the
        server's extractor and CPN and is served those with its head, as a client after its first
        turn."""
        return self.first_turn(module, turn, adapt)
