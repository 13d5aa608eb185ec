"""SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML 2020): control variates correct client drift. Every
local gradient becomes g + (c - c_i); after K local steps at rate lr the client sets
(option II) c_i+ = c_i - c + (x - y_i) / (K lr) and uploads dy_i = y_i - x and dc_i = c_i+ - c_i;
the server steps x += eta_g * mean(dy_i) and c += (|S|/N) * mean(dc_i). Evaluated as the
global model.

Weights: as everywhere in this framework the means are weighted by train size n_i (with
equal sizes they are the paper's uniform means), so c += (|S|/N) mean(dc_i) becomes
c += sum_S n_i dc_i / sum_all n_i, which keeps c the n-weighted mean of all client controls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from ..config import option
from .base import Algorithm, Params, Turn, Upload, weighted_mean


@dataclass
class ScaffoldHparams:
    server_lr: float = option(1.0, "global step size eta_g on the averaged model update", lo=0, lo_open=True,
                              sweep="loguniform(0.3, 3)")


class Scaffold(Algorithm):
    name = "scaffold"
    Hparams = ScaffoldHparams
    evaluates_global = True

    # ---- server side -------------------------------------------------------------------
    def init_server_state(self, global_params: Params, client_weights: list[float]) -> dict:
        return {"c": {k: torch.zeros_like(v) for k, v in global_params.items()}, "total_weight": sum(client_weights)}

    def payload(self, global_params: Params, server_state: dict) -> dict:
        return {"global": global_params, "c": server_state["c"]}

    def aggregate(self, uploads: Iterable[Upload], global_params: Params, server_state: dict):
        round_weight = 0.0

        def both():  # one pass, one fused mean over [dy, dc]
            nonlocal round_weight
            for u in uploads:
                round_weight += u.weight
                yield ({**{"y." + k: v for k, v in u.data["update"].items()},
                        **{"c." + k: v for k, v in u.data["delta_c"].items()}}, u.weight)

        mean = weighted_mean(both())
        x = {k: w + self.hp.server_lr * mean["y." + k] for k, w in global_params.items()}
        share = round_weight / server_state["total_weight"]  # |S|/N, by train size
        c = {k: v + share * mean["c." + k] for k, v in server_state["c"].items()}
        return x, {**server_state, "c": c}

    # ---- client side -------------------------------------------------------------------
    def client_begin(self, module, turn: Turn) -> None:
        super().client_begin(module, turn)
        c = turn.payload["c"]
        ci = turn.state.get("c", {k: torch.zeros_like(v) for k, v in c.items()})
        turn.scratch.update(ci=ci, corr={k: c[k] - ci[k] for k in c}, steps=0)

    @torch.no_grad()
    def transform_gradients(self, module, turn: Turn) -> None:
        named = [(k, p.grad) for k, p in module.model.named_parameters() if p.grad is not None]
        if not named:
            return
        corr, device = turn.scratch["corr"], named[0][1].device
        if next(iter(corr.values())).device != device:  # Lightning moved the model to an accelerator
            corr = turn.scratch["corr"] = {k: v.to(device) for k, v in corr.items()}
        torch._foreach_add_([g for _, g in named], [corr[k] for k, _ in named])  # g + (c - c_i), in place

    def after_step(self, module, turn: Turn) -> None:
        turn.scratch["steps"] += 1

    def client_end(self, module, turn: Turn) -> dict:
        sc, x, c = turn.scratch, turn.scratch["start"], turn.payload["c"]
        y = module.params()
        lr = turn.phase.lr if turn.phase.lr is not None else module.train_cfg.lr
        scale = 1.0 / (max(sc["steps"], 1) * lr)
        ci_new = {k: sc["ci"][k] - c[k] + (x[k] - y[k]) * scale for k in x}
        turn.state["c"] = ci_new
        return {"update": {k: y[k] - x[k] for k in x},
                "delta_c": {k: ci_new[k] - sc["ci"][k] for k in x}}
