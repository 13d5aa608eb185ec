"""Experiment configuration: typed dataclasses, YAML files and dotted ``key=value`` overrides.

The dataclass defaults *are* the embedded default experiment (the packaged preset ``default``,
``pflalign/configs/default.yaml``, is a commented copy), so an installed wheel runs without any
file. Presets and sweeps ship inside the package (:func:`packaged`) and are named by
``--config NAME`` / ``--sweep NAME``. OmegaConf does the merging and type checking; this module
adds range checks and turns every failure into one ``ConfigError`` line that names the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

# Seeds feed numpy's SeedSequence (non-negative) and torch.manual_seed (< 2**64); derived
# seeds add small tags, so the run seed stays below 2**63 to leave them room.
SEED_MAX = 2**63 - 1
INT_MAX = 2**63 - 1  # every integer key ends up in numpy/torch int64 arithmetic
# A run name becomes one directory under out_dir (and the W&B run id): one safe component.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@-]{0,199}")


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
    root: Optional[str] = option(None, "directory (or text file, shakespeare; .parquet file, hf) of file-based datasets")
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
    holdout_clients: int = option(0, "clients kept out of training (a seeded choice): never sampled, evaluated "
                                  "as newcomers at every evaluation (new_acc*, see eval.*)", lo=0)
    min_samples: int = option(10, "minimum samples per client (dirichlet, quantity_skew, synthetic)", lo=1)
    test_fraction: float = option(0.25, "per-client test share (PFLlib: 0.25)", lo=0, hi=1, lo_open=True)
    val_fraction: float = option(0.0, "share of each client's train split held out for validation", lo=0, hi=0.9)
    synthetic_alpha: float = option(1.0, "Synthetic(alpha, beta): model heterogeneity", lo=0)
    synthetic_beta: float = option(1.0, "Synthetic(alpha, beta): data heterogeneity", lo=0)
    seq_len: int = option(80, "shakespeare: characters of context per sample (LEAF: 80)", lo=1)
    stride: Optional[int] = option(None, "shakespeare: characters between sample windows; null = seq_len (disjoint; LEAF: 1)", lo=1)
    min_chars: int = option(10000, "shakespeare: characters a speaker needs to be a client (the longest num_clients are used)", lo=1)
    client_samples: Optional[int] = option(256, "shakespeare: samples per client at most (seeded random subset of its windows); null = all", lo=2)
    feature_column: Optional[str] = option(None, "hf: the input column; null = the first of image, img, pixel_values, x")
    label_column: Optional[str] = option(None, "hf: the label column; null = the first of label, labels, fine_label, y")
    client_column: Optional[str] = option(None, "hf: the column naming each row's client (partition=natural: the "
                                          "num_clients largest); null = none")
    image_size: Optional[int] = option(None, "hf, imagefolder: resize images to this square size; null = the files' "
                                       "own size (all must agree)", lo=1)
    image_mode: str = option("auto", "hf, imagefolder: image channels; auto = gray when every image is, else rgb",
                             choices=["auto", "gray", "rgb"])
    leaf_task: str = option("auto", "leaf: what x and y are; auto = told from the first sample (784 numbers: femnist)",
                            choices=["auto", "femnist", "shakespeare", "sent140", "vector"])
    feature_shift: str = option("none", "a per-client input domain, on all of its splits: rotate (images), noise "
                                "(Gaussian), affine (vectors: x -> Ax+b near identity)",
                                choices=["none", "rotate", "noise", "affine"])
    shift_strength: Optional[float] = option(None, "size of data.feature_shift: rotate: largest angle in degrees (45); "
                                             "noise: largest std (0.3); affine: scale of A-I and b (0.3); null = "
                                             "the default in parentheses", lo=0, lo_open=True)
    seed: Optional[int] = option(None, "partition/generation seed; null = the run seed", lo=0, hi=SEED_MAX)
    cache_dir: str = option("~/.cache/pflalign", "where generated datasets and partitions are cached")


@dataclass
class ModelConfig:
    name: str = option("mlp", "model name (`pflalign list models`)")
    hidden: List[int] = option([128, 128], "hidden widths of mlp", item_lo=1)
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
class EvalConfig:
    """How a held-out client (data.holdout_clients) is served: the algorithm's new-client hook."""
    adapt_epochs: int = option(1, "local epochs a held-out client trains from the server's current state "
                               "before it is evaluated (0: the global model as is)", lo=0)
    adapt_lr: Optional[float] = option(None, "learning rate of that training; null = the rate the method "
                                       "personalizes with (train.lr; ditto, pfedme: algo.personal_lr; "
                                       "fedbabu: algo.finetune_lr)", lo=0, lo_open=True)


