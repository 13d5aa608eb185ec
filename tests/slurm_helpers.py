"""A private SLURM for the slow SLURM tests, on this one machine, and what they check with it.

:class:`Slurm` starts munged (as the munge user, its own key and socket), slurmctld and one
slurmd per node from a generated slurm.conf in a short temp dir (``SLURM_CONF`` for every
command; nothing in /etc/slurm). Each node is a set of namespaces the class creates: its own
network namespace with the address 10.213.0.<i> on a bridge in one more namespace (no route
anywhere else, so every packet stays in namespaces made here), its own hostname (``n<i>``, a UTS
namespace) and its own process table (a PID namespace, so a node's clean-up sees only its own
processes, as on separate machines). With ``gpus_per_node`` each node also has that many GPUs
for SLURM's gres/gpu plugin: character devices aliasing /dev/null in the temp dir, which SLURM
binds and announces (``CUDA_VISIBLE_DEVICES``, ``SLURM_JOB_GPUS``...) like real ones and which
nothing ever opens. Credentials expire after 30 s (``cred_expire``, default 120 s), which is
also how long SLURM holds a requeued job back. ``stop`` ends the daemons by PID, kills what a job left, deletes the
namespaces and the temp dir, even after a failure. Needs root, ``ip``, ``nsenter`` and
``unshare``; installs Debian's slurm-wlm/munge with apt-get when missing.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "ray-cluster.sbatch"
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
        "BOOT_FAIL", "DEADLINE"}
SUBNET = "10.213.0"
# conftest's `tiny` federation (6 clients, 3 rounds on digits) for jobs: add data.cache_dir and out_dir
TINY = ["data.dataset=digits", "data.num_clients=6", "data.alpha=0.5", "model.hidden=[32]", "rounds=3",
        "train.batch_size=32", "wandb.mode=disabled", "progress=false"]
# PID 1 of a node's PID namespace: its slurmd, and the reaper of what the node's jobs orphan.
NODE_INIT = """hostname "$1"
slurmd -D -N "$1" & pid=$!
trap 'kill -TERM $pid' TERM
while kill -0 $pid 2>/dev/null; do wait $pid; done
"""


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_proc(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def processes(env_entries=(), cmd_part: str | None = None) -> dict[int, str]:
    """pid -> command of the live processes with one of ``env_entries`` in their environment or
    ``cmd_part`` in their command line, and all their descendants (this process excluded)."""
    parents, found = {}, set()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        pid = int(d)
        m = re.search(rb"\nPPid:\s*(\d+)", read_proc(pid, "status"))
        if not m:
            continue
        parents[pid] = int(m.group(1))
        env = read_proc(pid, "environ").split(b"\0")
        if any(e.encode() in env for e in env_entries) or (cmd_part and cmd_part.encode() in read_proc(pid, "cmdline")):
            found.add(pid)
    grew = True
    while grew:
        more = {p for p, pp in parents.items() if pp in found} - found
        found |= more
        grew = bool(more)
    found.discard(os.getpid())
    return {p: read_proc(p, "cmdline").replace(b"\0", b" ").decode(errors="replace")[:120] for p in found if alive(p)}


def alive(pid: int) -> bool:
    status = read_proc(pid, "status")
    return bool(status) and b"State:\tZ" not in status


def kill(pids, grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        end = time.time() + grace
        while time.time() < end and any(alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if alive(p)]
        if not pids:
            return


def children(pid: int) -> list[int]:
    return [int(c) for c in read_proc(pid, f"task/{pid}/children").split()]


def ensure_slurm_installed() -> None:
    needed = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "slurmctld", "slurmd", "munged", "runuser")
    if all(shutil.which(t) or os.path.exists(f"/usr/sbin/{t}") for t in needed):
        return
    if not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and apt-get is unavailable to install it (slurm-wlm, munge)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def require_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("running slurmd/slurmctld, munged (as the munge user) and namespaces needs root")
    missing = [t for t in ("ip", "nsenter", "unshare") if not shutil.which(t)]
    if missing:
        pytest.skip(f"the private SLURM needs {', '.join(missing)} (iproute2, util-linux)")
    ensure_slurm_installed()


class Slurm:
    """munged + slurmctld + ``nodes`` slurmd "machines" (see the module docstring)."""

    def __init__(self, nodes: int = 1, gpus_per_node: int = 0):
        self.base = Path(tempfile.mkdtemp(prefix="slt-", dir="/tmp"))  # short: Ray sockets live below
        self.base.chmod(0o755)  # munged (another user) must reach its socket dir
        self.conf = self.base / "slurm.conf"
        self.tag = f"pfl{os.getpid() % 100000}"
        self.nodes = [f"n{i}" for i in range(1, nodes + 1)]
        self.gpus_per_node = gpus_per_node
        self.namespaces: list[str] = []
        self.daemons: list[tuple[subprocess.Popen, bool]] = []  # slurmctld, then each node (via its init)
        self.munged_pid: int | None = None
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "RAY_", "PFL_RAY_"))}
        self.env["SLURM_CONF"] = str(self.conf)

    def netns(self, node: str) -> str:
        return f"{self.tag}{node}"

    def on(self, node: str, *cmd: str) -> list[str]:
        """``cmd`` run in ``node``'s network (its address; the controller is on n1)."""
        return ["nsenter", f"--net=/run/netns/{self.netns(node)}", *cmd]

    def sh(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(self.on("n1", *cmd), env=kw.pop("env", self.env), capture_output=True, text=True,
                           timeout=60, **kw)
        if check and r.returncode:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}\n{self.logs()}")
        return r

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def _network(self) -> None:
        """A bridge in namespace <tag>sw, and per node a namespace with a veth (eth0) on it."""
        switch = f"{self.tag}sw"
        self._ip("netns", "add", switch)
        self.namespaces.append(switch)
        self._ip("-n", switch, "link", "add", "br0", "type", "bridge")
        self._ip("-n", switch, "link", "set", "br0", "up")
        for i, node in enumerate(self.nodes, start=1):
            ns = self.netns(node)
            self._ip("netns", "add", ns)
            self.namespaces.append(ns)
            self._ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", switch)
            self._ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            for dev in ("lo", "eth0"):
                self._ip("-n", ns, "link", "set", dev, "up")
            self._ip("-n", switch, "link", "set", f"p{i}", "master", "br0")
            self._ip("-n", switch, "link", "set", f"p{i}", "up")

    def _munge(self) -> Path:
        munge = self.base / "munge"
        munge.mkdir()
        (munge / "munge.key").write_bytes(os.urandom(1024))
        (munge / "munge.key").chmod(0o600)
        shutil.chown(munge, "munge", "munge")
        shutil.chown(munge / "munge.key", "munge", "munge")
        munge.chmod(0o755)
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", f"--socket={munge}/munge.socket",
                        f"--key-file={munge}/munge.key", f"--pid-file={munge}/munged.pid",
                        f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"], check=True)
        self.munged_pid = int((munge / "munged.pid").read_text())
        return munge

    def _config(self, munge: Path) -> None:
        hw = subprocess.run(["slurmd", "-C"], env={k: v for k, v in self.env.items() if k != "SLURM_CONF"},
                            capture_output=True, text=True, check=True).stdout.splitlines()[0]
        hw = re.sub(r"^NodeName=\S+\s*", "", hw)  # CPUs=... Boards=... RealMemory=... of this machine
        gres = ""
        if self.gpus_per_node:
            (self.base / "dev").mkdir()
            for g in range(self.gpus_per_node):
                os.mknod(self.base / "dev" / f"nvidia{g}", 0o600 | 0o020000, os.makedev(1, 3))  # /dev/null's
            (self.base / "gres.conf").write_text(  # beside slurm.conf, where SLURM looks for it
                f"NodeName=n[1-{len(self.nodes)}] Name=gpu File={self.base}/dev/nvidia[0-{self.gpus_per_node - 1}]\n")
            gres = f" Gres=gpu:{self.gpus_per_node}"
        nodes = "\n".join(f"NodeName={n} NodeHostname={n} NodeAddr={SUBNET}.{i} {hw}{gres} State=UNKNOWN"
                          for i, n in enumerate(self.nodes, start=1))
        for d in ("state", "log", "rt", *(f"spool-{n}" for n in self.nodes)):
            (self.base / d).mkdir()
        self.conf.write_text(f"""\
ClusterName=pfltest{os.getpid()}
SlurmctldHost={socket.gethostname()}({SUBNET}.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge}/munge.socket,cred_expire=30
StateSaveLocation={self.base}/state
SlurmdSpoolDir={self.base}/spool-%n
SlurmctldPidFile={self.base}/slurmctld.pid
SlurmdPidFile={self.base}/slurmd-%n.pid
SlurmctldLogFile={self.base}/log/slurmctld.log
SlurmdLogFile={self.base}/log/slurmd-%n.log
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
{"GresTypes=gpu" if self.gpus_per_node else ""}
FirstJobId={100000 + os.getpid() % 800000}
{nodes}
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _daemon(self, name: str, cmd: list[str], init: bool = False) -> None:
        out = open(self.base / "log" / f"{name}.out", "wb")
        self.daemons.append((subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True), init))

    def start(self) -> None:
        munge = self._munge()
        self._network()
        self._config(munge)
        self._daemon("slurmctld", self.on("n1", "slurmctld", "-D"))  # the controller lives on n1
        for node in self.nodes:
            self._daemon(f"slurmd-{node}", self.on(node, "unshare", "--uts", "--pid", "--fork", "--mount-proc",
                                                   "--kill-child", "bash", "-c", NODE_INIT, "init", node), init=True)
        deadline = time.time() + 60
        while True:
            states = self.sh("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split()
            if states[1::2] == ["idle"] * len(self.nodes):
                break
            for d, _ in self.daemons:
                assert d.poll() is None, f"{d.args} exited with {d.returncode}:\n{self.logs()}"
            assert time.time() < deadline, f"nodes not idle after 60 s ({states}):\n{self.logs()}"
            time.sleep(0.3)

    def logs(self) -> str:
        out = []
        for f in sorted((self.base / "log").glob("*")) if (self.base / "log").exists() else []:
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)

    def job(self, job_id: str) -> dict[str, str]:
        text = self.sh("scontrol", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(self, job_ids, timeout: float, states=DONE) -> None:
        deadline = time.time() + timeout
        while True:
            now = [self.job(j)["JobState"] for j in job_ids]
            if all(s in states for s in now):
                return
            assert time.time() < deadline, f"jobs {job_ids} still {now} after {timeout:.0f} s\n{self.logs()}"
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel what still runs, stop the daemons by PID, kill anything of ours, remove the
        namespaces and the dir."""
        try:
            if self.daemons and all(d.poll() is None for d, _ in self.daemons):
                self.sh("scancel", "--partition=test", check=False)
                end = time.time() + 45
                while time.time() < end and self.sh("squeue", "-h", check=False).stdout.strip():
                    time.sleep(0.5)
        finally:
            for d, init in reversed(self.daemons):  # each node (its init stops slurmd), then slurmctld
                if d.poll() is None:
                    for pid in children(d.pid) if init else [d.pid]:  # unshare ignores TERM; its child, the init
                        os.kill(pid, signal.SIGTERM)
                    try:
                        d.wait(15)
                    except subprocess.TimeoutExpired:
                        d.kill()  # --kill-child: the node's namespace dies with it
                        d.wait()
            if self.munged_pid:
                kill([self.munged_pid])
            # whatever a job left (every job process inherits SLURM_CONF), then the files
            kill(list(processes([f"SLURM_CONF={self.conf}"], cmd_part=str(self.base))))
            for ns in reversed(self.namespaces):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(self.base, ignore_errors=True)

    def leftover_namespaces(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [ns for ns in self.namespaces if re.search(rf"^{ns}\b", listed, re.M)]


def private_slurm(nodes: int = 1, gpus_per_node: int = 0):
    """Generator body of a module fixture: a started :class:`Slurm`, stopped (and checked gone) after."""
    require_root_and_tools()
    cluster = Slurm(nodes, gpus_per_node)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.leftover_namespaces(), cluster.leftover_namespaces()
    assert not cluster.base.exists()
