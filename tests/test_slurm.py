"""SLURM support: ``slurm/ray-cluster.sbatch`` and ``slurm/compare-array.sbatch``.

Fast (no SLURM): the port blocks of two jobs; ``ray-cluster.sbatch --dry-run`` under the SLURM
variables of GPU jobs requested in each of the four ways, of ``--exclusive`` nodes and of each
kind of memory limit (with a fake ``scontrol``; the cgroup case under a real memory cgroup),
checking what each node's ``ray start`` and worker ``srun`` get; the ``--resume-dir`` rules; the
compare grid the job array runs.

Slow, on a private one-node SLURM (tests/slurm_helpers.py; root):

- two jobs at once: A, a tiny ``pflalign run runtime=ray`` (must complete, with results.json);
  B, ``ray job submit`` of a script that waits until A has finished a round, so both jobs' Ray
  clusters run side by side on one node; then B is cancelled (``scancel``: the preemption
  path). Checks the results, the two jobs' port sets (as logged, equal to the derivation,
  disjoint), that no process of either job is left, that the temp dirs are gone and that no Ray
  auth token was written into HOME;
- ``compare-array.sbatch``: a 2 variants x 2 seeds array and its report job, with runs equal to
  ``pflalign compare``'s.

The two-node tests are in tests/test_slurm_multinode.py.

    python -m pytest -q tests/test_slurm.py; python -m pytest -q -m slow tests/test_slurm.py
"""
from __future__ import annotations

import importlib.util
import json
import os
import pwd
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pflalign.cli import main
from pflalign.config import load_config
from slurm_helpers import DONE, ROOT, SCRIPT, TINY, derived_ports, parse_ports, private_slurm, processes


def test_two_jobs_get_disjoint_port_sets():
    a, b = derived_ports(1001), derived_ports(1002)
    names = {"gcs", "client", "dashboard", "node_manager", "object_manager", "agent_listen",
             "agent_grpc", "runtime_env", "metrics", "workers"}
    assert set(a) == set(b) == names
    flat_a, flat_b = set().union(*a.values()), set().union(*b.values())
    assert sum(map(len, a.values())) == len(flat_a)  # no port used twice within a job
    assert not flat_a & flat_b
    assert all(20000 <= p <= 32767 for p in flat_a | flat_b)  # below the ephemeral range
    assert len(a["workers"]) >= 200
    assert derived_ports(1001) == a  # a function of the job id
    # Neighbouring ids never collide: the 49 blocks of the default range are all different.
    gcs = [min(derived_ports(j)["gcs"]) for j in range(5000, 5049)]
    assert len(set(gcs)) == 49


# --------------------------------------------------------------------------------------------
# What each node's `ray start` and worker srun get (--dry-run: no SLURM, no Ray), for the SLURM
# variables a job would have, with a fake scontrol that answers the template's questions.

FAKE_SCONTROL = r"""
import os, re, sys
args = sys.argv[1:]
def hostnames(expr):  # "g[1-2],h3" -> g1 g2 h3
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", expr):
        m = re.fullmatch(r"(.*)\[(\d+)-(\d+)\]", part)
        yield from ([f"{m[1]}{i}" for i in range(int(m[2]), int(m[3]) + 1)] if m else [part])
if args[:2] == ["show", "hostnames"]:
    print("\n".join(hostnames(args[2])))
elif args[:2] == ["show", "node"]:
    print(f"NodeName={args[2]} Arch=x86_64 NodeAddr=10.9.0.{args[2][1:]} State=ALLOCATED")
elif args[:3] == ["show", "job", "-d"]:
    print(os.environ.get("FAKE_JOB_DETAIL", ""))
"""
GPU_ENV = ("SLURM_GPUS", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK", "SLURM_TRES_PER_TASK", "SLURM_JOB_GPUS",
           "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES")
MiB = 2**20


@dataclass
class Launch:
    """``env [-u VAR]... [VAR=VALUE]... PROGRAM ARGS``, as the dry run prints it."""
    unset: set[str]
    env: dict[str, str]
    argv: list[str]

    @property
    def opts(self) -> dict[str, str]:
        return dict(a[2:].split("=", 1) for a in self.argv if a.startswith("--") and "=" in a)


