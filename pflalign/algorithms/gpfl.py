"""GPFL (Zhang, Hua, Wang, Song, Xue, Ma, Cao, Guan, "GPFL: Simultaneously Learning Global and
Personalized Feature Information for Personalized Federated Learning", ICCV 2023).

A Conditional Valve (CoV) after the feature extractor makes two routes from each feature
vector f: CoV(f, c) = relu(f * (1 + gamma(c)) + beta(c)), gamma and beta each a linear layer +
ReLU + LayerNorm of a conditional input c. The personalized route, c = p_i, feeds the client's
own head (the prediction and its cross-entropy). The global route, c = g_i, is guided by the
Global Category Embedding layer (GCE, one learned vector per class): angle-level guidance, a
softmax cross-entropy over the cosines between the global-route feature and every class
embedding, and magnitude-level guidance, ``lam`` * || F_g - E_frozen[y] ||_2 over the batch,
where E_frozen is the GCE the server sent this round. After local training the client sets
its conditional inputs from its trained GCE: g_i the mean of the class embeddings, p_i their
mean weighted by its own class frequencies (zeros before its first turn). The extractor, CoV
and GCE are averaged by the server (weights n_i); the head is the client's own. CoV and GCE
train with an extra weight decay ``mu`` (their own SGD in the reference, same learning rate).

Here the model is extractor + the client's head (as FedPer); CoV and GCE are the algorithm's
extra modules and the prediction is ``personalized_forward``: head(CoV(f, p_i)). As in the
reference code (github.com/TsingZ0/GPFL, PFLlib's clientgpfl/servergpfl), a client's model is
the current global extractor and CoV with its own head and p_i; decision: a client keeps the
conditional inputs of its last turn until it trains again (the reference recomputes them every
round for every client from the GCE it holds, which is the same under full participation). No
global model exists (the head is never shared), so none is evaluated. Defaults: ``lam`` 0.01,
``mu`` 0.1 (the authors' script for MLPs and the 4-layer CNN; 1e-4 and 0 for ResNet-18).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import option
from .base import Params, Phase, Turn
from .fedcp import average_shared, linear_head, named
from .fedper import FedPer, part


@dataclass
class GPFLHparams:
    lam: float = option(0.01, "weight of the magnitude-level guidance ||F_g - E[y]||", lo=0,
                        sweep="loguniform(0.0001, 0.1)")
    mu: float = option(0.1, "weight decay of the CoV and GCE", lo=0, sweep="loguniform(0.001, 1)")


class CoV(nn.Module):
    """The Conditional Valve: a feature-wise affine map of the features, set by a conditional input."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm(dim))
        self.beta = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm(dim))

    def forward(self, feat: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return F.relu(feat * (self.gamma(cond) + 1) + self.beta(cond))


def guidance(feat_g: torch.Tensor, y: torch.Tensor, embedding: torch.Tensor, frozen: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor]:
    """(angle-level, magnitude-level) guidance of the global-route features by the GCE."""
    angle = F.cross_entropy(F.normalize(feat_g) @ F.normalize(embedding).T, y)
    return angle, torch.linalg.vector_norm(feat_g - frozen[y])


def conditional_inputs(embedding: torch.Tensor, freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g_i, p_i): the class embeddings' mean and their mean weighted by the client's class frequencies."""
    return embedding.mean(0), freq.to(embedding) @ embedding


class GPFL(FedPer):
    name = "gpfl"
    Hparams = GPFLHparams
    evaluates_global = False
    shared, local = "body", "head"

    # ---- modules ------------------------------------------------------------------------
    def _modules(self, classes: int, dim: int) -> dict[str, nn.Module]:
        return {"cov": CoV(dim), "gce": nn.Embedding(classes, dim)}

    def extra_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return self._modules(*linear_head(dict(model.named_parameters())))

    def personalized_forward(self, module, turn: Turn, x: torch.Tensor) -> torch.Tensor:
        feat = module.model.body(x)
        return module.model.head(module.extra["cov"](feat, self._inputs(turn, feat)[1]))

    @staticmethod
    def _inputs(turn: Turn, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g_i, p_i) on ``like``'s device: zeros before the client's first turn."""
        zero = torch.zeros(like.shape[-1])
        return tuple(turn.state.get(k, zero).to(like) for k in ("g", "p"))

    # ---- server side -------------------------------------------------------------------
    def init_server_state(self, global_params: Params, client_weights: list[float]) -> dict:
        """The CoV and GCE every client starts from (initialized from the run's seeded stream)."""
        return {"extra": named(self._modules(*linear_head(global_params)))}

    def payload(self, global_params: Params, server_state: dict) -> dict:
        return {"global": global_params, "extra": server_state["extra"]}

    def download(self, payload: dict, client_id: int) -> dict:
        """Extractor, CoV and GCE (a first turn's head is the seeded initialization, never sent)."""
        return {"global": part(payload["global"], self.shared), "extra": payload["extra"]}

    def aggregate(self, uploads, global_params, server_state):
        new_global, extra = average_shared(uploads, global_params, server_state["extra"])
        return new_global, {**server_state, "extra": extra}

    # ---- client side -------------------------------------------------------------------
    def _model(self, turn: Turn) -> Params:
        return {**turn.payload["global"], **turn.payload["extra"], **turn.state.get(self.local, {})}

    def client_begin(self, module, turn: Turn) -> None:
        module.load_params(self._model(turn))
        sc = turn.scratch
        sc["start"] = {k: v for k, v in module.params().items() if not k.startswith(self.local + ".")}
        gce = module.extra["gce"].weight
        sc["frozen"] = gce.detach().clone()  # this round's global GCE
        sc["g"], sc["p"] = self._inputs(turn, gce)

    def loss(self, module, batch, turn: Turn) -> torch.Tensor:
        x, y = batch
        sc, cov = turn.scratch, module.extra["cov"]
        feat = module.model.body(x)
        personal = F.cross_entropy(module.model.head(cov(feat, sc["p"])), y)
        angle, magnitude = guidance(cov(feat, sc["g"]), y, module.extra["gce"].weight, sc["frozen"])
        return personal + angle + self.hp.lam * magnitude

    @torch.no_grad()
    def transform_gradients(self, module, turn: Turn) -> None:
        """The CoV's and GCE's weight decay ``mu``: g <- g + mu * theta (their SGD step follows)."""
        params = [p for p in module.extra.parameters() if p.grad is not None]
        if self.hp.mu and params:
            torch._foreach_add_([p.grad for p in params], params, alpha=self.hp.mu)

    def client_end(self, module, turn: Turn) -> dict:
        out = super().client_end(module, turn)  # keeps the head; the update covers extractor, CoV, GCE
        freq = torch.bincount(turn.data.train_y, minlength=module.model.head.out_features).float()
        g, p = conditional_inputs(module.extra["gce"].weight.detach(), freq / freq.sum())
        turn.state.update(g=g.to("cpu", copy=True), p=p.to("cpu", copy=True))
        return out

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """GPFL's own first turn: the newcomer trains from the server's modules and is served the
        global extractor and CoV with its head and conditional inputs, as a client after its first
        turn."""
        return self.first_turn(module, turn, adapt)
