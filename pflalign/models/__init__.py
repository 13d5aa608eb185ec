"""Model registry. Every model is a :class:`SplitModel` with a ``body`` (feature extractor)
and a ``head`` (classifier), which body/head methods (FedPer, FedRep, pFLAlign's
``gate_scope=head``) address by parameter-name prefix."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ConfigError
from .nets import SplitModel, charlstm, cnn, cnn1d, mlp, resnet18

MODELS: dict[str, Callable[..., SplitModel]] = {
    "mlp": mlp, "cnn1d": cnn1d, "cnn": cnn, "resnet18": resnet18, "charlstm": charlstm,
}


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
    """``cfg`` is a ``ModelConfig``; the input shape and class count come from the data."""
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model.name '{cfg.name}' (choose from {', '.join(MODELS)})")
    return MODELS[cfg.name](cfg, tuple(input_shape), num_classes)


def model_bytes(cfg, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Bytes of one copy of the model's parameters (what sizes client states and uploads)."""
    return sum(p.numel() * p.element_size() for p in build_model(cfg, input_shape, num_classes).parameters())


__all__ = ["MODELS", "SplitModel", "build_model", "model_bytes", "nn"]
