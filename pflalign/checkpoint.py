"""Consistent round checkpoints whose cost is the model, the server state and the clients that
changed since the last one, in files that cannot execute code.

A checkpoint is ``checkpoint.json`` (the round, the experiment it belongs to, the server file
and each client's state version), ``server.<round>.safetensors`` (global model + server state)
and the per-client files ``states/<client>.<version>.safetensors`` it names. Every file it names
is on disk (synced) before ``checkpoint.json`` is atomically replaced, so a kill at any moment
leaves the previous checkpoint or the new one. The per-round history is not repeated in it:
``metrics.jsonl`` holds it, and a resume takes the checkpoint's rounds from there.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .config import to_dict
from .errors import InputError, RunStopped
from .serialize import atomic_write, load_tree, save_tree
from .store import STATES, state_file

CHECKPOINT = "checkpoint.json"
FORMAT = 2
METRICS = "metrics.jsonl"

# Keys a resumed run may change: where and how it executes and logs, and how long it runs.
# Everything else defines the numbers, so changing it mid-run would splice two experiments.
RESUMABLE = ("rounds", "progress", "checkpoint_every", "runtime", "ray.", "wandb.", "experiment", "label",
             "data.cache_dir", "state_store")
RESUMABLE_TEXT = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def experiment_identity(cfg) -> dict:
    """The dotted config keys that determine a run's numbers (all but the RESUMABLE ones)."""
    return identity_of(to_dict(cfg))


def identity_of(config: dict) -> dict:
    """``experiment_identity`` of a config already turned into a dict (e.g. read from results.json)."""
    return {k: v for k, v in _flat(config).items()
            if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE)}


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temp files of atomic writes a kill interrupted (the files they replace are intact)."""
    stale = [p for d in (Path(run_dir), Path(run_dir) / STATES) if d.is_dir() for p in d.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _server_file(rnd: int) -> str:
    return f"server.{rnd}.safetensors"


def write_checkpoint(run_dir: Path, fed) -> None:
    """Snapshot ``fed`` after its round ``fed.round`` (see the module docstring for the layout)."""
    run_dir = Path(run_dir)
    fed.states.write_changed(fed.runtime.fetch_states)
    server = _server_file(fed.round)
    save_tree(run_dir / server, {"global": fed.global_params, "server": fed.server_state}, fsync=False)
    os.sync()  # the state files the workers wrote and the server file, before the manifest names them
    write_json(run_dir / CHECKPOINT, {"format": FORMAT, "round": fed.round, "config": experiment_identity(fed.cfg),
                                      "server": server, "versions": fed.states.versions})
    fed.states.committed()
    for old in run_dir.glob("server.*.safetensors"):
        if old.name != server:
            old.unlink(missing_ok=True)


def load_checkpoint(run_dir: Path) -> dict | None:
    """The run's checkpoint as {round, config, versions, global, server}; None when it has none.

    InputError (naming the file) when a file is damaged, foreign, or holds anything but
    tensors, numbers, strings, lists and dicts.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not path.exists():
        if (run_dir / "checkpoint.pt").exists():
            raise InputError(f"{run_dir / 'checkpoint.pt'} is a checkpoint of pflalign < 0.2 (a pickle, which this "
                             "version never loads); finish that run with the version that started it")
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:120] or 'empty file'}") from None
    ok = (isinstance(manifest, dict) and manifest.get("format") == FORMAT and isinstance(manifest.get("round"), int)
          and isinstance(manifest.get("config"), dict) and isinstance(manifest.get("versions"), list)
          and all(v is None or isinstance(v, int) for v in manifest["versions"])
          and manifest.get("server") == _server_file(manifest["round"]))
    if not ok:
        raise InputError(f"cannot read checkpoint {path}: not a pflalign checkpoint of format {FORMAT}")
    for c, v in enumerate(manifest["versions"]):
        if v is not None and not state_file(run_dir / STATES, c, v).is_file():
            raise InputError(f"cannot resume from {path}: the state file it names, "
                             f"{state_file(run_dir / STATES, c, v)}, is missing")
    tree = load_tree(run_dir / manifest["server"])
    if not isinstance(tree, dict) or not {"global", "server"} <= set(tree):
        raise InputError(f"cannot read checkpoint {run_dir / manifest['server']}: not a pflalign server file")
    return {**manifest, "global": tree["global"], "server": tree["server"]}


def load_history(run_dir: Path, rounds: int) -> list[dict]:
    """The first ``rounds`` records of metrics.jsonl: the history a checkpoint continues."""
    path = Path(run_dir) / METRICS
    try:
        lines = path.read_text().splitlines()[:rounds]
        history = [json.loads(line) for line in lines]
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {str(e).splitlines()[0][:120]}") from None
    if len(history) < rounds or any(not isinstance(h, dict) or h.get("round") != i + 1 for i, h in enumerate(history)):
        raise InputError(f"{path} does not hold the {rounds} rounds its checkpoint has (damaged or edited)")
    return history


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The files of the run's current checkpoint (relative paths), metrics.jsonl included."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / CHECKPOINT).read_text())
    states = [state_file(Path(STATES), c, v) for c, v in enumerate(manifest["versions"]) if v is not None]
    return [Path(CHECKPOINT), Path(manifest["server"]), Path(METRICS), *states]


def copy_checkpoint(src: Path, dest: Path) -> None:
    """Copy the checkpoint of run directory ``src`` into ``dest`` (e.g. for Ray Tune to keep);
    copying it back into an empty run directory makes that run resumable from it."""
    for rel in checkpoint_files(src):
        (Path(dest) / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(src) / rel, Path(dest) / rel)


class Checkpointer:
    """Round callback: a checkpoint every ``every`` rounds and after the last.

    ``saved_round`` is the round of the newest checkpoint on disk (None: there is none), so a
    run that stops can say truthfully what it kept.
    """

    def __init__(self, run_dir: Path, every: int, saved_round: int | None = None):
        self.run_dir, self.every, self.saved_round = Path(run_dir), every, saved_round

    def kept(self) -> str:
        if self.saved_round is None:
            return "no checkpoint was written yet"
        return f"the checkpoint of round {self.saved_round} is kept"

    def save(self, fed) -> None:
        start = time.perf_counter()
        try:
            write_checkpoint(self.run_dir, fed)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise RunStopped(f"no space left on device (ENOSPC) writing the checkpoint in {self.run_dir} "
                             f"at round {fed.round} ({e.filename or 'a state file'}); {self.kept()}") from None
        self.saved_round = fed.round
        fed.timing["checkpoint_s"] = time.perf_counter() - start

    def on_run_start(self, fed) -> None:
        pass

    def on_round_end(self, fed, record: dict) -> None:
        if self.every and fed.round % self.every == 0:
            self.save(fed)

    def on_run_end(self, fed, results: dict) -> None:
        if self.saved_round != fed.round:
            self.save(fed)
