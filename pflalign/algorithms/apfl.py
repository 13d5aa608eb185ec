"""APFL (Deng, Kamani, Mahdavi, "Adaptive Personalized Federated Learning", arXiv 2003.13461,
2020): each client keeps a local model v_i and is evaluated on the mixture
vbar_i = alpha_i v_i + (1 - alpha_i) w. On every minibatch the global copy w takes an SGD step
on its own loss (and its update is averaged as in FedAvg), v_i takes a step on the mixture's
loss (grad_v = alpha grad f(vbar)), and alpha_i steps along
grad_alpha = <v_i - w, grad f(vbar)>, clipped to [0, 1].

The mixture's forward is ``torch.func.functional_call``; its gradients for v and alpha are
taken in ``loss`` (at the same iterate as w's) and applied in ``after_step``. Deviations: the
initial alpha is the paper's neutral 0.5 (PFLlib: 1.0), and PFLlib's extra 0.02*alpha term in
the alpha gradient (from FedTorch) is left out, as the paper has none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..config import option
from .base import Algorithm, Params, Phase, Turn, sgd_step_


@dataclass
class APFLHparams:
    alpha0: float = option(0.5, "initial mixing weight of the local model", lo=0, hi=1, sweep="uniform(0, 1)")
    adapt_alpha: bool = option(True, "learn alpha by its gradient (off: alpha stays alpha0)")
    alpha_lr: Optional[float] = option(None, "step size of alpha; null = train.lr", lo=0,
                                       sweep="loguniform(0.001, 1)")


def mix(alpha: torch.Tensor | float, v: Params, w: Params) -> Params:
    return {k: alpha * v[k] + (1 - alpha) * w[k] for k in v}


class APFL(Algorithm):
    name = "apfl"
    Hparams = APFLHparams
    evaluates_global = True

    def client_begin(self, module, turn: Turn) -> None:
        super().client_begin(module, turn)  # w starts from the global model
        v = turn.state.get("v", turn.payload["global"])
        turn.scratch["v"] = {k: t.detach().clone().requires_grad_(True) for k, t in v.items()}
        alpha = turn.state.get("alpha", self.hp.alpha0)
        turn.scratch["alpha"] = torch.tensor(float(alpha), requires_grad=True)

    def loss(self, module, batch, turn: Turn):
        x, y = batch
        sc = turn.scratch
        if sc["alpha"].device != x.device:  # Lightning moved the model to an accelerator
            sc["v"] = {k: t.detach().to(x.device).requires_grad_(True) for k, t in sc["v"].items()}
            sc["alpha"] = sc["alpha"].detach().to(x.device).requires_grad_(True)
        w = {k: p.detach() for k, p in module.model.named_parameters()}
        mixed = functional_call(module.model, mix(sc["alpha"], sc["v"], w), (x,))
        sc["mix_grads"] = torch.autograd.grad(F.cross_entropy(mixed, y), [*sc["v"].values(), sc["alpha"]])
        return super().loss(module, batch, turn)  # w's own objective: what the optimizer steps on

    @torch.no_grad()
    def after_step(self, module, turn: Turn) -> None:
        sc, phase, cfg = turn.scratch, turn.phase, module.train_cfg
        *gv, galpha = sc.pop("mix_grads")
        lr = phase.lr if phase.lr is not None else cfg.lr
        sgd_step_(list(sc["v"].values()), gv, lr, cfg.weight_decay)
        if self.hp.adapt_alpha:
            alpha_lr = self.hp.alpha_lr if self.hp.alpha_lr is not None else lr
            sc["alpha"].sub_(alpha_lr * galpha).clamp_(0.0, 1.0)

    def client_end(self, module, turn: Turn) -> dict:
        sc = turn.scratch
        turn.state["v"] = {k: v.detach().to("cpu", copy=True) for k, v in sc["v"].items()}
        turn.state["alpha"] = float(sc["alpha"].detach())
        return {**super().client_end(module, turn), "stats": {"apfl/alpha": turn.state["alpha"]}}

    def personalized_params(self, module, turn: Turn) -> Params:
        w = turn.payload["global"]
        if "v" not in turn.state:
            return w
        return mix(turn.state["alpha"], turn.state["v"], w)

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """APFL's own first turn: v from the global model and alpha at alpha0, trained with w; the model is
        the mixture of v with the current global model, as for a training client."""
        return self.first_turn(module, turn, adapt)