def launch(line: str) -> Launch:
    argv = shlex.split(line)[1:]
    unset, env = set(), {}
    while argv[0] == "-u" or re.fullmatch(r"[A-Z_]+=.*", argv[0]):
        if argv[0] == "-u":
            unset.add(argv[1])
            argv = argv[2:]
        else:
            env.update([argv.pop(0).split("=", 1)])
    return Launch(unset, env, argv)


def dry_run(tmp_path: Path, env: dict[str, str], *args: str, code: int = 0, cgroup: Path | None = None) -> dict:
    """``ray-cluster.sbatch --dry-run ARGS`` in a job with ``env`` (inside ``cgroup``): {"command":
    argv, "head": Launch, "srun": {node: Launch}, "ray": {node: Launch}, "err": stderr}."""
    scontrol = tmp_path / "bin" / "scontrol"
    if not scontrol.exists():
        scontrol.parent.mkdir()
        scontrol.write_text(f"#!{sys.executable}\n{FAKE_SCONTROL}")
        scontrol.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PFL_RAY_", "CUDA_", "ROCR_", "GPU_"))}
    job = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "g1", "SLURMD_NODENAME": "g1", "SLURM_CPUS_ON_NODE": "1"}
    argv = ["bash", str(SCRIPT), "--dry-run", *args]
    if cgroup:
        argv = ["bash", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "-", *argv]
    r = subprocess.run(argv, capture_output=True, text=True,
                       env={**clean, **job, "PATH": f"{scontrol.parent}:{clean['PATH']}", **env})
    assert r.returncode == code, r.stderr
    out = {"srun": {}, "ray": {}, "err": r.stderr}
    for line in r.stdout.splitlines():
        if line.startswith("command: "):
            out["command"] = shlex.split(line[9:])
            continue
        role, node, rest = re.fullmatch(r"(head|worker) (\S+): (.*)", line).groups()
        start = launch(rest)
        if role == "head":
            out["head"] = start
        else:
            out["srun" if start.argv[0] == "srun" else "ray"][node] = start
    return out


TWO_NODES = {"SLURM_JOB_NODELIST": "g[1-2]", "SLURM_JOB_CPUS_PER_NODE": "8(x2)", "SLURM_CPUS_ON_NODE": "8"}


@pytest.mark.parametrize("env, detail, head_ids, worker_gpus", [
    pytest.param({"SLURM_JOB_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_GPUS_ON_NODE": "2"},
                 "Nodes=g[1-2] CPU_IDs=0-7 Mem=0 GRES=gpu:2(IDX:0-1)", "0,1", 2, id="gres=gpu:2"),
    pytest.param({"SLURM_GPUS": "3", "SLURM_JOB_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_GPUS_ON_NODE": "2"},
                 "Nodes=g1 CPU_IDs=0-7 Mem=0 GRES=gpu:2(IDX:0-1)\n     Nodes=g2 CPU_IDs=0-7 Mem=0 GRES=gpu:1(IDX:3)",
                 "0,1", 1, id="gpus=3 as 2+1"),
    pytest.param({"SLURM_GPUS_PER_NODE": "4", "SLURM_JOB_GPUS": "4,5,6,7", "CUDA_VISIBLE_DEVICES": "0,1,2,3",
                  "SLURM_GPUS_ON_NODE": "4"},
                 "Nodes=g[1-2] CPU_IDs=0-7 Mem=0 GRES=gpu:a100:4(IDX:4-7)", "0,1,2,3", 4, id="gpus-per-node=4 typed"),
    pytest.param({"SLURM_GPUS_PER_TASK": "1", "SLURM_TRES_PER_TASK": "gres:gpu:1", "SLURM_NTASKS_PER_NODE": "2",
                  "SLURM_JOB_GPUS": "2,3", "SLURM_GPUS_ON_NODE": "2"},  # a site that sets no CUDA_VISIBLE_DEVICES
                 "Nodes=g[1-2] CPU_IDs=0-7 Mem=0 GRES=gpu:2(IDX:2-3)", "2,3", 2, id="gpus-per-task=1 x 2 tasks"),
    pytest.param({"SLURM_GPUS": "3", "SLURM_GPUS_ON_NODE": "2"},  # gres without device files: counts only
                 "Nodes=g1 CPU_IDs=0-7 Mem=0 GRES=gpu:2\n     Nodes=g2 CPU_IDs=0-7 Mem=0 GRES=gpu:1", None, 1,
                 id="gpus=3, no device ids"),
    pytest.param({"SLURM_GPUS_ON_NODE": "2"}, "", None, 2, id="no per-node detail: as on the head"),
])
def test_every_node_gets_the_gpus_of_the_job_there(tmp_path, env, detail, head_ids, worker_gpus):
    run = dry_run(tmp_path, {**TWO_NODES, **env, "FAKE_JOB_DETAIL": f"   JOB_GRES=gpu\n     {detail}"})
    head, srun, ray = run["head"], run["srun"]["g2"], run["ray"]["g2"]
    assert head.opts["num-gpus"] == str(len(head_ids.split(",")) if head_ids else 2)
    assert head.env.get("CUDA_VISIBLE_DEVICES") == head_ids  # Ray uses exactly the job's devices
    # the worker step asks for its node's share itself: nothing inherited from the batch step counts
    assert srun.opts["gres"] == f"gpu:{worker_gpus}" and srun.opts["nodelist"] == "g2"
    assert srun.unset == {v for v in GPU_ENV if v in env}, srun.unset
    assert ray.opts["num-gpus"] == str(worker_gpus)
    assert ray.opts["address"] == f"10.9.0.1:{head.opts['port']}" and ray.opts["node-ip-address"] == "10.9.0.2"


