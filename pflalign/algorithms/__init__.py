"""Algorithm registry: one file per algorithm, one line here."""
from __future__ import annotations

from ..errors import ConfigError
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
from .feddbe import FedDBE
from .fedrod import FedRoD
from .perfedavg import PerFedAvg
from .pfedme import PFedMe

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (Local, FedAvg, FedAvgFT, FedProx, PFLAlign,
                              Scaffold, Ditto, APFL, FedPer, FedRep, FedBABU, LGFedAvg,
                              FedALA, PFedMe, PerFedAvg, FedRoD, FedAMP, FedCAC, FedDBE, FedAS)
}


def get_algorithm(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{name}' (choose from {', '.join(ALGORITHMS)})")
    return ALGORITHMS[name]


def build_algorithm(cfg) -> Algorithm:
    """The algorithm of a validated ``Config`` (``cfg.algo`` holds its hyperparameters)."""
    return get_algorithm(cfg.algorithm)(cfg.algo)


__all__ = ["ALGORITHMS", "Algorithm", "Phase", "Turn", "Upload", "build_algorithm", "get_algorithm"]
