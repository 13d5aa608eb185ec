"""FedAvgM (Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", arXiv 1909.06335, 2019): FedAvg whose server keeps a momentum
buffer of the averaged client update, v <- beta v + mean_i(u_i), and steps w <- w + eta v.
beta = 0, eta = 1 is FedAvg. Clients are unchanged, so only the server hooks are overridden."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pflalign.algorithms import Algorithm
from pflalign.algorithms.base import weighted_mean
from pflalign.config import option


@dataclass
class FedAvgMHparams:
    server_momentum: float = option(0.9, "server momentum beta (0 = FedAvg)", lo=0, hi=0.99,
                                    sweep="uniform(0.5, 0.95)")
    server_lr: float = option(1.0, "server step size eta on the momentum buffer", lo=0, lo_open=True,
                              sweep="loguniform(0.3, 3)")


class FedAvgM(Algorithm):
    """FedAvgM (Hsu et al., 2019): FedAvg with server momentum."""

    name = "fedavgm"
    Hparams = FedAvgMHparams

    def init_server_state(self, global_params, client_weights):
        return {"momentum": {k: torch.zeros_like(v) for k, v in global_params.items()}}

    def aggregate(self, uploads, global_params, server_state):
        mean = weighted_mean((u.data["update"], u.weight) for u in uploads)
        v = {k: self.hp.server_momentum * m + mean[k] for k, m in server_state["momentum"].items()}
        return {k: w + self.hp.server_lr * v[k] for k, w in global_params.items()}, {"momentum": v}
