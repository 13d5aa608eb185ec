"""Model registry. Every model is a :class:`SplitModel` with a ``body`` (feature extractor)
and a ``head`` (classifier), which body/head methods (FedPer, FedRep, pFLAlign's
``gate_scope=head``) address by parameter-name prefix. Users' own factories come by import path
or entry point (:mod:`pflalign.plugins`)."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from ..errors import ConfigError
from ..plugins import Registry, what
from .nets import SplitModel, charlstm, cnn, cnn1d, logreg, mlp, resnet18

Factory = Callable[..., SplitModel]


def _check(obj, where: str) -> Factory:
    """A plug-in model is a factory ``(cfg: ModelConfig, input_shape, num_classes) -> SplitModel``
    (a function, or a SplitModel subclass taking those three arguments)."""
    try:
        inspect.signature(obj).bind(None, (), 0)
    except TypeError:  # not callable, or another signature
        raise ConfigError(f"{where}: {what(obj)} is not a model factory "
                          f"(cfg, input_shape, num_classes) -> SplitModel") from None
    except ValueError:  # a callable without an inspectable signature: judged by what it returns
        pass
    return obj


MODELS: Registry[Factory] = Registry("model.name", "pflalign.models", {
    "mlp": mlp, "cnn1d": cnn1d, "cnn": cnn, "resnet18": resnet18, "charlstm": charlstm, "logreg": logreg,
}, _check, "package.module:factory")


def get_model(name: str) -> Factory:
    """A built-in or entry-point name, or ``package.module:factory``."""
    return MODELS.resolve(name)


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
    """``cfg`` is a ``ModelConfig``; the input shape and class count come from the data."""
    model = get_model(cfg.name)(cfg, tuple(input_shape), num_classes)
    if not isinstance(model, SplitModel):
        raise ConfigError(f"model.name={cfg.name}: the factory returned {what(model)}, not a "
                          f"pflalign.models.SplitModel (body + head)")
    return model


def check_parts(model: SplitModel, needs: dict[str, str], model_name: str, algorithm: str) -> None:
    """Refuse a model with no parameters in a part the algorithm shares, keeps or trains on its
    own (``Algorithm.needs_parts``; logreg's body is a bare flatten): the method would otherwise
    quietly become another one, or fail rounds later on an empty parameter list."""
    for part, why in needs.items():
        if next(getattr(model, part).parameters(), None) is None:
            raise ConfigError(f"algorithm={algorithm} needs parameters in the model's {part} ({why}), and "
                              f"model.name={model_name} has none there: use a model with a {part} (e.g. mlp)")


def model_bytes(cfg, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Bytes of one copy of the model's parameters (what sizes client states and uploads)."""
    return sum(p.numel() * p.element_size() for p in build_model(cfg, input_shape, num_classes).parameters())


__all__ = ["MODELS", "SplitModel", "build_model", "check_parts", "get_model", "model_bytes", "nn"]
