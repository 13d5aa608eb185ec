"""pFedMe (Dinh, Tran, Nguyen, "Personalized Federated Learning with Moreau Envelopes",
NeurIPS 2020).

Each client keeps two models during its turn, both starting from the global model: the local
model w and the personalized model theta. On every minibatch theta approximately solves
min_theta f(theta) + lambda/2 ||theta - w||^2 by K gradient steps of rate ``personal_lr``;
then w moves toward it, w <- w - eta * lambda * (w - theta) (eta = train.lr). The client
uploads w; the server averages and mixes, w_g <- (1 - beta) w_g + beta * mean(w_i). The
client's model is theta.

In this framework theta is the module's parameters: K - 1 inner steps are taken in ``loss``
and the K-th by the phase's optimizer (rate ``personal_lr``, the proximal gradient added in
``transform_gradients``); the outer update of w is ``after_step``. Deviation: PFLlib's
pFedMeOptimizer adds a fixed 0.001 * theta decay to each inner step; here the inner steps
use ``train.weight_decay`` (0 by default), the same decay the optimizer step applies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from ..config import option
from .base import Algorithm, Params, Phase, Turn, Upload, sgd_step_, weighted_mean


@dataclass
class PFedMeHparams:
    lam: float = option(15.0, "lambda: strength of the Moreau-envelope pull of theta toward w", lo=0,
                        lo_open=True, sweep="loguniform(0.1, 50)")
    K: int = option(5, "inner steps that approximate theta per minibatch", lo=1, sweep="randint(1, 10)")
    personal_lr: float = option(0.01, "step size of the inner steps on theta", lo=0, lo_open=True,
                                sweep="loguniform(0.001, 0.1)")
    eta: Optional[float] = option(None, "step size of the local model's move toward theta; null = train.lr",
                                  lo=0, lo_open=True, sweep="loguniform(0.001, 0.5)")
    beta: float = option(1.0, "server mixing: w <- (1 - beta) w + beta * mean(w_i) (1 = FedAvg)", lo=0,
                         lo_open=True, sweep="uniform(1, 2)")


def outer_update_(w: list[torch.Tensor], theta: list[torch.Tensor], eta: float, lam: float) -> None:
    """w <- w - eta * lambda * (w - theta) in place: the local model's step toward the personalized one."""
    pull = torch._foreach_sub(w, theta)
    torch._foreach_mul_(pull, eta * lam)
    torch._foreach_sub_(w, pull)


class PFedMe(Algorithm):
    name = "pfedme"
    Hparams = PFedMeHparams
    evaluates_global = True

    def local_phases(self, turn: Turn) -> list[Phase]:
        return [Phase("train", lr=self.hp.personal_lr)]

    def client_begin(self, module, turn: Turn) -> None:
        super().client_begin(module, turn)  # theta starts from the global model
        turn.scratch["w"] = {k: v.clone() for k, v in turn.payload["global"].items()}

    def _w(self, turn: Turn, device) -> Params:
        w = turn.scratch["w"]
        if next(iter(w.values())).device != device:  # Lightning moved the model to an accelerator
            w = turn.scratch["w"] = {k: v.to(device) for k, v in w.items()}
        return w

    def loss(self, module, batch, turn: Turn):
        x, y = batch
        w, hp, wd = self._w(turn, x.device), self.hp, module.train_cfg.weight_decay
        names, params = map(list, zip(*module.model.named_parameters()))
        ws = [w[k] for k in names]
        for _ in range(hp.K - 1):  # inner steps on theta; the K-th is the optimizer's
            grads = torch.autograd.grad(F.cross_entropy(module(x), y), params)
            with torch.no_grad():
                grad = torch._foreach_sub(params, ws)
                torch._foreach_mul_(grad, hp.lam)
                torch._foreach_add_(grad, list(grads))  # g + lambda (theta - w)
            sgd_step_(params, grad, hp.personal_lr, wd)
        return F.cross_entropy(module(x), y)

    @torch.no_grad()
    def transform_gradients(self, module, turn: Turn) -> None:
        w = turn.scratch["w"]
        named = [(k, p) for k, p in module.model.named_parameters() if p.grad is not None]
        if named:
            pull = torch._foreach_sub([p for _, p in named], [w[k] for k, _ in named])
            torch._foreach_add_([p.grad for _, p in named], pull, alpha=self.hp.lam)

    @torch.no_grad()
    def after_step(self, module, turn: Turn) -> None:
        eta = self.hp.eta if self.hp.eta is not None else module.train_cfg.lr
        w = turn.scratch["w"]
        names, params = zip(*module.model.named_parameters())
        outer_update_([w[k] for k in names], list(params), eta, self.hp.lam)

    def client_end(self, module, turn: Turn) -> dict:
        turn.state["theta"] = module.params()
        start = turn.scratch["start"]
        return {"update": {k: v.detach().cpu() - start[k] for k, v in turn.scratch["w"].items()}}

    def personalized_params(self, module, turn: Turn) -> Params:
        return turn.state.get("theta", turn.payload["global"])

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """pFedMe's own first turn: theta solves the Moreau-envelope problem around the global model
        minibatch by minibatch (at ``algo.personal_lr`` unless ``eval.adapt_lr`` is set); theta is the model."""
        return self.first_turn(module, turn, adapt)

    def aggregate(self, uploads: Iterable[Upload], global_params: Params, server_state: dict):
        """(1 - beta) w + beta * mean(w_i) = w + beta * mean(w_i - w)."""
        mean = weighted_mean((u.data["update"], u.weight) for u in uploads)
        return {k: v + self.hp.beta * mean[k] for k, v in global_params.items()}, server_state