@dataclass
class WandbConfig:
    mode: str = option("auto", "auto = online with an API key and a W&B host that answers within 2 s "
                       "(checked at start), else offline",
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
    temp_dir: Optional[str] = option(None, "temp dir of a locally started instance; null = /tmp/pflalign-ray-<uid>")
    dashboard: bool = option(False, "start the dashboard with a local instance")
    fault_round: Optional[int] = option(None, "testing: kill one worker mid-turn in this round (once; rounds count from 1)", lo=1)


@dataclass
class SimConfig:
    """System heterogeneity (PFLlib's drop-out and slow clients), seeded per (seed, round, client)."""
    dropout: float = option(0.0, "probability that a sampled client drops out of a round after receiving the "
                            "payload (it uploads nothing, its state is unchanged)", lo=0, hi=1)
    stragglers: float = option(0.0, "share of clients that are slow for the whole run (a seeded choice of "
                               "round(share x num_clients))", lo=0, hi=1)
    straggler_work: float = option(0.5, "share of each local phase's minibatch steps a straggler finishes before "
                                   "the deadline (ceil, at least 1 step)", lo=0, hi=1, lo_open=True)
    straggler_mode: str = option("partial", "what a straggler does at the deadline: upload its partial work, "
                                 "or drop out (upload nothing)", choices=["partial", "drop"])


@dataclass
class Config:
    algorithm: str = option("pflalign", "algorithm name (`pflalign list algorithms`)")
    seed: int = option(0, "seed of everything: model init, partition, sampling, batches (0 <= seed < 2**63)",
                       lo=0, hi=SEED_MAX)
    rounds: int = option(150, "communication rounds", lo=1)
    client_fraction: float = option(1.0, "share of the (training) clients sampled each round", lo=0, hi=1,
                                    lo_open=True)
    eval_every: int = option(1, "evaluate every k rounds (and at the last round)", lo=1)
    eval_clients: str = option("all", "who is evaluated: all (training) clients, the round's sampled ones, or a "
                               "fixed seeded subset of eval_subset of them (held-out clients: always all, apart)",
                               choices=["all", "sampled", "subset"])
    eval_subset: int = option(100, "clients in the evaluated subset (eval_clients=subset)", lo=1)
    state_store: str = option("auto", "where client states live between turns: memory, disk (per-client files "
                              "in the run directory), or auto (disk when they could exceed 1 GiB or a quarter "
                              "of the free memory)", choices=["auto", "memory", "disk"])
    stability_window: int = option(50, "evaluations (= rounds at eval_every=1) over which stability is measured", lo=2)
    checkpoint_every: int = option(10, "snapshot the federation every k rounds (0: only at the end)", lo=0)
    runtime: str = option("local", "where clients run", choices=["local", "ray"])
    out_dir: str = option("runs", "parent directory of run directories")
    name: Optional[str] = option(None, "run directory name (one path component: letters, digits, . _ - + = @); "
                                 "null = <algorithm>-<dataset>-s<seed>-<time>")
    experiment: str = option("default", "experiment name (W&B group)")
    label: Optional[str] = option(None, "name of this variant in comparison tables; null = algorithm")
    progress: bool = option(True, "progress bar on a terminal, else a line every 10% of rounds")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    algo: Dict[str, Any] = field(default_factory=dict, metadata={"help": "hyperparameters of the algorithm"})


def closest(key: str, candidates: list[str]) -> str | None:
    """The dotted key ``key`` most likely meant: a close last component (``alpah`` -> ``data.alpha``,
    ``alpha`` -> ``data.alpha``; one in ``key``'s own section first), else a close whole key
    (``train.rl`` -> ``train.lr``). A shared section prefix alone never makes a match."""
    parent, _, leaf = key.rpartition(".")
    leaves = difflib.get_close_matches(leaf, {c.rpartition(".")[2] for c in candidates}, n=3)
    found = sorted((c for c in candidates if c.rpartition(".")[2] in leaves),
                   key=lambda c: (c.rpartition(".")[0] != parent, leaves.index(c.rpartition(".")[2])))
    return (found or difflib.get_close_matches(key, candidates, n=1, cutoff=0.8) or [None])[0]


def unknown_key(key: str, schema: type, prefix: str = "", owner: str | None = None) -> ConfigError:
    """``unknown config key 'data.alpah' (did you mean data.alpha?)``: typos are the usual cause.

    Candidates are every key of ``schema`` (leaves and sections, dotted). Without a close match,
    a small schema (an algorithm's hyperparameters, ``owner`` naming it) lists its keys instead.
    """
    leaves = [k for k, _, _ in describe(schema, prefix)]
    close = closest(key, leaves + sorted({k.rsplit(".", 1)[0] for k in leaves if "." in k[len(prefix):]}))
    if close:
        hint = f" (did you mean {close}?)"
    elif owner is not None:
        names = ", ".join(k[len(prefix):] for k in leaves)
        hint = f" ({owner}'s {prefix}* keys: {names})" if leaves else f" ({owner} has no {prefix}* keys)"
    else:
        hint = " (`pflalign list keys` lists them)"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _omegaconf_error(e: OmegaConfBaseException, prefix: str = "", schema: type | None = None,
                     owner: str | None = None) -> ConfigError:
    key = prefix + str(getattr(e, "full_key", "") or getattr(e, "key", "") or "")
    msg = (str(getattr(e, "msg", None) or e).splitlines() or [type(e).__name__])[0]
    if "not in" in msg or "Key" in type(e).__name__:
        return unknown_key(key, schema or Config, prefix, owner)
    section = re.search(r"(\w+) is not a subclass of (\w+)\. value: (.*)", msg)
    if not key and section:  # a whole section replaced by a scalar/list: OmegaConf names no key
        names = {f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""): f.name
                 for f in dataclasses.fields(Config)}
        name = names.get(section.group(2), section.group(2))
        return ConfigError(f"bad value for '{name}': expected a mapping of {name}.* keys, "
                           f"got {section.group(1)} {section.group(3)}")
    return ConfigError(f"bad value for '{key}': {msg}")


