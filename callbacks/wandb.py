"""Weights & Biases: one run per (algorithm, seed), grouped by experiment, job_type = algorithm.

Offline unless an API key is configured and the W&B host answers (``wandb sync
<run_dir>/wandb/offline-run-*`` later); ``WANDB_MODE`` in the environment wins over ``wandb.mode``.

``auto`` and ``online`` are decided by :func:`decide_mode` when the config is loaded, before any
directory exists: without it, ``wandb.init`` with a key and no network waits about two minutes
and then fails mid-run. The check is one TCP connect to the configured host, at most
``PROBE_TIMEOUT_S``, done once per process.
"""
from __future__ import annotations

import netrc
import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from pflalign.config import to_dict
from pflalign.errors import ConfigError
from pflalign.plugins import short_name

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 2.0
_reachable: dict[tuple[str, int], bool] = {}  # (host, port) -> answered, per process


def base_url() -> str:
    """The W&B server in use: ``WANDB_BASE_URL`` (as wandb reads it) or the public cloud."""
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def host_port(url: str) -> tuple[str, int]:
    """``https://api.wandb.ai`` -> ``("api.wandb.ai", 443)``; a malformed URL is bad input."""
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        port = parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:
        parts, port = None, None
    if parts is None or not parts.hostname:
        raise ConfigError(f"WANDB_BASE_URL={url!r} is not a URL like https://api.wandb.ai")
    return parts.hostname, port


def resolve_mode(mode: str) -> str:
    """The mode a W&B run starts in: ``WANDB_MODE`` wins, then ``mode`` (auto decided here)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode in ("auto", "online"):
        return decide_mode(mode)
    return mode


def has_api_key() -> bool:
    """``WANDB_API_KEY``, or a ``~/.netrc`` entry for the configured host (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host_port(base_url())[0]) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included:
    the connect runs in a daemon thread, since name resolution ignores socket timeouts)."""
    if (host, port) not in _reachable:
        answered = threading.Event()

        def probe() -> None:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                answered.set()
            except OSError:
                pass

        threading.Thread(target=probe, name="wandb-probe", daemon=True).start()
        _reachable[host, port] = answered.wait(timeout)
    return _reachable[host, port]


def decide_mode(mode: str) -> str:
    """``auto`` -> ``online`` when a key is set and the host answers, else ``offline`` (with one
    warning on stderr when a key is set); ``online`` without either is refused (ConfigError)."""
    if mode not in ("auto", "online"):
        return mode
    url = base_url()
    host, port = host_port(url)
    if not has_api_key():
        if mode == "online":
            raise ConfigError("wandb.mode=online needs a W&B API key (WANDB_API_KEY or `wandb login`); "
                              "use wandb.mode=auto or offline")
        return "offline"
    first = (host, port) not in _reachable
    if reachable(host, port):
        return "online"
    if mode == "online":
        raise ConfigError(f"wandb.mode=online: the W&B host {host}:{port} ({url}) did not answer within "
                          f"{PROBE_TIMEOUT_S:g} s; use wandb.mode=offline (then `wandb sync`) or auto")
    if first:
        print(f"pflalign: warning: wandb.mode=auto: the W&B host {host}:{port} did not answer within "
              f"{PROBE_TIMEOUT_S:g} s; logging offline (upload later with `wandb sync`)", file=sys.stderr)
    return "offline"


class WandbLogger:
    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir, self.run = cfg, Path(run_dir), None

    def on_run_start(self, fed) -> None:
        import wandb

        cfg = self.cfg
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.experiment, job_type=short_name(cfg.algorithm),
            name=self.run_dir.name, id=self.run_dir.name.replace("/", "-")[-64:], resume="allow",
            config=to_dict(cfg), dir=str(self.run_dir), mode=resolve_mode(cfg.wandb.mode),
            tags=[short_name(cfg.algorithm), short_name(cfg.data.dataset), f"seed{cfg.seed}"])  # W&B: <= 64 chars
        if fed.round == 0:
            from pflalign.plots import partition_heatmap
            fig = partition_heatmap(fed.data.histograms("train"), shift=fed.data.info.get("feature_shift"))
            self.run.log({"partition": wandb.Image(fig)}, step=0)

    def on_round_end(self, fed, record: dict) -> None:
        import wandb

        row = {k: v for k, v in record.items() if not isinstance(v, list)}
        row.update({f"time/{k}": v for k, v in fed.timing.items() if k != "round"})  # timings.jsonl's row
        if "client_acc" in record:
            row["client_acc"] = wandb.Histogram(record["client_acc"])
        self.run.log(row, step=record["round"])

    def on_run_end(self, fed, results: dict) -> None:
        flat = {k: v for k, v in results.items() if not isinstance(v, dict)}
        flat.update({f"final/{k}": v for k, v in results.get("final", {}).items()})
        self.run.summary.update(flat)
        self.run.finish()
