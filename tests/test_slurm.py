"""SLURM support: ``slurm/ray-cluster.sbatch`` on a real one-node SLURM started by the test.

The slow test installs SLURM from Debian packages when it is missing, starts its own munged
(as the munge user, with its own key and socket), slurmctld and slurmd for this machine from a
generated slurm.conf in a temp dir (``SLURM_CONF`` for every command; nothing in /etc/slurm),
then submits two jobs at once through the sbatch template:

- A: a tiny ``pflalign run runtime=ray`` (must complete, with results.json);
- B: ``ray job submit`` of a script that waits until A has finished a round, so both jobs'
  Ray clusters run side by side on one node; then B is cancelled (``scancel``: the
  preemption path).

It checks the results, the two jobs' port sets (as logged, equal to the derivation, disjoint),
that no process of either job is left, that the temp dirs are gone and that no Ray auth token
was written into HOME. Daemons are stopped by PID and the temp dir removed, even on failure.

    python -m pytest -q -m slow tests/test_slurm.py
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "ray-cluster.sbatch"
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
        "BOOT_FAIL", "DEADLINE"}


def derived_ports(job_id: int) -> dict[str, set[int]]:
    """Run the script's own port block for ``job_id`` (``--print-ports``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PFL_RAY_"))}
    out = subprocess.run(["bash", str(SCRIPT), "--print-ports"], env={**env, "SLURM_JOB_ID": str(job_id)},
                         capture_output=True, text=True, check=True).stdout
    return parse_ports(out)


def parse_ports(line: str) -> dict[str, set[int]]:
    ports = {}
    for name, lo, hi in re.findall(r"(\w+)=(\d+)(?:-(\d+))?", line):
        ports[name] = set(range(int(lo), int(hi or lo) + 1))
    return ports


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
# A real SLURM on this machine.

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _processes(env_entries=(), cmd_part: str | None = None) -> dict[int, str]:
    """pid -> command of the processes with one of ``env_entries`` in their environment or
    ``cmd_part`` in their command line, and all their descendants (this process excluded)."""
    parents, found = {}, set()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        pid = int(d)
        m = re.search(rb"\nPPid:\s*(\d+)", _read(pid, "status"))
        if not m:
            continue
        parents[pid] = int(m.group(1))
        env = _read(pid, "environ").split(b"\0")
        cmd = _read(pid, "cmdline")
        if any(e.encode() in env for e in env_entries) or (cmd_part and cmd_part.encode() in cmd):
            found.add(pid)
    grew = True
    while grew:
        more = {p for p, pp in parents.items() if pp in found} - found
        found |= more
        grew = bool(more)
    found.discard(os.getpid())
    return {p: _read(p, "cmdline").replace(b"\0", b" ").decode(errors="replace")[:120] for p in found
            if b"State:\tZ" not in _read(p, "status") and _read(p, "status")}