def test_cpus_are_what_the_job_holds_on_each_node_even_exclusive(tmp_path):
    assert not re.search(r"^#SBATCH +(-c|--cpus-per-task)", SCRIPT.read_text(), re.M)  # no -c 4 on --exclusive
    run = dry_run(tmp_path, {"SLURM_JOB_NODELIST": "g[1-3]", "SLURM_JOB_CPUS_PER_NODE": "64,32(x2)",
                             "SLURM_CPUS_ON_NODE": "64"})  # --exclusive, no -c
    assert run["head"].opts["num-cpus"] == "64" and run["head"].opts["num-gpus"] == "0"
    for node in ("g2", "g3"):
        assert run["srun"][node].opts["cpus-per-task"] == run["ray"][node].opts["num-cpus"] == "32"
        assert "gres" not in run["srun"][node].opts
    assert run["ray"]["g2"].opts["temp-dir"] != run["ray"]["g3"].opts["temp-dir"]  # even on a shared /tmp


@pytest.mark.parametrize("env, head_mb, worker_mb", [
    ({"SLURM_MEM_PER_NODE": "2000"}, 2000, 2000),
    ({"SLURM_MEM_PER_CPU": "500"}, 500 * 8, 500 * 4),  # --mem-per-cpu: no SLURM_MEM_PER_NODE at all
    ({"SLURM_MEM_PER_GPU": "3000", "SLURM_JOB_GPUS": "0,1", "SLURM_GPUS_ON_NODE": "2"}, 6000, 3000),
    ({}, None, None),
])
def test_the_object_store_is_sized_on_the_jobs_memory(tmp_path, env, head_mb, worker_mb):
    detail = "Nodes=g1 CPU_IDs=0-7 Mem=0 GRES=gpu:2(IDX:0-1)\n     Nodes=g2 CPU_IDs=0-3 Mem=0 GRES=gpu:1(IDX:0)"
    run = dry_run(tmp_path, {"SLURM_JOB_NODELIST": "g[1-2]", "SLURM_JOB_CPUS_PER_NODE": "8,4",
                             "SLURM_CPUS_ON_NODE": "8", "FAKE_JOB_DETAIL": detail, **env})
    for start, mb in ((run["head"], head_mb), (run["ray"]["g2"], worker_mb)):
        if mb is None:  # no limit known here: Ray's own default (it reads its container's cgroup)
            assert "object-store-memory" not in start.opts
        else:
            assert int(start.opts["object-store-memory"]) == mb * MiB * 3 // 10
    if head_mb:
        assert f"memory limit {head_mb} MB" in run["err"]


