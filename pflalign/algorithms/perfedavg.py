"""Per-FedAvg, first-order version (Fallah, Mokhtari, Ozdaglar, "Personalized Federated
Learning with Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach", NeurIPS 2020).

FedAvg on the MAML objective F_i(w) = f_i(w - alpha * grad f_i(w)). Each local step uses two
independent minibatches D, D': w_tmp = w - alpha * grad f(w; D), then
w <- w - beta * grad f(w_tmp; D') (the FO-MAML approximation drops the Hessian term). The
client's model is the global model after ONE gradient step of size alpha on a local train
batch, taken at evaluation time without touching any persistent state.

In this framework D is the loader's minibatch and D' an independent random minibatch of the
same size from the client's train split; the inner step happens in ``loss``, the outer one is
the phase's optimizer (rate beta) applied at w, restored in ``transform_gradients``. PFLlib
instead splits one double-size batch in two halves and uses alpha = beta = train.lr, which
are the defaults here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import option
from .base import Algorithm, Params, Phase, Turn


@dataclass
class PerFedAvgHparams:
    alpha: Optional[float] = option(None, "inner (adaptation) step size; null = train.lr", lo=0, lo_open=True,
                                    sweep="loguniform(0.001, 0.1)")
    beta: Optional[float] = option(None, "outer (meta) step size; null = train.lr", lo=0, lo_open=True,
                                   sweep="loguniform(0.001, 0.1)")


def batch_generator(turn: Turn) -> torch.Generator:
    """This turn's own stream for extra minibatches, seeded from the turn's seed on first use.

    Seeded in ``client_begin``, before any training, so D' does not depend on how much of the
    global stream the training loop itself consumes.
    """
    if "gen" not in turn.scratch:
        turn.scratch["gen"] = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    return turn.scratch["gen"]


def random_batch(turn: Turn, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A random minibatch of the client's train split (independent of the loader's batches)."""
    x, y = turn.data.train_x, turn.data.train_y
    idx = torch.randperm(len(y), generator=batch_generator(turn))[:size]
    return x[idx].to(device), y[idx].to(device)


class PerFedAvg(Algorithm):
    name = "perfedavg"
    Hparams = PerFedAvgHparams
    evaluates_global = True

    def _alpha(self, module) -> float:
        return self.hp.alpha if self.hp.alpha is not None else module.train_cfg.lr

    def local_phases(self, turn: Turn) -> list[Phase]:
        return [Phase("train", lr=self.hp.beta)]

    def client_begin(self, module, turn: Turn) -> None:
        super().client_begin(module, turn)
        batch_generator(turn)

    def loss(self, module, batch, turn: Turn):
        x, y = batch
        params = list(module.model.parameters())
        grads = torch.autograd.grad(F.cross_entropy(module(x), y), params)
        if "w" not in turn.scratch:  # where w waits while the model holds w_tmp, reused every step
            turn.scratch["w"] = [torch.empty_like(p) for p in params]
        w = turn.scratch["w"]
        with torch.no_grad():  # w_tmp = w - alpha * grad f(w; D)
            torch._foreach_copy_(w, params)
            torch._foreach_sub_(params, list(grads), alpha=self._alpha(module))
        x2, y2 = random_batch(turn, len(y), x.device)
        return F.cross_entropy(module(x2), y2)  # its gradient at w_tmp is the FO meta-gradient

    @torch.no_grad()
    def transform_gradients(self, module, turn: Turn) -> None:
        torch._foreach_copy_(list(module.model.parameters()), turn.scratch["w"])  # the optimizer steps from w

    def personalized_params(self, module, turn: Turn) -> Params:
        """One step of size alpha from the global model on a random local train batch."""
        w = turn.payload["global"]
        module.load_params(w)
        x, y = random_batch(turn, module.batch_size, next(module.parameters()).device)
        with torch.enable_grad():
            named = list(module.model.named_parameters())
            grads = torch.autograd.grad(F.cross_entropy(module(x), y), [p for _, p in named])
        return {k: w[k] - self._alpha(module) * g.to(w[k].device) for (k, _), g in zip(named, grads)}

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """Per-FedAvg's own adaptation, the one step of size alpha that the meta-objective trains
        the global model for (it reads no client state), whatever ``eval.adapt_epochs`` >= 1."""
        return self.personalized_params(module, turn)
