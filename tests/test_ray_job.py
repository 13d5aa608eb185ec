"""`ray job submit` to a real local cluster (slow: `python -m pytest -q -m slow`).

Starts a head on 127.0.0.1 with its own temp dir and HOME (Ray 2.60 writes its auth token
under $HOME/.ray), submits `pflalign run runtime=ray` through the Jobs API exactly as the
README says, checks results.json and that every listener of the cluster is on loopback, and
stops that cluster only (`ray start --block`, then SIGTERM): no cluster, token or temp files stay.
"""
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_ray_security import alive, instance_pids, is_loopback, listening_sockets, name, socket_inodes

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_cluster(temp_dir: str) -> None:
    """Last resort: kill what is left of this test's cluster only (`ray stop` would stop every
    Ray cluster of this user on the machine)."""
    for sig in ("TERM", "KILL"):
        subprocess.run(["pkill", f"-{sig}", "-f", temp_dir], capture_output=True)
        for _ in range(40):
            if subprocess.run(["pgrep", "-f", temp_dir], capture_output=True).returncode:
                break
            time.sleep(0.25)
    shutil.rmtree(temp_dir, ignore_errors=True)


def real_token_state() -> tuple | None:
    """The real user's token as (mode, mtime, size), None if absent: the test must not touch it."""
    try:
        st = (Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ray" / "auth_token").stat()
    except OSError:
        return None
    return st.st_mode, st.st_mtime_ns, st.st_size


@pytest.mark.slow
def test_ray_job_submit_runs_pflalign(tmp_path):
    real_token = real_token_state()
    temp_dir = tempfile.mkdtemp(prefix="pfj-", dir="/tmp")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["HOME"] = str(home)  # the token lives in $HOME/.ray/auth_token: the test's own HOME
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keeps 127.0.0.1 (else: the external address)
    client_env = {**env, "RAY_AUTH_MODE": "token"}  # clients must ask for token auth
    gcs, dash = free_port(), free_port()
    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    out_dir, cache = tmp_path / "runs", tmp_path / "cache"
    head_log = tmp_path / "head.log"
    head = None
    try:
        # With a token present, `ray start --head` enables token auth (without one it starts open).
        subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                       umask=0o077)
        with open(head_log, "w") as log:  # --block: this process owns the cluster; SIGTERM stops it
            head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                                     f"--port={gcs}", "--num-cpus=2", f"--temp-dir={temp_dir}",
                                     "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                     f"--dashboard-port={dash}", "--disable-usage-stats"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(240):
            if "block forever" in head_log.read_text() or head.poll() is not None:
                break
            time.sleep(0.5)
        assert head.poll() is None, head_log.read_text()[-3000:]
        submit = [ray_bin, "job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={ROOT}",
                  "--runtime-env-json", json.dumps({"excludes": [".venv", "runs", ".git"]}), "--",
                  sys.executable, "-m", "pflalign.cli", "run", "runtime=ray", "data.dataset=digits",
                  "data.num_clients=4", "rounds=2", "model.hidden=[16]", "wandb.mode=disabled",
                  f"out_dir={out_dir}", f"data.cache_dir={cache}"]
        for _ in range(30):  # the job agent comes up a few seconds after the head
            job = subprocess.run(submit, env=client_env, capture_output=True, text=True, timeout=400)
            if "No available agent" not in job.stderr + job.stdout:
                break
            time.sleep(2)
        assert job.returncode == 0, "\n".join((job.stdout + job.stderr).splitlines()[-40:])
        results = json.loads(next(out_dir.glob("*/results.json")).read_text())
        assert results["rounds"] == 2 and 0 <= results["final"]["acc"] <= 1
        assert results["config"]["runtime"] == "ray"

        socks = listening_sockets()
        listeners = [(pid, socks[inode]) for pid in instance_pids(head.pid, str(home))
                     for inode in socket_inodes(pid) if inode in socks]
        exposed = [f"{name(pid)} (pid {pid}) on {addr}:{port}" for pid, (addr, port) in listeners
                   if not is_loopback(addr)]
        assert not exposed, "listeners of the cluster off loopback:\n" + "\n".join(exposed)
        assert {Path(name(pid)).name for pid, _ in listeners} >= {"gcs_server", "raylet"}  # not vacuous
    finally:
        if head is not None and head.poll() is None:
            head.send_signal(signal.SIGTERM)  # the recipe's `kill $HEAD`: this cluster only
            try:
                head.wait(timeout=90)
            except subprocess.TimeoutExpired:
                head.kill()
        left: set[int] = set()
        for _ in range(60):  # workers exit shortly after the raylet
            left = {p for p in instance_pids(head.pid, str(home)) if alive(p)} if head else set()
            if not left:
                break
            time.sleep(0.25)
        stop_cluster(temp_dir)
    token = home / ".ray" / "auth_token"
    assert token.exists() and not token.stat().st_mode & 0o077  # the token went to the test's HOME ...
    assert real_token_state() == real_token  # ... and the real one, if any, was not touched
    assert not left, f"Ray processes left behind after SIGTERM to the head: {sorted(left)}"
    assert subprocess.run(["pgrep", "-f", temp_dir], capture_output=True).returncode  # none now
