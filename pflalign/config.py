"""Experiment configuration: typed dataclasses, YAML files and dotted ``key=value`` overrides.

The dataclass defaults *are* the embedded default experiment (``configs/default.yaml`` is a
commented copy), so an installed wheel runs without any file. OmegaConf does the merging and
type checking; this module adds range checks and turns every failure into one ``ConfigError``
line that names the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError


def option(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, choices: list | None = None, **extra: Any):
    """A config field with its documentation and valid range (checked by :func:`validate`)."""
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = option("mnist1d", "dataset name (`pflalign list datasets`)")
    root: Optional[str] = option(None, "directory (or text file, shakespeare) of file-based datasets")
    download: bool = option(False, "let torchvision download cifar10/cifar100/mnist into root")
    num_samples: int = option(5000, "samples to generate (mnist1d; synthetic: mean per client x clients)", lo=10)
    max_samples: Optional[int] = option(None, "file datasets: partition a seeded random subset of this many "
                                        "samples (CPU-sized runs); null = all", lo=1)
    partition: str = option("dirichlet", "how samples are split over clients",
                            choices=["iid", "dirichlet", "pathological", "quantity_skew", "natural"])
    alpha: float = option(0.1, "Dirichlet concentration (smaller = more label skew)", lo=0, lo_open=True)
    classes_per_client: int = option(2, "labels per client for partition=pathological", lo=1)
    quantity_sigma: float = option(1.0, "log-normal sigma of client sizes (quantity_skew, synthetic)", lo=0, lo_open=True)
    num_clients: int = option(20, "number of clients", lo=1)
    min_samples: int = option(10, "minimum samples per client (dirichlet, quantity_skew, synthetic)", lo=1)
    test_fraction: float = option(0.25, "per-client test share (PFLlib: 0.25)", lo=0, hi=1, lo_open=True)
    val_fraction: float = option(0.0, "share of each client's train split held out for validation", lo=0, hi=0.9)
    synthetic_alpha: float = option(1.0, "Synthetic(alpha, beta): model heterogeneity", lo=0)
    synthetic_beta: float = option(1.0, "Synthetic(alpha, beta): data heterogeneity", lo=0)
    seq_len: int = option(80, "shakespeare: characters of context per sample (LEAF: 80)", lo=1)
    stride: Optional[int] = option(None, "shakespeare: characters between sample windows; null = seq_len (disjoint; LEAF: 1)", lo=1)
    min_chars: int = option(10000, "shakespeare: characters a speaker needs to be a client (the longest num_clients are used)", lo=1)
    client_samples: Optional[int] = option(256, "shakespeare: samples per client at most (seeded random subset of its windows); null = all", lo=2)
    seed: Optional[int] = option(None, "partition/generation seed; null = the run seed")
    cache_dir: str = option("~/.cache/pflalign", "where generated datasets and partitions are cached")


@dataclass
class ModelConfig:
    name: str = option("mlp", "model name (`pflalign list models`)")
    hidden: List[int] = option([128, 128], "hidden widths of mlp")
    width: Optional[int] = option(None, "base channels of cnn1d/cnn/resnet18, LSTM width of charlstm; null = 32/32/64/256", lo=1)
    embed_dim: int = option(8, "charlstm: character embedding size (LEAF: 8); its LSTM size is model.width, null = 256", lo=1)


@dataclass
class TrainConfig:
    lr: float = option(0.05, "client learning rate (plain SGD)", lo=0, lo_open=True)
    batch_size: int = option(20, "client minibatch size", lo=1)
    local_epochs: int = option(1, "local epochs per round", lo=1)
    weight_decay: float = option(0.0, "L2 weight decay of the client optimizer", lo=0)
    num_threads: int = option(1, "torch threads per client worker (1 avoids OpenMP contention)", lo=1)
    accelerator: str = option("cpu", "Lightning accelerator for client training", choices=["cpu", "gpu", "auto"])


@dataclass
class WandbConfig:
    mode: str = option("auto", "auto = online with an API key, else offline",
                       choices=["auto", "online", "offline", "disabled"])
    project: str = option("pflalign", "W&B project")
    entity: Optional[str] = option(None, "W&B entity (team or user)")


@dataclass
class RayConfig:
    address: Optional[str] = option(None, "cluster to join; null = $RAY_ADDRESS, else start a local instance")
    num_workers: int = option(0, "client worker actors; 0 = as many as the resources allow", lo=0)
    num_cpus: float = option(1.0, "CPUs per worker (fractions allowed)", lo=0)
    num_gpus: float = option(0.0, "GPUs per worker (fractions allowed, e.g. 0.25)", lo=0)
    local_cpus: Optional[int] = option(None, "CPUs of a locally started instance; null = all", lo=1)
    temp_dir: Optional[str] = option(None, "temp dir of a locally started instance; null = /tmp/pflalign-ray")
    dashboard: bool = option(False, "start the dashboard with a local instance")
    fault_round: Optional[int] = option(None, "testing: kill one worker mid-turn in this round (once)", lo=0)


@dataclass
class Config:
    algorithm: str = option("pflalign", "algorithm name (`pflalign list algorithms`)")
    seed: int = option(0, "seed of everything: model init, partition, sampling, batches")
    rounds: int = option(150, "communication rounds", lo=1)
    client_fraction: float = option(1.0, "share of clients sampled each round", lo=0, hi=1, lo_open=True)
    eval_every: int = option(1, "evaluate all clients every k rounds (and at the last round)", lo=1)
    stability_window: int = option(50, "evaluations (= rounds at eval_every=1) over which stability is measured", lo=2)
    checkpoint_every: int = option(10, "snapshot the federation every k rounds (0: only at the end)", lo=0)
    runtime: str = option("local", "where clients run", choices=["local", "ray"])
    out_dir: str = option("runs", "parent directory of run directories")
    name: Optional[str] = option(None, "run directory name; null = <algorithm>-<dataset>-s<seed>-<time>")
    experiment: str = option("default", "experiment name (W&B group)")
    label: Optional[str] = option(None, "name of this variant in comparison tables; null = algorithm")
    progress: bool = option(True, "progress bar on a terminal, else a line every 10% of rounds")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    algo: Dict[str, Any] = field(default_factory=dict, metadata={"help": "hyperparameters of the algorithm"})


def _omegaconf_error(e: OmegaConfBaseException, prefix: str = "") -> ConfigError:
    key = prefix + str(getattr(e, "full_key", "") or getattr(e, "key", "") or "")
    msg = str(getattr(e, "msg", e)).splitlines()[0]
    if "not in" in msg or "Key" in type(e).__name__:
        return ConfigError(f"unknown config key '{key}'")
    return ConfigError(f"bad value for '{key}': {msg}")


def _merge(base, *others, prefix: str = ""):
    try:
        return OmegaConf.merge(base, *others)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, prefix) from None


def parse_overrides(overrides: list[str]):
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"expected key=value, got '{bad[0]}'")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse override: {str(e).splitlines()[0]}") from None


def read_yaml(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot read config {path}: {str(e).splitlines()[0]}") from None
    if not OmegaConf.is_dict(loaded):
        raise ConfigError(f"config {path} must be a mapping of keys")
    return loaded


def load_config(config_file: str | Path | None = None, overrides: list[str] = (), *extra) -> Config:
    """Defaults <- YAML file <- extra mappings <- ``key=value`` overrides, validated.

    The algorithm's hyperparameters (``algo.*``) are checked against its own dataclass, so
    ``algo.kappa=-1`` or ``algo.kappaa=1`` fail here, before any work starts.
    """
    layers = [read_yaml(config_file)] if config_file else []
    layers += [OmegaConf.create(dict(e)) for e in extra]
    layers.append(parse_overrides(list(overrides)))
    merged = _merge(OmegaConf.structured(Config), *layers)
    cfg: Config = OmegaConf.to_object(merged)
    cfg.algo = resolve_hparams(cfg.algorithm, cfg.algo)
    validate(cfg)
    return cfg


def resolve_hparams(algorithm: str, values: Any):
    """The algorithm's hyperparameter dataclass filled from ``values`` (dict or instance)."""
    from .algorithms import get_algorithm

    cls = get_algorithm(algorithm).Hparams
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    merged = _merge(OmegaConf.structured(cls), OmegaConf.create(dict(values or {})), prefix="algo.")
    hp = OmegaConf.to_object(merged)
    validate(hp, prefix="algo.")
    return hp


def validate(obj: Any, prefix: str = "") -> None:
    """Range and choice checks from each field's metadata; recurses into nested configs."""
    for f in dataclasses.fields(obj):
        value, key, meta = getattr(obj, f.name), prefix + f.name, f.metadata
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
            continue
        if value is None or isinstance(value, (list, dict, str, bool)):
            choices = meta.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))} (got {value!r})")
            continue
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
            raise ConfigError(f"{key} must be {'>' if meta.get('lo_open') else '>='} {lo} (got {value})")
        if hi is not None and value > hi:
            raise ConfigError(f"{key} must be <= {hi} (got {value})")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def describe(cls=Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every key: feeds ``pflalign run --help`` and the README."""
    rows = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            sub = f.default_factory
            rows += describe(sub, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((prefix + f.name, default, f.metadata.get("help", "")))
    return rows