def test_too_little_memory_for_ray_is_one_clear_error(tmp_path):
    run = dry_run(tmp_path, {"SLURM_MEM_PER_NODE": "100"}, code=2)
    assert "has 100 MB on this node" in run["err"] and "75 MiB" in run["err"]


def _own_memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    return None


def test_a_cgroup_limit_below_the_jobs_memory_wins(tmp_path):
    """A real memory cgroup (v1, below this process's own) holds the dry run; its limit is tighter
    than --mem, so the object store is 30% of the cgroup's."""
    own = _own_memory_cgroup()
    if os.geteuid() != 0 or own is None or not os.access(own, os.W_OK):
        pytest.skip("needs root and a writable cgroup-v1 memory controller")
    child = own / f"pfl-test-{os.getpid()}"
    child.mkdir()
    try:
        (child / "memory.limit_in_bytes").write_text(str(512 * MiB))
        run = dry_run(tmp_path, {"SLURM_CPUS_ON_NODE": "2", "SLURM_MEM_PER_NODE": "4000"}, cgroup=child)
        assert int(run["head"].opts["object-store-memory"]) == 512 * MiB * 3 // 10
        assert "memory limit 512 MB (cgroup)" in run["err"]
    finally:
        child.rmdir()


@pytest.mark.parametrize("kind", ["run", "tune"])
def test_resume_dir_names_exactly_one_run_or_sweep(tmp_path, kind):
    cmd = ["pflalign", kind, *(["--sweep", "pflalign"] if kind == "tune" else []), "rounds=5"]
    target = tmp_path / "exp"
    first = dry_run(tmp_path, {}, "--resume-dir", str(target), *cmd)["command"]  # first attempt: starts it
    assert first == cmd + ([f"out_dir={tmp_path}", "name=exp"] if kind == "run" else [f"out_dir={target}"])
    if kind == "run":
        target.mkdir()
        (target / "config.yaml").write_text("seed: 0\n")
        assert dry_run(tmp_path, {}, "--resume-dir", str(target), *cmd)["command"] == [
            "pflalign", "run", "--resume", str(target)]
        (target / "results.json").write_text("{}")
        done = dry_run(tmp_path, {}, "--resume-dir", str(target), *cmd)
        assert "command" not in done and "nothing to do" in done["err"]
        other = tmp_path / "runs"  # a directory of runs is not one run
        (other / "a").mkdir(parents=True)
        assert "not a run directory" in dry_run(tmp_path, {}, "--resume-dir", str(other), *cmd, code=2)["err"]
        return
    for sweep in ("pfl-1", "pfl-2"):
        (target / sweep).mkdir(parents=True)
        (target / sweep / "sweep.yaml").write_text("name: pfl\n")
        (target / sweep / "tuner.pkl").write_bytes(b"")
        if sweep == "pfl-1":  # the one sweep in its own directory, or named itself: that sweep
            for given in (target, target / sweep):
                assert dry_run(tmp_path, {}, "--resume-dir", str(given), *cmd)["command"] == [
                    "pflalign", "tune", "--resume", str(target / sweep)]
    err = dry_run(tmp_path, {}, "--resume-dir", str(target), *cmd, code=2)["err"]  # two: never a guess
    assert "holds 2 sweeps (pfl-1 pfl-2" in err
    assert dry_run(tmp_path, {}, "--resume-dir", str(target / "pfl-2"), *cmd)["command"][-1] == str(target / "pfl-2")


# --------------------------------------------------------------------------------------------
# compare-array.sbatch: the grid of `pflalign compare` as a job array

VARIANTS = "fedavg: {algorithm: fedavg}\nprox: {algorithm: fedprox, algo.mu: 0.1}\n"


