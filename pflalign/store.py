"""Client-state stores: where each client's persistent state lives between its turns.

The federation keeps one small *handle* per client and sends it with the client's turn; the
worker that runs the turn turns the handle into the state (``load``) and the new state into a
new handle (``save``). So no process ever needs every client's state at once:

- ``memory``: the handle is the state itself (on Ray, an object-store ref the driver owns).
  For small federations: nothing touches the disk between checkpoints.
- ``disk``: the handle is a version number; the state is ``states/<client>.<version>.safetensors``
  in the run directory, written and read by the worker itself (on a cluster the run directory
  must be on a filesystem every node sees, as SLURM home/scratch directories are).

Versions are the round that wrote them. A checkpoint records each client's version; a newer
file is kept until the next checkpoint, so at most two versions of a client exist on disk.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .serialize import load_tree, save_tree

STATES = "states"
_STATE_FILE = re.compile(r"^(\d+)\.(\d+)\.safetensors$")
MODEL_COPIES = 4  # model-sized tensors a client keeps at most (pFLAlign: theta, m, v, Gamma)


def state_file(root: Path, client: int, version: int) -> Path:
    return Path(root) / f"{client}.{version}.safetensors"


def state_files(root: Path) -> dict[tuple[int, int], Path]:
    """(client, version) -> path of every state file under ``root``."""
    out = {}
    if Path(root).is_dir():
        for p in Path(root).iterdir():
            m = _STATE_FILE.match(p.name)
            if m:
                out[int(m.group(1)), int(m.group(2))] = p
    return out


class MemoryIO:
    """Worker side of the memory store: the handle is the state."""

    kind = "memory"

    def load(self, client: int, handle: Any) -> dict:
        return {} if handle is None else handle

    def save(self, client: int, version: int, state: dict) -> Any:
        return state or None


class DiskIO:
    """Worker side of the disk store: one file per (client, version), no fsync per turn (the
    checkpoint syncs once before it commits)."""

    kind = "disk"

    def __init__(self, root: Path):
        self.root = Path(root)

    def load(self, client: int, handle: Any) -> dict:
        return {} if handle is None else load_tree(state_file(self.root, client, handle))

    def save(self, client: int, version: int, state: dict) -> int | None:
        if not state:
            return None
        self.root.mkdir(exist_ok=True)
        save_tree(state_file(self.root, client, version), state, fsync=False)
        return version


def estimate_bytes(num_clients: int, model_bytes: int) -> int:
    return num_clients * model_bytes * MODEL_COPIES


def available_memory() -> int:
    """MemAvailable of /proc/meminfo (bytes); the physical memory where that is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_kind(requested: str, num_clients: int, model_bytes: int) -> str:
    """``auto``: disk once the states could take over 1 GiB or a quarter of the free memory."""
    if requested != "auto":
        return requested
    need = estimate_bytes(num_clients, model_bytes)
    return "disk" if need > min(2**30, available_memory() // 4) else "memory"


class ClientStates:
    """The federation's side: a handle and a version per client, and what changed since the
    last checkpoint (so a checkpoint costs the clients that changed, not all of them)."""

    def __init__(self, io: MemoryIO | DiskIO, num_clients: int, root: Path | None):
        self.io, self.root = io, Path(root) if root is not None else None
        self.handles: list[Any] = [None] * num_clients
        self.versions: list[int | None] = [None] * num_clients
        self.saved: list[int | None] = [None] * num_clients  # versions in the last checkpoint
        self.dirty: set[int] = set()

    @property
    def kind(self) -> str:
        return self.io.kind

    def __len__(self) -> int:
        return len(self.handles)

    def jobs(self, clients: list[int]) -> list[tuple[int, Any]]:
        return [(c, self.handles[c]) for c in clients]

    def update(self, client: int, version: int, handle: Any) -> None:
        """Record a client's new state; drop its previous file unless a checkpoint needs it."""
        old = self.versions[client]
        self.handles[client] = handle
        self.versions[client] = version if handle is not None else None
        self.dirty.add(client)
        if self.kind == "disk" and old is not None and old not in (self.saved[client], self.versions[client]):
            state_file(self.root, client, old).unlink(missing_ok=True)

    def write_changed(self, fetch) -> None:
        """Memory store: write the states that changed since the last checkpoint to files
        (``fetch`` turns handles into states, e.g. ``ray.get``). The disk store has them already."""
        if self.kind != "memory":
            return
        changed = [c for c in sorted(self.dirty) if self.handles[c] is not None]
        if changed:
            self.root.mkdir(exist_ok=True)
        for c, state in zip(changed, fetch([self.handles[c] for c in changed])):
            save_tree(state_file(self.root, c, self.versions[c]), state, fsync=False)

    def committed(self) -> None:
        """A checkpoint naming the current versions is durable: drop the versions it replaced."""
        for c in self.dirty:
            old = self.saved[c]
            if old is not None and old != self.versions[c]:
                state_file(self.root, c, old).unlink(missing_ok=True)
            self.saved[c] = self.versions[c]
        self.dirty.clear()

    def restore(self, versions: list[int | None]) -> None:
        """Continue from a checkpoint's versions; files it does not name (written after it, or
        replaced but not yet deleted when the run stopped) are removed."""
        keep = {(c, v) for c, v in enumerate(versions) if v is not None}
        for key, path in state_files(self.root).items():
            if key not in keep:
                path.unlink(missing_ok=True)
        self.versions, self.saved = list(versions), list(versions)
        if self.kind == "disk":
            self.handles = list(versions)
        else:
            self.handles = [None if v is None else load_tree(state_file(self.root, c, v)) for c, v in enumerate(versions)]
        self.dirty.clear()