def _kill(pids, grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        end = time.time() + grace
        while time.time() < end and any(_alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def _alive(pid: int) -> bool:
    status = _read(pid, "status")
    return bool(status) and b"State:\tZ" not in status


def _ensure_slurm_installed() -> None:
    needed = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "slurmctld", "slurmd", "munged", "runuser")
    if all(shutil.which(t) or os.path.exists(f"/usr/sbin/{t}") for t in needed):
        return
    if not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and apt-get is unavailable to install it (slurm-wlm, munge)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


class Slurm:
    """munged + slurmctld + slurmd for this machine, everything under one short temp dir."""

    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="slt-", dir="/tmp"))  # short: Ray sockets live below
        self.base.chmod(0o755)  # munged (another user) must reach its socket dir
        self.conf = self.base / "slurm.conf"
        self.daemons: list[subprocess.Popen] = []
        self.munged_pid: int | None = None
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "RAY_", "PFL_RAY_"))}
        self.env["SLURM_CONF"] = str(self.conf)

    def sh(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, env=kw.pop("env", self.env), capture_output=True, text=True, timeout=60, **kw)
        if check and r.returncode:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}\n{self.logs()}")
        return r

    def start(self) -> None:
        munge = self.base / "munge"
        munge.mkdir()
        (munge / "munge.key").write_bytes(os.urandom(1024))
        (munge / "munge.key").chmod(0o600)
        shutil.chown(munge, "munge", "munge")
        shutil.chown(munge / "munge.key", "munge", "munge")
        munge.chmod(0o755)
        self.sh("runuser", "-u", "munge", "--", "/usr/sbin/munged", f"--socket={munge}/munge.socket",
                f"--key-file={munge}/munge.key", f"--pid-file={munge}/munged.pid",
                f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed")
        self.munged_pid = int((munge / "munged.pid").read_text())

        node = self.sh("slurmd", "-C", env={k: v for k, v in self.env.items() if k != "SLURM_CONF"}).stdout
        node_line = node.splitlines()[0]  # NodeName=... CPUs=... Sockets/Cores... RealMemory=...
        self.node = re.match(r"NodeName=(\S+)", node_line).group(1)
        for d in ("state", "spool", "log", "rt"):
            (self.base / d).mkdir()
        self.conf.write_text(f"""\
ClusterName=pfltest{os.getpid()}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge}/munge.socket
StateSaveLocation={self.base}/state
SlurmdSpoolDir={self.base}/spool
SlurmctldPidFile={self.base}/slurmctld.pid
SlurmdPidFile={self.base}/slurmd.pid
SlurmctldLogFile={self.base}/log/slurmctld.log
SlurmdLogFile={self.base}/log/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
KillWait=30
FirstJobId={100000 + os.getpid() % 800000}
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        for cmd in (["slurmctld", "-D"], ["slurmd", "-D", "-N", self.node]):
            out = open(self.base / "log" / f"{cmd[0]}.out", "wb")
            self.daemons.append(subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True))
        deadline = time.time() + 30
        while self.sh("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).stdout.strip() != "idle":
            for d in self.daemons:
                assert d.poll() is None, f"{d.args[0]} exited with {d.returncode}:\n{self.logs()}"
            assert time.time() < deadline, f"node {self.node} not idle after 30 s:\n{self.logs()}"
            time.sleep(0.3)

    def logs(self) -> str:
        out = []
        for f in sorted((self.base / "log").glob("*")) if (self.base / "log").exists() else []:
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)

    def job(self, job_id: str) -> dict[str, str]:
        text = self.sh("scontrol", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(self, job_ids, timeout: float) -> None:
        deadline = time.time() + timeout
        while True:
            states = [self.job(j)["JobState"] for j in job_ids]
            if all(s in DONE for s in states):
                return
            assert time.time() < deadline, f"jobs {job_ids} still {states} after {timeout:.0f} s\n{self.logs()}"
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel what still runs, stop daemons by PID, kill anything of ours, remove the dir."""
        try:
            if self.daemons and all(d.poll() is None for d in self.daemons):
                self.sh("scancel", "--partition=test", check=False)
                end = time.time() + 45
                while time.time() < end and self.sh("squeue", "-h", check=False).stdout.strip():
                    time.sleep(0.5)
        finally:
            for d in reversed(self.daemons):  # slurmd, then slurmctld
                if d.poll() is None:
                    d.terminate()
                    try:
                        d.wait(10)
                    except subprocess.TimeoutExpired:
                        d.kill()
                        d.wait()
            if self.munged_pid:
                _kill([self.munged_pid])
            # whatever a job left (every job process inherits SLURM_CONF), then the files
            _kill(list(_processes([f"SLURM_CONF={self.conf}"], cmd_part=str(self.base))))
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("running slurmd/slurmctld and munged (as the munge user) needs root")
    _ensure_slurm_installed()
    cluster = Slurm()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


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
        left = _processes([f"PFL_RAY_CLUSTER=slurm-{job}", f"SLURM_JOB_ID={job}"], cmd_part=f"/rayj-{job}")
        assert not left, f"job {job} left processes: {left}"
    assert not list((slurm.base / "rt").iterdir())
    assert not (home / ".ray").exists(), list((home / ".ray").rglob("*"))
    assert _auth_token_state(real_home) == token_before
    print(f"two jobs on SLURM in {time.time() - t0:.0f} s")
