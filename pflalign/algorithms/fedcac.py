"""FedCAC (Wu, Liu, Niu, Zhu, Tang, "Bold but Cautious: Unlocking the Potential of
Personalized Federated Learning through Cautiously Aggressive Collaboration", ICCV 2023).

After local training each client marks its critical parameters: in every tensor the top
``tau`` share by sensitivity |delta_theta * theta| (the change this turn times the value). The
server averages all models into the global model (the non-critical parameters collaborate
with everyone) and builds for each client i a customized model: the mean of the models of the
clients whose critical-parameter overlap with i reaches a threshold that rises from the mean
overlap to the maximum over ``beta`` rounds (critical parameters collaborate only with similar
clients, less and less). The client starts its next turn from, and is evaluated as,
critical parameters from its customized model and the rest from the global model.

As in PFLlib, overlap_ij = 1 - |C_i xor C_j| / (2 |C_i|) and the threshold at round r is
mean + (r + 1) / beta * (max - mean) over the off-diagonal overlaps; the server keeps each
client's latest model and mask (identical to PFLlib under full participation). The customized
models travel in the payload, keyed by client id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from ..config import option
from .base import Algorithm, Params, Phase, Turn, Upload, flatten, unflatten, weighted_mean


@dataclass
class FedCACHparams:
    tau: float = option(0.5, "share of each tensor's parameters selected as critical", lo=0, hi=1, lo_open=True,
                        sweep="uniform(0.1, 0.9)")
    beta: float = option(100.0, "rounds over which the collaboration threshold rises from the mean overlap to the max",
                         lo=0, lo_open=True, sweep="loguniform(10, 300)")


def critical_mask(before: torch.Tensor, after: torch.Tensor, tau: float) -> torch.Tensor:
    """Top-``tau`` share of one tensor by sensitivity |(after - before) * after| (bool, like ``after``)."""
    c = ((after - before) * after).abs()
    flat = c.reshape(-1)
    nz = int(tau * flat.numel())
    if nz == 0:
        return torch.zeros_like(c, dtype=torch.bool)
    thresh = flat.topk(nz).values[-1]
    if thresh <= 1e-10:  # ties at zero: take the smallest nonzero sensitivity instead
        nonzero = flat[flat > 1e-20]
        if len(nonzero):
            thresh = nonzero.min()
    return c >= thresh


def overlaps(masks: torch.Tensor) -> torch.Tensor:
    """[K, K] overlap_ij = 1 - |C_i xor C_j| / (2 |C_i|) of [K, d] 0/1 masks."""
    size = masks.sum(1)
    inter = masks @ masks.T
    xor = size[:, None] + size[None, :] - 2 * inter
    return 1 - xor / (2 * size[:, None]).clamp_min(1)


def customized(models: torch.Tensor, masks: torch.Tensor, progress: float) -> torch.Tensor:
    """Each client's mean over the clients whose overlap with it reaches the round's threshold."""
    k = len(models)
    eye = torch.eye(k, dtype=torch.bool)
    if k == 1:
        return models.clone()
    ov = overlaps(masks)
    off = ov[~eye]
    thresh = off.mean() + progress * (off.max() - off.mean())
    collab = (ov >= thresh) | eye
    return (collab.to(models.dtype) @ models) / collab.sum(1, keepdim=True).to(models.dtype)


class FedCAC(Algorithm):
    name = "fedcac"
    Hparams = FedCACHparams
    evaluates_global = True

    # ---- server side -------------------------------------------------------------------
    def init_server_state(self, global_params: Params, client_weights: list[float]) -> dict:
        return {"models": {}, "masks": {}, "rounds": 0, "custom": {}}

    def payload(self, global_params: Params, server_state: dict) -> dict:
        return {"global": global_params, "custom": server_state["custom"]}

    def download(self, payload: dict, client_id: int) -> dict:
        """The global model and this client's customized model (once it has one)."""
        custom = payload["custom"].get(client_id)
        return {"global": payload["global"], **({"custom": custom} if custom is not None else {})}

    def aggregate(self, uploads: Iterable[Upload], global_params: Params, server_state: dict):
        uploads = list(uploads)
        new_global = weighted_mean((u.data["model"], u.weight) for u in uploads)
        models, masks = dict(server_state["models"]), dict(server_state["masks"])
        for u in uploads:
            models[u.client_id], masks[u.client_id] = flatten(u.data["model"]), u.data["mask"]
        rounds = server_state["rounds"] + 1
        ids = sorted(models)
        custom = customized(torch.stack([models[i] for i in ids]).to(torch.float64),
                            torch.stack([masks[i] for i in ids]).to(torch.float64), (rounds + 1) / self.hp.beta)
        dtype = next(iter(global_params.values())).dtype
        return new_global, {"models": models, "masks": masks, "rounds": rounds,
                            "custom": {i: unflatten(c.to(dtype), global_params) for i, c in zip(ids, custom)}}

    # ---- client side -------------------------------------------------------------------
    def start_params(self, turn: Turn) -> Params:
        """Critical parameters from the customized model, the others from the global model."""
        w, mask = turn.payload["global"], turn.state.get("mask")
        custom = turn.payload["custom"].get(turn.client_id)
        if mask is None or custom is None:
            return w
        return {k: torch.where(mask[k], custom[k], w[k]) for k in w}

    def client_begin(self, module, turn: Turn) -> None:
        start = self.start_params(turn)
        module.load_params(start)
        turn.scratch["start"] = {k: v.clone() for k, v in start.items()}

    def client_end(self, module, turn: Turn) -> dict:
        end, start = module.params(), turn.scratch["start"]
        mask = {k: critical_mask(start[k], end[k], self.hp.tau) for k in end}
        turn.state["mask"] = mask
        flat = flatten(mask)
        return {"model": end, "mask": flat, "stats": {"cac/critical": float(flat.float().mean())}}

    def personalized_params(self, module, turn: Turn) -> Params:
        return self.start_params(turn)

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """The global model as is: a FedCAC client's model is built by the server from the
        critical-parameter mask and model it uploaded (``start_params``), and a client the server
        has never seen has neither; local training would not change what it is served."""
        return turn.payload["global"]
