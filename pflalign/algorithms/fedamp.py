"""FedAMP (Huang, Chu, Zhou, Wang, Liu, Pei, Zhang, "Personalized Cross-Silo Federated Learning
on Non-IID Data", AAAI 2021).

Attentive message passing: every client i keeps its own model w_i. The server builds for each
client a personalized cloud model u_i = sum_j xi_ij w_j, a convex combination that weights the
clients whose models are similar to w_i more, and the client trains
F_i(w) + lambda / (2 alpha_K) ||w - u_i||^2 from its own w_i. There is no global model; the
cloud models travel in the payload, keyed by client id.

``attention=cosine`` is the paper's HeurFedAMP for deep models: xi_ii = ``self_weight`` and
xi_ij = (1 - xi_ii) softmax_{j != i}(sigma * cos(w_i, w_j)). ``attention=distance`` is the
closed form of the FedAMP step with A(d) = 1 - exp(-d / sigma) that PFLlib implements:
xi_ij = alpha_K * exp(-||w_i - w_j||^2 / sigma) / sigma and xi_ii = 1 - sum_{j != i} xi_ij.
Deviations from PFLlib: the proximal term is the paper's squared norm with its gradient
(PFLlib's uses ``.data`` tensors and an unsquared norm, so it never pulls); the server keeps
each client's latest model and builds clouds from all of them (identical under full
participation); the reported ``global`` model is the train-size-weighted mean of the latest
client models, which also seeds clients that have not trained yet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from ..config import option
from .base import Algorithm, Params, Phase, Turn, Upload, flatten, sq_dist, unflatten


@dataclass
class FedAMPHparams:
    lam: float = option(1.0, "lambda: weight of the proximal pull toward the cloud model", lo=0,
                        sweep="loguniform(0.01, 10)")
    alphaK: float = option(1.0, "alpha_K: message-passing step (the proximal weight is lambda / alpha_K)",
                           lo=0, lo_open=True, sweep="loguniform(0.01, 10)")
    sigma: float = option(1.0, "attention temperature (cosine: sharpness; distance: length scale)", lo=0,
                          lo_open=True, sweep="loguniform(0.1, 100)")
    attention: str = option("cosine", "attention form: HeurFedAMP's cosine softmax or FedAMP's distance kernel",
                            choices=["cosine", "distance"])
    self_weight: float = option(0.5, "xi_ii of the cosine form: the share of a client's own model in its cloud",
                                lo=0, hi=1, sweep="uniform(0.1, 0.9)")


def attention_weights(models: torch.Tensor, attention: str, sigma: float, alphaK: float,
                      self_weight: float) -> torch.Tensor:
    """[K, K] message-passing weights xi from the clients' flattened models [K, d] (rows sum to 1)."""
    k = len(models)
    eye = torch.eye(k, dtype=torch.bool, device=models.device)
    if k == 1:
        return torch.ones(1, 1, dtype=models.dtype)
    if attention == "cosine":
        unit = F.normalize(models, dim=1)
        logits = (sigma * unit @ unit.T).masked_fill(eye, float("-inf"))
        return torch.where(eye, torch.full_like(logits, self_weight), (1 - self_weight) * logits.softmax(1))
    dist = torch.cdist(models, models).pow(2)
    xi = (alphaK * torch.exp(-dist / sigma) / sigma).masked_fill(eye, 0.0)
    return xi + torch.diag(1 - xi.sum(1))


class FedAMP(Algorithm):
    name = "fedamp"
    Hparams = FedAMPHparams
    evaluates_global = False

    # ---- server side -------------------------------------------------------------------
    def init_server_state(self, global_params: Params, client_weights: list[float]) -> dict:
        return {"models": {}, "weights": {}, "cloud": {}}

    def payload(self, global_params: Params, server_state: dict) -> dict:
        return {"global": global_params, "cloud": server_state["cloud"]}

    def download(self, payload: dict, client_id: int) -> dict:
        """Each client is sent its own cloud model (the global one until it has one)."""
        return {"cloud": payload["cloud"].get(client_id, payload["global"])}

    def aggregate(self, uploads: Iterable[Upload], global_params: Params, server_state: dict):
        models, weights = dict(server_state["models"]), dict(server_state["weights"])
        for u in uploads:
            models[u.client_id], weights[u.client_id] = flatten(u.data["model"]), u.weight
        ids = sorted(models)
        W = torch.stack([models[i] for i in ids]).to(torch.float64)
        xi = attention_weights(W, self.hp.attention, self.hp.sigma, self.hp.alphaK, self.hp.self_weight)
        clouds = (xi @ W).to(next(iter(global_params.values())).dtype)
        n = torch.tensor([weights[i] for i in ids], dtype=torch.float64)
        mean = (n @ W / n.sum()).to(clouds.dtype)
        return unflatten(mean, global_params), {
            "models": models, "weights": weights,
            "cloud": {i: unflatten(c, global_params) for i, c in zip(ids, clouds)}}

    # ---- client side -------------------------------------------------------------------
    def client_begin(self, module, turn: Turn) -> None:
        module.load_params(turn.state.get("theta", turn.payload["global"]))
        turn.scratch["cloud"] = turn.payload["cloud"].get(turn.client_id, turn.payload["global"])

    def loss(self, module, batch, turn: Turn):
        x, _ = batch
        u = turn.scratch["cloud"]
        if next(iter(u.values())).device != x.device:  # Lightning moved the model to an accelerator
            u = turn.scratch["cloud"] = {k: v.to(x.device) for k, v in u.items()}
        return super().loss(module, batch, turn) + self.hp.lam / (2 * self.hp.alphaK) * sq_dist(module, u)

    def client_end(self, module, turn: Turn) -> dict:
        turn.state["theta"] = module.params()
        return {"model": turn.state["theta"]}

    def personalized_params(self, module, turn: Turn) -> Params:
        return turn.state.get("theta", turn.payload["global"])

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """FedAMP's own first turn: with no cloud model of its own yet, it trains from the global
        model under the proximal pull toward it; its trained model is its model."""
        return self.first_turn(module, turn, adapt)
