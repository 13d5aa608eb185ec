"""Gradient-variance diagnostic of ALGORITHM.md: how far minibatch gradients stray from the
full-batch gradient, with and without the preconditioner P."""
from __future__ import annotations

import torch

from .base import Params


def _grads(module, x: torch.Tensor, y: torch.Tensor) -> Params:
    module.model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(module(x), y).backward()
    out = {k: p.grad.detach().clone() for k, p in module.model.named_parameters() if p.grad is not None}
    module.model.zero_grad(set_to_none=True)
    return out


def _flat(g: Params, P: Params | None) -> torch.Tensor:
    return torch.cat([(g[k] * P[k] if P is not None and k in P else g[k]).reshape(-1) for k in g])


def gradient_variance(module, data, P: Params | None, batches: int, batch_size: int) -> dict:
    """E_b ||P g_b - P g||^2 / ||P g||^2 and mean cos(P g_b, P g), with P and with P = 1.

    Uses the client's train split at the current model; the minibatches come from the
    turn's seeded torch stream, so the numbers are reproducible.
    """
    x, y = data.train_x, data.train_y
    full = _grads(module, x, y)
    minibatch = [_grads(module, x[i], y[i]) for i in (torch.randperm(len(y))[:batch_size] for _ in range(batches))]
    out = {}
    for tag, pre in (("pre", P), ("sgd", None)):
        g = _flat(full, pre)
        ratios, cosines = [], []
        for gb in (_flat(b, pre) for b in minibatch):
            ratios.append(float((gb - g).pow(2).sum() / (g.pow(2).sum() + 1e-30)))
            cosines.append(float(torch.nn.functional.cosine_similarity(gb, g, dim=0, eps=1e-30)))
        out[f"align/grad_var_{tag}"] = sum(ratios) / batches
        out[f"align/cos_{tag}"] = sum(cosines) / batches
    return out
