"""Algorithm registry: one file per algorithm, one line here; users' own by import path or entry
point (:mod:`pflalign.plugins`)."""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..plugins import Registry, what
from .base import Algorithm, Phase, Turn, Upload
from .apfl import APFL
from .ditto import Ditto
from .fedbabu import FedBABU
from .fedper import FedPer
from .fedrep import FedRep
from .lg_fedavg import LGFedAvg
from .scaffold import Scaffold
from .fedavg import FedAvg
from .fedavg_ft import FedAvgFT
from .fedprox import FedProx
from .local import Local
from .pflalign import PFLAlign
from .fedala import FedALA
from .fedamp import FedAMP
from .fedas import FedAS
from .fedcac import FedCAC
from .fedcp import FedCP
from .feddbe import FedDBE
from .fedrod import FedRoD
from .gpfl import GPFL
from .perfedavg import PerFedAvg
from .pfedme import PFedMe


def _check(obj, where: str) -> type[Algorithm]:
    """A plug-in algorithm is an :class:`Algorithm` subclass whose ``Hparams`` is a dataclass
    (its fields are the ``algo.*`` keys, validated and swept like a built-in's)."""
    if not (isinstance(obj, type) and issubclass(obj, Algorithm)):
        raise ConfigError(f"{where}: {what(obj)} is not a subclass of pflalign.algorithms.Algorithm")
    if not (isinstance(obj.Hparams, type) and dataclasses.is_dataclass(obj.Hparams)):
        raise ConfigError(f"{where}: {obj.__name__}.Hparams must be a dataclass (its fields are the algo.* keys)")
    return obj


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm", "pflalign.algorithms", {
    cls.name: cls for cls in (Local, FedAvg, FedAvgFT, FedProx, PFLAlign,
                              Scaffold, Ditto, APFL, FedPer, FedRep, FedBABU, LGFedAvg,
                              FedALA, PFedMe, PerFedAvg, FedRoD, FedAMP, FedCAC, FedDBE, FedAS,
                              FedCP, GPFL)
}, _check, "package.module:Class")


def get_algorithm(name: str) -> type[Algorithm]:
    """A built-in or entry-point name, or ``package.module:Class``."""
    return ALGORITHMS.resolve(name)


def build_algorithm(cfg) -> Algorithm:
    """The algorithm of a validated ``Config`` (``cfg.algo`` holds its hyperparameters)."""
    return get_algorithm(cfg.algorithm)(cfg.algo)


__all__ = ["ALGORITHMS", "Algorithm", "Phase", "Turn", "Upload", "build_algorithm", "get_algorithm"]