def _mismatch(base, other, prefix: str) -> str | None:
    """The first key where ``other`` puts a list over a mapping of ``base`` (or the reverse)."""
    for k in other if OmegaConf.is_dict(other) else ():
        if k not in base:
            continue
        a, b = base[k], other[k]
        if OmegaConf.is_dict(a) and OmegaConf.is_list(b) or OmegaConf.is_list(a) and OmegaConf.is_dict(b):
            return f"{prefix}{k}"
        if OmegaConf.is_dict(a) and OmegaConf.is_dict(b):
            found = _mismatch(a, b, f"{prefix}{k}.")
            if found:
                return found
    return None


def _merge(base, *others, prefix: str = "", owner: str | None = None):
    """``others`` merged onto the structured ``base``; ``owner`` names whose keys they are (errors)."""
    try:
        return OmegaConf.merge(base, *others)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, prefix, OmegaConf.get_type(base), owner) from None
    except TypeError as e:  # OmegaConf's "Cannot merge incompatible container types" names no key
        key = next((k for o in others if (k := _mismatch(base, o, prefix))), None)
        raise ConfigError(f"bad value for '{key or prefix.rstrip('.') or 'config'}': a list where a mapping "
                          f"belongs, or the reverse ({e})") from None


def parse_overrides(overrides: list[str]):
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"expected key=value, got '{bad[0]}'")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as e:  # noqa: BLE001 - OmegaConf, yaml and TypeError all say "cannot parse"
        first = (str(e).splitlines() or [type(e).__name__])[0]
    for i, o in enumerate(overrides):  # name the override that breaks it
        try:
            OmegaConf.from_dotlist([o])
        except Exception:  # noqa: BLE001
            raise ConfigError(f"cannot parse override '{o}': {first}") from None
        try:
            OmegaConf.from_dotlist(list(overrides[:i + 1]))
        except Exception:  # noqa: BLE001
            raise ConfigError(f"override '{o}' conflicts with an earlier one for the same key: {first}") from None
    raise ConfigError(f"cannot parse overrides: {first}")


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


