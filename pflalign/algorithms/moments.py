"""Per-client gradient moments that persist across rounds (pFLAlign, persistent-momentum control).

Multi-tensor (``torch._foreach_*``) updates: one call per operation for all of a model's
tensors instead of a Python loop of small ops per tensor (the same arithmetic, bit for bit).
"""
from __future__ import annotations

import torch


def update_moments(state: dict, names: list[str], grads: list[torch.Tensor], b1: float,
                   b2: float | None) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """EMA of g (and of g*g when ``b2`` is given) with Adam's bias correction, for every tensor.

    ``state["s"]`` is the client's step counter; the caller advances it once per step.
    Returns (mh, vh) per tensor, vh None when ``b2`` is None.
    """
    s = state["s"]
    m = state.setdefault("m", {})
    ms = [m.setdefault(n, torch.zeros_like(g)) for n, g in zip(names, grads)]
    torch._foreach_mul_(ms, b1)
    torch._foreach_add_(ms, grads, alpha=1 - b1)
    mh = torch._foreach_div(ms, 1 - b1 ** s)
    if b2 is None:
        return mh, None
    v = state.setdefault("v", {})
    vs = [v.setdefault(n, torch.zeros_like(g)) for n, g in zip(names, grads)]
    torch._foreach_mul_(vs, b2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
    return mh, torch._foreach_div(vs, 1 - b2 ** s)
