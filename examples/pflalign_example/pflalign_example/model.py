"""A model factory: ``(cfg: ModelConfig, input_shape, num_classes) -> SplitModel``. The body is
what body/head methods (FedPer, FedRep, ...) share, the head what they keep per client."""
from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from pflalign.models import SplitModel


def gelu_mlp(cfg, input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
    """Flatten -> Linear -> GELU -> LayerNorm body (width model.width, default 64), linear head."""
    width = cfg.width or 64
    body = nn.Sequential(OrderedDict(flatten=nn.Flatten(), proj=nn.Linear(math.prod(input_shape), width),
                                     act=nn.GELU(), norm=nn.LayerNorm(width)))
    return SplitModel(body, nn.Linear(width, num_classes))