# The packaged YAML files: presets (``--config NAME``) and sweeps (``--sweep NAME``).
PACKAGED = {"preset": "", "sweep": "sweeps"}


def packaged(kind: str = "preset") -> dict[str, Path]:
    """Name -> file of the presets or sweeps shipped in ``pflalign/configs/`` (package data).

    ``importlib.resources`` finds them wherever pflalign is installed (a wheel, an editable
    checkout); wheels install unpacked, so these are real files.
    """
    folder = resources.files(__package__) / "configs" / PACKAGED[kind]
    return {Path(f.name).stem: Path(str(f)) for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".yaml")}


def description(path: Path) -> str:
    """A packaged file's first comment line: what ``pflalign list configs`` shows."""
    first = next(iter(path.read_text().splitlines()), "")
    return first[1:].strip() if first.startswith("#") else ""


def find_file(value: str | Path, kind: str = "preset") -> Path:
    """``--config``/``--sweep`` value -> the file: an existing file wins (a local copy of a preset
    is used as given); else a bare name (no directory, no suffix) is a packaged preset or sweep.

    A miss names the packaged files and the closest of them, so the old
    ``configs/fmnist.yaml`` of a checkout gets "did you mean fmnist?".
    """
    path = Path(value)
    if path.is_file():
        return path
    shipped = packaged(kind)
    bare = path.name == str(value) and not path.suffix
    if bare and str(value) in shipped:
        return shipped[str(value)]
    close = difflib.get_close_matches(path.stem, list(shipped), n=1)
    hint = f"packaged {kind}s: {', '.join(shipped)}" + (f"; did you mean {close[0]}?" if close else "")
    label = "config" if kind == "preset" else kind
    what = f"{label} '{value}' is neither a file nor a packaged {kind}" if bare else f"{label} file not found: {value}"
    raise ConfigError(f"{what} ({hint})")


def load_config(config_file: str | Path | None = None, overrides: list[str] = (), *extra) -> Config:
    """Defaults <- YAML file (a path, or a packaged preset's name) <- extra mappings <- ``key=value``
    overrides, validated.

    The algorithm's hyperparameters (``algo.*``) are checked against its own dataclass, so
    ``algo.kappa=-1`` or ``algo.kappaa=1`` fail here, before any work starts.
    """
    layers = [read_yaml(find_file(config_file))] if config_file else []
    layers += [OmegaConf.create(dict(e)) for e in extra]
    layers.append(parse_overrides(list(overrides)))
    merged = _merge(OmegaConf.structured(Config), *layers)
    cfg: Config = OmegaConf.to_object(merged)
    cfg.algo = resolve_hparams(cfg.algorithm, cfg.algo)
    validate(cfg)
    check_holdout(cfg)
    check_names(cfg)
    check_paths(cfg)
    resolve_wandb_mode(cfg)
    return cfg


def check_holdout(cfg: Config) -> None:
    """Held-out clients must leave at least one client to train."""
    if cfg.data.holdout_clients >= cfg.data.num_clients:
        raise ConfigError(f"data.holdout_clients={cfg.data.holdout_clients} must be below data.num_clients="
                          f"{cfg.data.num_clients}: at least one client must train")


def check_names(cfg: Config) -> None:
    """Registry names that are otherwise only looked up after the data is built (and cached);
    a plug-in's import path or entry point is imported and checked here, before any work."""
    from .data import get_dataset
    from .models import get_model

    get_dataset(cfg.data.dataset)
    get_model(cfg.model.name)


