"""FedProx (Li et al., MLSys 2020): FedAvg with a proximal term mu/2 ||theta - w||^2 in the
local objective, which limits client drift under heterogeneity. Evaluated as the global model."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from .base import Algorithm, Turn, sq_dist


@dataclass
class FedProxHparams:
    mu: float = option(0.01, "proximal weight", lo=0, sweep="loguniform(0.001, 1)")


class FedProx(Algorithm):
    name = "fedprox"
    Hparams = FedProxHparams

    def loss(self, module, batch, turn: Turn):
        return super().loss(module, batch, turn) + self.hp.mu / 2 * sq_dist(module, turn.payload["global"])
