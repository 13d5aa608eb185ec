"""FedALA (Zhang, Hua, Wang, Song, Xue, Ma, Guan, "FedALA: Adaptive Local Aggregation for
Personalized Federated Learning", AAAI 2023).

At the start of a turn the client does not overwrite its model with the global one: for the
top ``layer_idx`` parameter tensors it learns element-wise weights W in [0, 1] (kept across
rounds) and starts from theta = local + (global - local) * W; the lower tensors take the
global values. W is learned by SGD with step ``eta`` on the loss of a random contiguous
``rand_percent``% slice of the local train data, in minibatches of the run's batch size, the
last one partial: until the recorded losses settle the first time (std of the last
``num_pre_loss`` epoch losses < ``threshold``), one epoch afterwards. Then ordinary local
training; the server averages the trained local models.

As in PFLlib (``utils/ALA.py``; its ``layer_idx`` counts parameter tensors, the default 2 is
our ``head.weight``/``head.bias``), ALA is skipped while a client has no local model yet, and
the model evaluated is the one the client trains from next: PFLlib's server runs every
client's ALA with the new global model and then evaluates, before training. ALA is a pure
function of the client state and the global model (the slice offset is drawn at the end of the
previous turn and kept in the state), so evaluation computes exactly that model, bit for bit,
without writing the state: training never depends on when or whom evaluation covers
(``eval_model=local`` evaluates the local model after its last training instead).
The cost: on evaluated rounds the same ALA runs twice, at evaluation and again at the client's
next training turn. Deviations: PFLlib runs ALA for every client every round, so a client not
sampled still moves its model and W toward each new global; here only a training turn does,
and a client is evaluated by the model it would start its next turn from. ``max_init_epochs``
caps the first-round loop, which the reference runs unbounded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from ..config import option
from .base import Algorithm, Params, Phase, Turn, Upload, weighted_mean


@dataclass
class FedALAHparams:
    eta: float = option(1.0, "step size of the weight learning", lo=0, lo_open=True, sweep="loguniform(0.1, 10)")
    rand_percent: int = option(80, "percent of the local train data the weights are learned on", lo=1, hi=100,
                               sweep="randint(5, 100)")
    layer_idx: int = option(2, "number of top parameter tensors with learned weights (0: all)", lo=0)
    threshold: float = option(0.1, "first-round convergence: std of the recent losses below this", lo=0,
                              lo_open=True)
    num_pre_loss: int = option(10, "how many recent epoch losses the convergence test looks at", lo=1)
    max_init_epochs: int = option(200, "cap on the first-round weight-learning epochs", lo=1)
    eval_model: str = option("ala", "model evaluated: ALA(local, global) as PFLlib, or the trained local model",
                             choices=["ala", "local"])


class FedALA(Algorithm):
    name = "fedala"
    Hparams = FedALAHparams
    evaluates_global = True

    def _top(self, names: list[str]) -> list[str]:
        return names[-self.hp.layer_idx:] if self.hp.layer_idx else names

    def ala(self, module, turn: Turn) -> tuple[Params, Params, list[float]]:
        """(start model, learned W, per-epoch losses) from the client state and the global model.

        Reads ``theta``, ``W``, ``ala_first`` and ``ala_started`` of ``turn.state`` and draws
        nothing, so evaluation and the next training turn get the same model; never writes
        ``turn.state`` and never updates its ``W`` in place.
        """
        hp, g, state = self.hp, turn.payload["global"], turn.state
        local = state["theta"]
        top = self._top(list(g))
        start = {k: g[k] for k in g}
        diff = {k: g[k] - local[k] for k in top}
        W = {k: torch.ones_like(g[k]) for k in top} if "W" not in state else {k: state["W"][k].clone() for k in top}
        blend = lambda: {k: local[k] + diff[k] * W[k] for k in top}  # noqa: E731

        num = self._slice_size(turn)
        losses: list[float] = []
        if num > 0:
            first = state["ala_first"]
            x, y = turn.data.train_x[first:first + num], turn.data.train_y[first:first + num]
            bounds = [(a, min(a + module.batch_size, num)) for a in range(0, num, module.batch_size)]
            module.load_params({**start, **blend()})
            named = dict(module.model.named_parameters())
            params, Ws, diffs, locals_ = ([d[k] for k in top] for d in (named, W, diff, local))
            with torch.enable_grad():
                for _ in range(hp.max_init_epochs if not state.get("ala_started", False) else 1):
                    for a, b in bounds:
                        loss = F.cross_entropy(module.model(x[a:b]), y[a:b])
                        grads = torch.autograd.grad(loss, params)
                        # W <- clip(W - eta (g diff), 0, 1), in place (W is our copy); theta <- local + diff W
                        with torch.no_grad():
                            step = torch._foreach_mul(list(grads), diffs)
                            torch._foreach_mul_(step, hp.eta)
                            torch._foreach_sub_(Ws, step)
                            torch._foreach_clamp_min_(Ws, 0)
                            torch._foreach_clamp_max_(Ws, 1)
                            theta = torch._foreach_mul(diffs, Ws)
                            torch._foreach_add_(theta, locals_)
                            torch._foreach_copy_(params, theta)
                    losses.append(float(loss.detach()))
                    recent = torch.tensor(losses[-hp.num_pre_loss:], dtype=torch.float64)
                    if len(losses) > hp.num_pre_loss and float(recent.std(unbiased=False)) < hp.threshold:
                        break
        start.update(blend())
        return start, W, losses

    def _slice_size(self, turn: Turn) -> int:
        return int(self.hp.rand_percent / 100 * len(turn.data.train_y))

    # ---- client side -------------------------------------------------------------------
    def client_begin(self, module, turn: Turn) -> None:
        start, stats = turn.payload["global"], {}
        if "theta" in turn.state:
            start, W, losses = self.ala(module, turn)
            turn.state.update(W=W, ala_started=True)
            stats = {"ala/epochs": float(len(losses)),
                     "ala/w_mean": float(torch.cat([w.reshape(-1) for w in W.values()]).mean())}
        module.load_params(start)
        turn.scratch.update(start={k: v.clone() for k, v in start.items()}, stats=stats)

    def client_end(self, module, turn: Turn) -> dict:
        """Keeps the trained model and draws where the next ALA's slice starts (PFLlib draws it
        inside ALA; drawn here, from this turn's seeded stream, it is part of the state)."""
        turn.state["theta"] = module.params()
        n = len(turn.data.train_y)
        turn.state["ala_first"] = int(torch.randint(0, n - self._slice_size(turn) + 1, ()).item())
        return {"model": turn.state["theta"], "stats": turn.scratch["stats"]}

    def personalized_params(self, module, turn: Turn) -> Params:
        if "theta" not in turn.state:
            return turn.payload["global"]
        if self.hp.eval_model == "local":
            return turn.state["theta"]
        return self.ala(module, turn)[0]

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """FedALA's own first turn: no local model yet, so no ALA; it trains from the global model
        and is evaluated, as a training client after its first turn, by ALA(its model, global)."""
        return self.first_turn(module, turn, adapt)

    # ---- server side -------------------------------------------------------------------
    def aggregate(self, uploads: Iterable[Upload], global_params: Params, server_state: dict):
        return weighted_mean((u.data["model"], u.weight) for u in uploads), server_state