def check_dir(key: str, value: str) -> None:
    """``value`` is a directory, or can be created: its nearest existing ancestor is a writable directory."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={value} is an existing file; it must be a directory (or a path that can be created)")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}={value} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={value} is not writable ({parent} does not allow writing)")


def check_paths(cfg: Config) -> None:
    """The run name and the directories a run writes, checked before anything is written.

    ``name`` must be one directory under ``out_dir``: ``a/b`` would fail mid-run and ``../x``
    would write outside ``out_dir``.
    """
    if cfg.name is not None and (not NAME_RE.fullmatch(cfg.name) or cfg.name in (".", "..")):
        raise ConfigError(f"name must be a single directory name of letters, digits and . _ - + = @ "
                          f"(at most 200, not starting with . or -), got {cfg.name!r}")
    for key, value in (("out_dir", cfg.out_dir), ("data.cache_dir", cfg.data.cache_dir),
                       ("ray.temp_dir", cfg.ray.temp_dir)):
        if value is not None:
            if "\0" in value:
                raise ConfigError(f"{key} must be a path without NUL characters, got {value!r}")
            check_dir(key, value)


def resolve_wandb_mode(cfg: Config) -> None:
    """Decide ``wandb.mode=auto`` now, before any directory exists (bounded network probe).

    The decision is stored in the config, so it travels to Ray actors, worker processes and
    ``config.yaml`` (a resumed run logs the same way). ``WANDB_MODE`` in the environment wins
    at run time, so nothing is decided (or probed) when it is set.
    """
    if os.environ.get("WANDB_MODE") or cfg.wandb.mode in ("offline", "disabled"):
        return
    from callbacks.wandb import decide_mode

    cfg.wandb.mode = decide_mode(cfg.wandb.mode)


def resolve_hparams(algorithm: str, values: Any):
    """The algorithm's hyperparameter dataclass filled from ``values`` (dict or instance)."""
    from .algorithms import get_algorithm

    cls = get_algorithm(algorithm).Hparams
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    merged = _merge(OmegaConf.structured(cls), OmegaConf.create(dict(values or {})), prefix="algo.", owner=algorithm)
    hp = OmegaConf.to_object(merged)
    validate(hp, prefix="algo.")
    return hp


def _check_finite(key: str, value: Any) -> None:
    """NaN compares false with everything, so it would pass any range check: refuse it first."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number (got {value})")


def _check_int64(key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_MAX - 1 <= value <= INT_MAX:
        raise ConfigError(f"{key} must fit in a signed 64-bit integer (got {value})")


def validate(obj: Any, prefix: str = "") -> None:
    """Range, choice and finiteness checks from each field's metadata; recurses into nested configs.

    Also run on algorithm hyperparameters (prefix ``algo.``), so every float key anywhere
    refuses NaN/inf and every string key refuses the empty string.
    """
    for f in dataclasses.fields(obj):
        value, key, meta = getattr(obj, f.name), prefix + f.name, f.metadata
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
            continue
        if isinstance(value, list):
            item_lo = meta.get("item_lo")
            for i, item in enumerate(value):
                _check_finite(f"{key}[{i}]", item)
                _check_int64(f"{key}[{i}]", item)
                if item_lo is not None and (isinstance(item, bool) or not isinstance(item, int) or item < item_lo):
                    raise ConfigError(f"{key} must be a list of integers >= {item_lo} (got {value})")
            continue
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"{key} must not be an empty string")
        if value is None or isinstance(value, (dict, str, bool)):
            choices = meta.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))} (got {value!r})")
            continue
        _check_finite(key, value)
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
            raise ConfigError(f"{key} must be {'>' if meta.get('lo_open') else '>='} {lo} (got {value})")
        if hi is not None and value > hi:
            raise ConfigError(f"{key} must be <= {hi} (got {value})")
        _check_int64(key, value)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def describe(cls=Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every key: feeds ``pflalign run --help`` and ``pflalign list``.

    A key with a fixed set of values ends its help with them, so nobody has to provoke an error
    to learn them.
    """
    rows = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            sub = f.default_factory
            rows += describe(sub, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_, choices = f.metadata.get("help", ""), f.metadata.get("choices")
        rows.append((prefix + f.name, default, f"{help_} [one of: {', '.join(map(str, choices))}]" if choices else help_))
    return rows
