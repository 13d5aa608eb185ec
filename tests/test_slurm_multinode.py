"""``slurm/ray-cluster.sbatch`` across two SLURM nodes, for real: a private SLURM of two slurmd
"machines" on this host (each with its own address, hostname and process table, and two GPUs
that SLURM's gres plugin hands out: see tests/slurm_helpers.py).

- A two-node ``pflalign run runtime=ray`` asking for ``--gpus=3 --mem-per-cpu``: Ray sees both
  nodes with their own share (CPUs, GPUs as SLURM split them, an object store sized on the
  job's memory), node 2 moves off its busy port block by itself, both nodes train clients
  (``PFLALIGN_TURN_LOG``), and metrics.jsonl is byte-identical to a local run.
- A requeue on two nodes: the time-limit signal (USR1 to the batch step, as
  ``--signal=B:USR1@120`` sends it) mid-run, SLURM requeues, the second attempt resumes from the
  checkpoint on two nodes, and metrics.jsonl equals an uninterrupted local run.

After each job nothing of it is left on either node (processes, temp dirs); after the module,
nothing of the cluster (daemons, namespaces, temp dir: checked by the fixture).

    python -m pytest -q -m slow tests/test_slurm_multinode.py
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import read_jsonl, run_cli
from slurm_helpers import DONE, SCRIPT, SUBNET, TINY, derived_ports, private_slurm, processes

pytestmark = pytest.mark.slow
HOLD_PORT = """
import socket, sys, time
s = socket.socket()
s.bind(("", int(sys.argv[1])))
s.listen()
print("holding", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def slurm():
    yield from private_slurm(nodes=2, gpus_per_node=2)


@pytest.fixture
def workspace(slurm):
    """A work dir inside the cluster's temp dir, and the environment jobs are submitted with."""
    work = slurm.base / f"work-{time.monotonic_ns()}"
    (work / "home").mkdir(parents=True)
    env = {**slurm.env, "HOME": str(work / "home"), "WANDB_MODE": "disabled",
           "PFL_RAY_TMP_BASE": str(slurm.base / "rt"), "PFLALIGN_TURN_LOG": str(work / "turns.jsonl"),
           "PATH": f"{Path(sys.executable).parent}:{slurm.env['PATH']}"}
    return work, env


def submit(slurm, work: Path, env: dict, *args: str) -> str:
    r = slurm.sh("sbatch", "--parsable", "-D", str(work), "-o", str(work / "job-%j.out"), *args, env=env)
    return r.stdout.strip().split(";")[0]


def wait_for(slurm, job: str, log: Path, ready: Callable[[dict], object], timeout: float) -> None:
    """Poll until ``ready(scontrol show job)``; a job that fails or runs out of time fails the test."""
    deadline = time.time() + timeout
    while not ready(info := slurm.job(job)):
        assert time.time() < deadline and info["JobState"] not in DONE - {"COMPLETED"}, \
            f"job {job}: {info['JobState']}\n{log.read_text() if log.exists() else ''}\n{slurm.logs()}"
        time.sleep(0.3)


def assert_nothing_left(slurm, job: str) -> None:
    time.sleep(1)
    left = processes([f"PFL_RAY_CLUSTER=slurm-{job}", f"SLURM_JOB_ID={job}"], cmd_part=f"/rayj-{job}")
    assert not left, f"job {job} left processes: {left}"
    assert not list((slurm.base / "rt").iterdir()), list((slurm.base / "rt").iterdir())


def test_one_run_over_two_nodes_gives_the_local_numbers(slurm, workspace, data_cache):
    work, env = workspace
    args = [*TINY, f"data.cache_dir={data_cache}"]
    # --hold: the job id first, so that node 2 can hold a port of the job's block before it starts
    job = submit(slurm, work, env, "--hold", "-N", "2", "-c", "1", "--gpus=3", "--mem-per-cpu=1000", "-J", "two",
                 str(SCRIPT), "pflalign", "run", "runtime=ray", *args, f"out_dir={work / 'runs'}", "name=two")
    busy = min(derived_ports(int(job))["node_manager"])
    holder = subprocess.Popen(slurm.on("n2", sys.executable, "-c", HOLD_PORT, str(busy)), stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"holding\n"
        slurm.sh("scontrol", "release", job)
        slurm.wait([job], timeout=240)
    finally:
        holder.kill()
        holder.wait()
    log = (work / f"job-{job}.out").read_text()
    info = slurm.job(job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), f"{log}\n{slurm.logs()}"

    # Ray saw both nodes, each with its own share of the job: 1 CPU, the GPUs SLURM gave it there
    # (3 over two nodes: 2 + 1), an object store of 30% of --mem-per-cpu x 1 CPU
    assert "Ray cluster up: 2 node(s), 2 CPUs, 3 GPUs" in log, log
    up = log.split("Ray cluster up: 2 node(s)")[1]
    nodes = re.findall(r"^  node (\S+) \((n\d)\): 1 CPUs, (\d) GPUs, object store 300 MiB$", up, re.M)
    assert sorted((ip, host) for ip, host, _ in nodes) == [(f"{SUBNET}.1", "n1"), (f"{SUBNET}.2", "n2")], log
    assert sorted(int(g) for *_, g in nodes) == [1, 2], log
    # the worker's GPUs are the devices SLURM bound to its step (CUDA_VISIBLE_DEVICES), not the head's
    count, ids = re.search(rf"\[ray-cluster {job} n2 [\d:]+\] this node: 1 CPU\(s\), (\d) GPU\(s\) \(([\d,]+)\)",
                           log).groups()
    assert len(ids.split(",")) == int(count) == dict((h, int(g)) for _, h, g in nodes)["n2"], log
    # node 2 found the job's block busy and took the next one; the head kept the job's own
    assert re.search(rf"\[ray-cluster {job} n2 [\d:]+\] port block at {busy - 3} is busy on this node", log), log
    assert f"gcs={busy - 3} " in log

    # both nodes trained clients; every sampled client once per round
    turns = read_jsonl(work / "turns.jsonl")
    assert {t["host"] for t in turns} == {"n1", "n2"}, turns
    assert len({t["node"] for t in turns}) == 2
    for rnd in (1, 2, 3):
        clients = [t["client"] for t in turns if t["round"] == rnd]
        assert clients and len(clients) == len(set(clients)), turns
    print("clients per node:", {h: sorted({t["client"] for t in turns if t["host"] == h}) for h in ("n1", "n2")})

    # the numbers are the local runtime's, byte for byte
    local = run_cli([*args, f"out_dir={work / 'runs'}", "name=local"])
    assert (work / "runs" / "two" / "metrics.jsonl").read_bytes() == (local / "metrics.jsonl").read_bytes()
    assert_nothing_left(slurm, job)


def test_requeue_on_two_nodes_resumes_to_the_same_numbers(slurm, workspace, data_cache):
    work, env = workspace
    rounds = 40  # 0.1-0.3 s each here: the signal lands well before the end
    args = [*TINY, f"data.cache_dir={data_cache}", f"rounds={rounds}", "checkpoint_every=1"]
    run = work / "runs" / "rq"
    job = submit(slurm, work, env, "--requeue", "-N", "2", "-c", "1", "-J", "rq", str(SCRIPT),
                 "--resume-dir", str(run), "pflalign", "run", "runtime=ray", *args)
    log = work / f"job-{job}.out"
    wait_for(slurm, job, log, lambda _: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size, 180)
    slurm.sh("scancel", "--signal=USR1", "--batch", job)  # what --signal=B:USR1@120 sends before the limit
    # requeued by the script, held back by SLURM for cred_expire (30 s here), then run again
    wait_for(slurm, job, log, lambda info: info["JobState"] == "COMPLETED" and info["Restarts"] == "1", 300)
    log = log.read_text()
    first, second = log.split(f"resuming {run} (restart 1)")
    assert "received SIGUSR1" in first and f"requeueing job {job}" in first, log
    stopped_at = int(re.search(r"interrupted at round (\d+)", first).group(1))
    assert 1 < stopped_at <= rounds, first  # after round 1's checkpoint, before the end
    assert "Ray cluster up: 2 node(s)" in first and "Ray cluster up: 2 node(s)" in second, log
    assert {t["host"] for t in read_jsonl(work / "turns.jsonl") if t["round"] > stopped_at} == {"n1", "n2"}

    uninterrupted = run_cli([*args, f"out_dir={work / 'runs'}", "name=local"])
    assert (run / "metrics.jsonl").read_bytes() == (uninterrupted / "metrics.jsonl").read_bytes()
    assert json.loads((run / "results.json").read_text())["rounds"] == rounds
    assert_nothing_left(slurm, job)
