"""Joining or starting the Ray cluster (no torch here: a local instance can start while the
engine's heavy imports load, see ``connected``)."""
from __future__ import annotations

import importlib
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import ray

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import RayConfig

DEFAULT_TEMP_DIR = f"/tmp/pflalign-ray-{os.getuid()}"  # per user: another user's would be refused


# Ray's single-node switch (off by default on macOS/Windows). Off, services.get_node_ip_address()
# is 127.0.0.1, so ray.init keeps _node_ip_address="127.0.0.1" (resolve_ip_for_localhost would
# otherwise swap in the machine's external address), and with a node IP of exactly 127.0.0.1
# gcs_server, raylet, workers, the agents, the dashboard and the metrics servers bind loopback.
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_SUBDIR = "ray"  # Ray's own temp dir inside ray.temp_dir: <temp_dir>/ray/session_latest


def _token_path() -> Path:
    """Where Ray 2.60 keeps this user's auth token (``$RAY_AUTH_TOKEN_PATH`` wins)."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def _private_dir(path: Path) -> None:
    """Make ``path`` a directory of this user that nobody else can enter.

    Ray 2.60 chmods its temp dir and the session, sockets, logs and runtime_resources dirs in it
    to 0777 whenever one of its processes starts, every worker included (``Node._init_temp`` ->
    ``try_make_directory_shared``), so those cannot stay owner-only; Ray's temp dir therefore
    goes one level below ``path``, which Ray never touches. A ``path`` another user owns (e.g.
    a pre-created ``/tmp/pflalign-ray``) could read or swap the instance's files: refused.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:  # a file, or a symlink to nowhere
        raise ConfigError(f"ray.temp_dir={path} exists and is not a directory") from None
    owners = {os.lstat(path).st_uid, os.stat(path).st_uid}  # the entry and, via a symlink, its target
    foreign = owners - {os.getuid()}
    if foreign:
        raise ConfigError(f"ray.temp_dir={path} belongs to another user (uid {min(foreign)}); "
                          "set ray.temp_dir to a directory of your own")
    os.chmod(path, 0o700)


@contextmanager
def _loopback_owner_only() -> Iterator[None]:
    """Scope for ``ray.init`` of a local instance: it listens on 127.0.0.1 only, writes owner-only.

    The processes ray.init spawns (gcs_server, raylet, then through the raylet the workers and
    agents) inherit the env var and the umask and keep them after this scope restores both here.
    They read ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when they import ray; this process imported ray
    already, so its copy (``ray_constants.ENABLE_RAY_CLUSTER``) is switched for the same time.
    umask 077 makes every file of the instance, and the auth token Ray generates, 0600.
    """
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(_SINGLE_NODE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_NODE_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    old_umask = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old_umask)
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_SINGLE_NODE_ENV, None)
        else:
            os.environ[_SINGLE_NODE_ENV] = old_env


def connect(rc: RayConfig) -> bool:
    """Join ``ray.address``/``$RAY_ADDRESS`` or start a local instance; True if we started one.

    A local instance is for this user on this machine: every listener is on 127.0.0.1, its
    temp dir is 0700, its files and the auth token are 0600. Token authentication stays as
    Ray sets it (on by default for a local instance). Ray's worker processes inherit the 077;
    pflalign's actors (driver, workers, Tune trials) set the user's umask back first thing,
    given at their creation, so what a run writes has the modes of ``runtime=local``. (Ray's
    ``worker_process_setup_hook`` could do it for every worker, but a job with a runtime_env
    cannot use the workers Ray pre-starts: each actor then cost seconds more to start.)
    """
    if ray.is_initialized():
        return False
    address = rc.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    temp_dir = Path(rc.temp_dir or DEFAULT_TEMP_DIR).expanduser().absolute()
    _private_dir(temp_dir)
    token = _token_path()
    if token.is_file() and token.stat().st_uid == os.getuid() and token.stat().st_mode & 0o077:
        os.chmod(token, 0o600)  # one made earlier (`ray get-auth-token --generate`) is 0644
    with _loopback_owner_only():
        ray.init(num_cpus=rc.local_cpus, include_dashboard=rc.dashboard, _node_ip_address="127.0.0.1",
                 _temp_dir=str(temp_dir / RAY_SUBDIR), log_to_driver=True)
    return True


@contextmanager
def connected(rc: RayConfig, *imports: str) -> Iterator[None]:
    """Ray for the scope: joined, or a local instance started here and shut down at the end (one
    already up is left as it is). ``imports`` load in a thread meanwhile: a local instance takes
    seconds to start, mostly waiting for its processes, which is when torch and the engine can
    load. (Only imports run alongside: ``connect`` holds the process umask at 077 meanwhile.)"""
    importer = threading.Thread(target=lambda: [importlib.import_module(m) for m in imports], daemon=True)
    importer.start()
    try:
        started = connect(rc)
    finally:
        importer.join()
    try:
        yield
    finally:
        if started:
            ray.shutdown()
