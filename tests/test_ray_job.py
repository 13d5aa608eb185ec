"""`ray job submit` to a real local cluster (slow: `python -m pytest -q -m slow`).

Starts a head on 127.0.0.1 with its own temp dir and HOME (Ray 2.60 writes its auth token
under $HOME/.ray), submits `pflalign run runtime=ray` through the Jobs API exactly as the
README says, checks results.json, and stops the cluster: no cluster, token or temp files stay.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_cluster(temp_dir: str) -> None:
    """Stop this test's cluster only (`ray stop` would stop every Ray on the machine)."""
    for sig in ("TERM", "KILL"):
        subprocess.run(["pkill", f"-{sig}", "-f", temp_dir], capture_output=True)
        for _ in range(40):
            if subprocess.run(["pgrep", "-f", temp_dir], capture_output=True).returncode:
                break
            time.sleep(0.25)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_runs_pflalign(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="pfj-", dir="/tmp")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["HOME"] = str(home)  # the token lives in $HOME/.ray/auth_token: the test's own HOME
    client_env = {**env, "RAY_AUTH_MODE": "token"}  # clients must ask for token auth
    gcs, dash = free_port(), free_port()
    ray_bin = shutil.which("ray")
    out_dir, cache = tmp_path / "runs", tmp_path / "cache"
    try:
        # With a token present, `ray start --head` enables token auth (without one it starts open).
        subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                        "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=120)
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
    finally:
        stop_cluster(temp_dir)
    assert (home / ".ray" / "auth_token").exists()  # the token went to the test's HOME ...
    assert not (Path.home() / ".ray" / "auth_token").exists() or Path.home() == home  # ... not the real one
    left = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.strip()
    assert not left, f"Ray processes left behind: {left}"