def compare_grid():
    spec = importlib.util.spec_from_file_location("compare_grid", ROOT / "slurm" / "compare_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_array_grid_is_compares_grid(tmp_path, tiny, capsys):
    (tmp_path / "v.yaml").write_text(VARIANTS)
    assert compare_grid().main(["--variants", str(tmp_path / "v.yaml"), "--seeds", "0,1", *tiny]) == 0
    tasks, out = capsys.readouterr().out.split()
    out = Path(out)
    assert tasks == "4" and out.parent == tmp_path / "runs" and out.name.startswith("compare-")
    rows = [line.split("\t") for line in (out / "grid" / "tasks.tsv").read_text().splitlines()]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("0", "fedavg", "0", "local"), ("1", "fedavg", "1", "local"), ("2", "prox", "0", "local"), ("3", "prox", "1", "local")]
    cfgs = [load_config(out / "grid" / f"{i}.yaml") for i in range(4)]  # what each task runs
    assert [(c.algorithm, c.seed, c.label, c.name) for c in cfgs] == [
        (("fedavg", "fedprox")[i // 2], i % 2, r[1], r[4]) for i, r in enumerate(rows)]
    assert cfgs[2].algo.mu == 0.1 and all(Path(c.out_dir) == out for c in cfgs)
    assert cfgs[0].data == cfgs[2].data and cfgs[0].rounds == cfgs[3].rounds  # one shared setting
    # bad input: one line, exit 2, nothing written
    (tmp_path / "bad.yaml").write_text("prox: {algorithm: fedprox, data.alpha: 1}\n")
    assert compare_grid().main(["--variants", str(tmp_path / "bad.yaml"), *tiny, f"out_dir={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.alpha" in err
    assert not (tmp_path / "bad").exists()


def _metrics_by_run(root: Path) -> dict[tuple[str, int], bytes]:
    """(label, seed) -> metrics.jsonl of each finished run of the comparisons under ``root``."""
    found = {}
    for results in root.glob("compare-*/*/results.json"):
        meta = json.loads(results.read_text())
        found[meta["label"], meta["seed"]] = (results.parent / "metrics.jsonl").read_bytes()
    return found


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_compare_array_on_slurm_gives_compares_runs_and_a_report(slurm, data_cache):
    work = slurm.base / "cmp"
    (work / "home").mkdir(parents=True)
    (work / "v.yaml").write_text(VARIANTS)
    shared = ["--variants", str(work / "v.yaml"), "--seeds", "0,1", *TINY, "rounds=2", f"data.cache_dir={data_cache}"]
    env = {**slurm.env, "HOME": str(work / "home"), "WANDB_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{slurm.env['PATH']}"}
    r = subprocess.run(slurm.on("n1", "bash", str(ROOT / "slurm" / "compare-array.sbatch"), "-c", "1", "--time=5",
                                "--", *shared, f"out_dir={work / 'slurm'}"),
                       env=env, cwd=work, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = Path(r.stdout.strip().splitlines()[-1])
    array, report = re.search(r"array job (\d+): 4 run\(s\) into .*; report job (\d+)", r.stderr).groups()
    slurm.wait([report], timeout=300)
    logs = "\n".join(f.read_text() for f in sorted((out / "logs").glob("*.out")))
    assert [slurm.job(f"{array}_{i}")["JobState"] for i in range(4)] == ["COMPLETED"] * 4, logs
    assert slurm.job(report)["JobState"] == "COMPLETED", logs
    assert (out / "report.md").is_file() and "prox" in (out / "report.md").read_text()

    # the same runs as `pflalign compare` of the same grid, number for number
    assert main(["compare", *shared, f"out_dir={work / 'local'}"]) == 0
    on_slurm, local = _metrics_by_run(work / "slurm"), _metrics_by_run(work / "local")
    assert sorted(on_slurm) == [("fedavg", 0), ("fedavg", 1), ("prox", 0), ("prox", 1)]
    assert on_slurm == local


@pytest.fixture(scope="module")
def slurm():
    yield from private_slurm(nodes=1)


def _auth_token_state(home: Path):
    token = home / ".ray" / "auth_token"
    return token.read_bytes() if token.exists() else None


WAIT_FOR_A = """
import glob, os, sys, time
import ray
deadline = time.time() + 180
while not glob.glob({pattern!r}):
    if time.time() > deadline:
        sys.exit("job A never finished a round")
    time.sleep(0.5)
ray.init()
print("B-SAW-A", os.environ.get("RAY_AUTH_MODE"), ray.cluster_resources().get("CPU"), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pflalign_run_and_a_second_cluster_on_slurm(slurm):
    tmp_path = slurm.base / "work"  # removed with the cluster, pass or fail
    tmp_path.mkdir()
    real_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    token_before = _auth_token_state(real_home)
    home = tmp_path / "home"  # the jobs' HOME: Ray must not write its token there either
    home.mkdir()
    out_a, cache = tmp_path / "runs-a", tmp_path / "cache"
    (tmp_path / "tmp").mkdir()
    env = {**slurm.env, "HOME": str(home), "TMPDIR": str(tmp_path / "tmp"), "WANDB_MODE": "disabled",
           "PFL_RAY_TMP_BASE": str(slurm.base / "rt"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def submit(name: str, *command: str) -> str:
        r = slurm.sh("sbatch", "--parsable", "-J", name, "-c", "1", "--time=5", "-D", str(tmp_path),
                     "-o", str(tmp_path / f"{name}-%j.out"), str(SCRIPT), *command, env=env)
        return r.stdout.strip().split(";")[0]

    t0 = time.time()
    a = submit("a", "pflalign", "run", "runtime=ray", "data.dataset=digits", "data.num_clients=4", "rounds=2",
               "model.hidden=[16]", "wandb.mode=disabled", "progress=false", f"out_dir={out_a}",
               f"data.cache_dir={cache}")
    b = submit("b", "ray", "job", "submit", "--", sys.executable, "-c",
               WAIT_FOR_A.format(pattern=f"{out_a}/*/metrics.jsonl"))
    log_a, log_b = tmp_path / f"a-{a}.out", tmp_path / f"b-{b}.out"

    slurm.wait([a], timeout=200)
    info_a = slurm.job(a)
    text_a = log_a.read_text()
    assert (info_a["JobState"], info_a["ExitCode"]) == ("COMPLETED", "0:0"), f"{text_a}\n{slurm.logs()}"

    # A's run: results.json with a final accuracy
    (results_file,) = out_a.glob("*/results.json")
    assert f"\n{results_file.parent}\n" in text_a, text_a  # pflalign printed its run dir
    results = json.loads(results_file.read_text())
    assert results["rounds"] == 2 and 0.0 < results["final"]["acc"] <= 1.0

    # B ran its own cluster beside A's and saw A's first round; now cancel it (preemption path)
    deadline = time.time() + 60
    while "B-SAW-A" not in log_b.read_text() and slurm.job(b)["JobState"] not in DONE:
        assert time.time() < deadline, log_b.read_text()
        time.sleep(0.5)
    text_b = log_b.read_text()
    assert "B-SAW-A token 1.0" in text_b, text_b
    slurm.sh("scancel", b)
    slurm.wait([b], timeout=60)
    text_b = log_b.read_text()
    assert slurm.job(b)["JobState"] == "CANCELLED"
    assert "received SIGTERM" in text_b and "Ray cluster stopped" in text_b, text_b
    assert "Ray cluster stopped" in text_a

    # each job used the port block derived from its id, and the two blocks are disjoint
    used = {}
    for job, text in ((a, text_a), (b, text_b)):
        line = re.search(r"ports: (.*)", text).group(1)
        used[job] = parse_ports(line)
        assert used[job] == derived_ports(int(job)), line
    assert not set().union(*used[a].values()) & set().union(*used[b].values())

    # nothing of either job is left: processes, temp dirs, tokens
    time.sleep(1)
    for job in (a, b):
        left = processes([f"PFL_RAY_CLUSTER=slurm-{job}", f"SLURM_JOB_ID={job}"], cmd_part=f"/rayj-{job}")
        assert not left, f"job {job} left processes: {left}"
    assert not list((slurm.base / "rt").iterdir())
    assert not (home / ".ray").exists(), list((home / ".ray").rglob("*"))
    assert _auth_token_state(real_home) == token_before
    print(f"two jobs on SLURM in {time.time() - t0:.0f} s")
