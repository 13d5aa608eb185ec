"""Weights & Biases: one run per (algorithm, seed), grouped by comparison, job_type = label.

Group (:func:`wandb_group`): a ``compare``'s runs share their ``compare-<time>`` directory's
name, a sweep's trials their sweep directory's name (``tune`` sets it as their experiment), so
two comparisons or two sweeps from the same file never merge; a plain run's group is
``experiment``. job_type is the variant label (the algorithm unless ``label=`` is set). Each
evaluation logs a per-client table (client, accuracy, test size) beside the histogram; the run
keeps config.yaml, partition.json, metrics.jsonl and results.json (uploaded when it ends, also
from offline runs by ``wandb sync``) and has wall time, command and git commit in its summary.

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
import re
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from pflalign.config import to_dict
from pflalign.errors import ConfigError
from pflalign.plugins import short_name

DEFAULT_BASE_URL = "https://api.wandb.ai"
COMPARE_DIR = re.compile(r"compare-\d{8}-\d{6}(-\d+)?")  # pflalign.compare.plan: out_dir/compare-<time>[-i]
FILES = ("config.yaml", "partition.json", "metrics.jsonl")  # results.json: once written (on_results)
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


def wandb_group(experiment: str, out_dir: str) -> str:
    """The W&B group of a run: its compare directory's name for a ``compare`` run (unique per
    comparison), else its ``experiment`` (a sweep's trials: the sweep directory's name)."""
    name = Path(out_dir).name
    return name if COMPARE_DIR.fullmatch(name) else experiment


class WandbLogger:
    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir, self.run = cfg, Path(run_dir), None
        self.test_sizes: list[int] = []

    def on_run_start(self, fed) -> None:
        import wandb

        cfg = self.cfg
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, group=wandb_group(cfg.experiment, cfg.out_dir),
            job_type=(cfg.label or short_name(cfg.algorithm))[:64], name=self.run_dir.name,
            id=self.run_dir.name.replace("/", "-")[-64:], resume="allow", config=to_dict(cfg), dir=str(self.run_dir),
            mode=resolve_mode(cfg.wandb.mode),
            tags=[short_name(cfg.algorithm), short_name(cfg.data.dataset), f"seed{cfg.seed}"])  # W&B: <= 64 chars
        sizes = fed.data.summary()["sizes"]
        self.test_sizes = sizes["test"]
        if fed.round == 0:
            from pflalign.plots import partition_heatmap, pyplot
            fig = partition_heatmap(fed.data.histograms("train"), shift=fed.data.info.get("feature_shift"), sizes=sizes)
            self.run.log({"partition": wandb.Image(fig)}, step=0)
            pyplot().close(fig)

    def on_round_end(self, fed, record: dict) -> None:
        import wandb

        row = {k: v for k, v in record.items() if not isinstance(v, list)}
        row.update({f"time/{k}": v for k, v in fed.timing.items() if k != "round"})  # timings.jsonl's row
        if "client_acc" in record:
            row["client_acc"] = wandb.Histogram(record["client_acc"])
            clients = fed.eval_clients(fed.sample(record["round"] - 1))  # whom the evaluation covered, in order
            row["clients"] = wandb.Table(columns=["client", "accuracy", "test size"],
                                         data=[[c, a, self.test_sizes[c]] for c, a in zip(clients, record["client_acc"])])
        self.run.log(row, step=record["round"])

    def on_run_end(self, fed, results: dict) -> None:
        from .tune import tune_metrics

        flat = {k: v for k, v in results.items() if not isinstance(v, dict)}
        flat.update({f"final/{k}": v for k, v in results.get("final", {}).items()})
        if fed.history and "val_acc_last10" in (last := tune_metrics(fed, fed.history[-1])):
            flat["val_acc_last10"] = last["val_acc_last10"]  # what a sweep selects on
        self.run.summary.update(flat)
        for name in FILES:
            self.run.save(str(self.run_dir / name), base_path=str(self.run_dir), policy="end")

    def on_results(self, fed, results: dict) -> None:
        """After results.json is written: its wall time, command and commit, the file, and the end."""
        git = results.get("git") or {}
        self.run.summary.update({"wall_time_s": results.get("wall_time_s"), "command": results.get("command"),
                                 "git_commit": git.get("commit"), "git_dirty": git.get("dirty")})
        self.run.save(str(self.run_dir / "results.json"), base_path=str(self.run_dir), policy="end")
        self.run.finish()
