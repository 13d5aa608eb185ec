"""Sweep files (a path, or the name of a packaged one: ``pflalign/configs/sweeps/*.yaml``) -> a
validated :class:`Sweep`, with no Ray involved.

Everything that can be wrong with a sweep (unknown key, a range outside a key's valid range,
a metric that reads the test split, no validation split) fails here, before Ray starts.
Validation resolves one experiment config per search-space key and bound through
``load_config``, so the schema of ``pflalign/config.py`` is the only schema.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pflalign.config import (NAME_RE, SEED_MAX, Config, find_file, load_config, packaged, parse_overrides, read_yaml,
                             to_dict)
from pflalign.errors import ConfigError

# What a sweep may select on: validation metrics only (val_acc_last10: mean of the last 10
# evaluations, computed by callbacks.tune.TuneReporter). Test metrics are for reporting.
VAL_METRICS = ("val_acc", "val_acc_last10", "val_loss", "global_val_acc")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
SCHEDULERS = {"asha": {"grace_period": 10, "reduction_factor": 2}, "fifo": {}}
KEYS = {"name", "config", "base", "space", "metric", "mode", "num_samples", "scheduler",
        "resources", "seed", "fault_round", "include_defaults"}


@dataclass
class Sweep:
    name: str
    cfg: Config                    # the base experiment, validated
    space: dict[str, str]          # config key -> "loguniform(0.1, 10)" (defaults resolved)
    metric: str = "val_acc_last10"
    mode: str = "max"
    num_samples: int = 8
    scheduler: dict = field(default_factory=lambda: {"name": "asha", **SCHEDULERS["asha"]})
    resources: dict = field(default_factory=lambda: {"cpus": 1, "gpus": 0})
    seed: int = 0                  # seed of the search (which configs are sampled)
    include_defaults: bool = False  # the first trial runs the base config's values (one of num_samples)
    fault_round: int | None = None  # testing: the first trial to reach this round fails, once

    @property
    def base(self) -> dict:
        return to_dict(self.cfg)

    def defaults(self) -> list[dict]:
        """Tune's ``points_to_evaluate``: the base config's value of every searched key, so a
        sweep never selects something worse on validation than the defaults it started from.
        A key whose default is derived (null, e.g. Ditto's personal_lr = train.lr) is sampled."""
        if not self.include_defaults:
            return []
        flat = flatten(self.base)
        return [{key: flat[key] for key in self.space if flat[key] is not None}]

    def to_yaml(self) -> str:
        """A self-contained sweep file (``base`` fully resolved): ``--resume`` reads it back."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "cfg"}
        return OmegaConf.to_yaml(OmegaConf.create({**d, "base": self.base}))


def parse_distribution(key: str, spec: Any) -> tuple[str, list]:
    """``"loguniform(0.1, 10)"`` -> ``("loguniform", [0.1, 10])``, arguments checked."""
    m = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", spec) if isinstance(spec, str) else None
    if not m or m.group(1) not in DISTRIBUTIONS:
        raise ConfigError(f"sweep space '{key}': expected one of {', '.join(d + '(...)' for d in DISTRIBUTIONS)} "
                          f"or 'default', got {spec!r} (fixed values belong under base:)")
    name = m.group(1)
    try:
        args = yaml.safe_load(f"[{m.group(2)}]")
    except yaml.YAMLError:
        raise ConfigError(f"sweep space '{key}': cannot parse arguments of {spec!r}") from None
    if name in ("choice", "grid"):
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            raise ConfigError(f"sweep space '{key}': {name} takes one non-empty list, e.g. {name}([a, b])")
        return name, args
    numbers = len(args) == 2 and all(_is_number(a) for a in args)
    if not numbers or not args[0] < args[1] or (name == "loguniform" and args[0] <= 0) \
            or (name == "randint" and not all(isinstance(a, int) for a in args)):
        need = {"uniform": "lo < hi", "loguniform": "0 < lo < hi", "randint": "integers lo < hi"}[name]
        raise ConfigError(f"sweep space '{key}': {name}(lo, hi) needs {need} (finite numbers), got {spec!r}")
    return name, args


def _is_number(value: Any) -> bool:
    """A finite int or float (bool is an int to Python, but never a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bounds(name: str, args: list) -> list:
    """The values a distribution can reach at its extremes (randint's upper bound is exclusive)."""
    if name in ("choice", "grid"):
        return list(args[0])
    return [args[0], args[1] - 1] if name == "randint" else list(args)


def nest(flat: dict) -> dict:
    """``{"algo.kappa": 1}`` -> ``{"algo": {"kappa": 1}}``."""
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _find(path: str, sweep_file: Path) -> Path:
    """A base config file relative to the sweep file first, then to the cwd, then a packaged
    preset's name (``config: default``: what the packaged sweeps use, wherever they are installed)."""
    beside = sweep_file.parent / path
    if beside.is_file():
        return beside
    presets = packaged("preset")
    if Path(path).is_file() or path in presets:
        return find_file(path)
    raise ConfigError(f"sweep {sweep_file}: base config '{path}' not found (relative to the sweep file or the cwd; "
                      f"packaged presets: {', '.join(presets)})")


def _absolute(cfg: Config) -> None:
    """Trials run in Tune's per-trial working directory: relative paths must not depend on it."""
    for attr in ("cache_dir", "root"):
        p = getattr(cfg.data, attr)
        if p and not os.path.isabs(p) and not p.startswith("~"):
            setattr(cfg.data, attr, os.path.abspath(p))


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read and validate a sweep file (or packaged sweep, by name); ``sweep.KEY=VALUE`` overrides
    sweep keys, others the base."""
    path = find_file(path, "sweep")
    raw = OmegaConf.to_container(read_yaml(path))
    sweep_over = [o[len("sweep."):] for o in overrides if o.startswith("sweep.")]
    if sweep_over:
        try:
            raw = OmegaConf.to_container(OmegaConf.merge(raw, parse_overrides(sweep_over)))
        except (OmegaConfBaseException, TypeError, ValueError) as e:
            raise ConfigError(f"cannot apply sweep overrides {' '.join(sweep_over)} to {path}: "
                              f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    unknown = sorted(set(raw) - KEYS, key=str)
    if unknown:
        raise ConfigError(f"unknown sweep key '{unknown[0]}' in {path} (keys: {', '.join(sorted(KEYS))})")
    _check_types(raw, path)
    config, base = raw.get("config"), raw.get("base") or {}
    if isinstance(base, str):  # `base: ../default.yaml` names a file
        config, base = base, {}
    cfg = load_config(_find(config, path) if config else None,
                      [o for o in overrides if not o.startswith("sweep.")], nest(flatten(base)))
    _absolute(cfg)
    sweep = Sweep(name=str(raw.get("name") or path.stem), cfg=cfg, space=dict(raw.get("space") or {}))
    for key in ("metric", "num_samples", "seed", "fault_round", "include_defaults"):
        if key in raw:
            setattr(sweep, key, raw[key])
    sweep.mode = raw.get("mode") or ("min" if sweep.metric.endswith("loss") else "max")
    sweep.scheduler = _scheduler(raw.get("scheduler", "asha"), cfg.rounds)
    sweep.resources = {**sweep.resources, **(raw.get("resources") or {})}
    validate(sweep)
    return sweep


# sweep key -> (what it must be, test); None is "absent" for every key
_TYPES = {
    "name": ("a string", lambda v: isinstance(v, str)),
    "config": ("a path (string) to a base config file", lambda v: isinstance(v, str) and bool(v.strip())),
    "base": ("a mapping of config keys, or a config file path", lambda v: isinstance(v, (dict, str))),
    "space": ("a mapping of config key -> distribution", lambda v: isinstance(v, dict)
              and all(isinstance(k, str) for k in v)),
    "metric": ("a string", lambda v: isinstance(v, str)),
    "mode": ("max or min", lambda v: v in ("max", "min")),
    "num_samples": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "seed": (f"an integer in 0..{SEED_MAX}", lambda v: _is_int(v) and 0 <= v <= SEED_MAX),
    "fault_round": ("an integer >= 1 (testing) or null", lambda v: _is_int(v) and v >= 1),
    "include_defaults": ("true or false", lambda v: isinstance(v, bool)),
    "scheduler": ("a scheduler name or a mapping with name:", lambda v: isinstance(v, (str, dict))),
    "resources": ("a mapping {cpus: >0, gpus: >=0}", lambda v: isinstance(v, dict)),
}


def _check_types(raw: dict, path: Path) -> None:
    """The shape of each sweep key, so a wrong type is one line naming the key, not a traceback."""
    for key, (need, ok) in _TYPES.items():
        if raw.get(key) is not None and not ok(raw[key]):
            raise ConfigError(f"sweep {key} must be {need} (got {raw[key]!r}, in {path})")


def _scheduler(spec: Any, rounds: int) -> dict:
    spec = {"name": spec} if isinstance(spec, str) else dict(spec or {})
    name = spec.pop("name", "asha")
    if name not in SCHEDULERS:
        raise ConfigError(f"sweep scheduler must be one of {', '.join(SCHEDULERS)} (got {name!r})")
    bad = sorted(set(spec) - set(SCHEDULERS[name]), key=str)
    if bad:
        raise ConfigError(f"unknown key '{bad[0]}' for scheduler {name}")
    out = {"name": name, **SCHEDULERS[name], **spec}
    if name == "asha":
        if not _is_int(out["grace_period"]) or out["grace_period"] < 1:
            raise ConfigError(f"sweep scheduler grace_period must be an integer >= 1 (rounds), "
                              f"got {out['grace_period']!r}")
        if not _is_number(out["reduction_factor"]) or out["reduction_factor"] <= 1:
            raise ConfigError(f"sweep scheduler reduction_factor must be a finite number > 1, "
                              f"got {out['reduction_factor']!r}")
        out["grace_period"] = min(out["grace_period"], rounds)  # rounds, like ASHA's time_attr
    return out


def default_range(sweep: Sweep, key: str) -> str:
    """``algo.<name>: default`` -> the ``sweep=`` range declared by the algorithm's dataclass."""
    if key.startswith("algo."):
        for f in dataclasses.fields(type(sweep.cfg.algo)):
            if f.name == key[5:] and f.metadata.get("sweep"):
                return f.metadata["sweep"]
    raise ConfigError(f"sweep space '{key}': no default range for this key; give one, e.g. uniform(lo, hi)")


def validate(sweep: Sweep) -> None:
    """Refuse test metrics and empty validation splits; resolve every key's bounds via the schema."""
    if sweep.metric not in VAL_METRICS:
        reads = "reads the test split" if not sweep.metric.startswith(("val_", "global_val_")) else "is unknown"
        raise ConfigError(f"sweep metric '{sweep.metric}' {reads}: a sweep selects on validation "
                          f"({', '.join(VAL_METRICS)})")
    if not NAME_RE.fullmatch(sweep.name) or sweep.name in (".", ".."):
        raise ConfigError(f"sweep name {sweep.name!r} must be a single directory name of letters, digits and "
                          f". _ - + = @ (not starting with . or -); set name: in the sweep file")
    if sweep.mode not in ("max", "min"):
        raise ConfigError(f"sweep mode must be max or min (got {sweep.mode!r})")
    if sweep.cfg.data.val_fraction <= 0:
        raise ConfigError("data.val_fraction is 0: a sweep selects on a validation split; "
                          "set data.val_fraction (e.g. 0.2) under base: or on the command line")
    if not isinstance(sweep.num_samples, int) or sweep.num_samples < 1:
        raise ConfigError(f"sweep num_samples must be an integer >= 1 (got {sweep.num_samples!r})")
    if not isinstance(sweep.include_defaults, bool):
        raise ConfigError(f"sweep include_defaults must be true or false (got {sweep.include_defaults!r})")
    res = sweep.resources
    numbers = all(_is_number(v) and v >= 0 for v in res.values())
    if set(res) - {"cpus", "gpus"} or not numbers or not (res["cpus"] > 0 or res["gpus"] > 0):
        raise ConfigError(f"sweep resources must be {{cpus: >0, gpus: >=0}} (got {res})")
    if not sweep.space:
        raise ConfigError("sweep space is empty: name at least one key to search over")
    for key, spec in list(sweep.space.items()):
        if key == "algorithm":
            raise ConfigError("a sweep tunes one algorithm; compare algorithms with `pflalign compare`")
        if spec == "default":
            sweep.space[key] = spec = default_range(sweep, key)
        name, args = parse_distribution(key, spec)
        for value in bounds(name, args):
            try:
                load_config(None, [], sweep.base, nest({key: value}))
            except ConfigError as e:
                raise ConfigError(f"sweep space '{key}: {spec}': {e}") from None
        if sweep.include_defaults and name == "grid":
            raise ConfigError(f"sweep space '{key}': include_defaults needs sampled keys, not grid(...)")
