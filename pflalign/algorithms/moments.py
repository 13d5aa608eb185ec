"""Per-client gradient moments that persist across rounds (pFLAlign, persistent-momentum control)."""
from __future__ import annotations

import torch


def update_moments(state: dict, name: str, g: torch.Tensor, b1: float, b2: float | None):
    """EMA of g (and of g*g when ``b2`` is given) with Adam's bias correction.

    ``state["s"]`` is the client's step counter; the caller advances it once per step.
    Returns (mh, vh) with vh None when ``b2`` is None.
    """
    s = state["s"]
    m = state.setdefault("m", {}).setdefault(name, torch.zeros_like(g))
    m.mul_(b1).add_(g, alpha=1 - b1)
    mh = m / (1 - b1 ** s)
    if b2 is None:
        return mh, None
    v = state.setdefault("v", {}).setdefault(name, torch.zeros_like(g))
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    return mh, v / (1 - b2 ** s)
