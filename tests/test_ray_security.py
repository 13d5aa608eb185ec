"""A local Ray instance started by `pflalign.runtime.ray.connect` listens on loopback only and
keeps its files (temp dir, session, auth token) owner-only, while what its workers write (the
run directory) keeps the user's umask.

The instance runs in a child process (one ray.init per process; the session's `ray_cluster`
fixture may be running in this one) with its own temp dir and HOME, so every process of it is
told apart from other Ray instances on the machine by ancestry and by HOME in its environment.
"""
import ipaddress
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, sys
import ray
from pflalign.config import RayConfig
from pflalign.runtime.cluster import connect
from pflalign.runtime.ray import Driver
from pflalign.serialize import umask

assert connect(RayConfig(temp_dir=sys.argv[1], local_cpus=1))

probe = Driver.remote(umask())  # pflalign's driver actor: its worker process listens too
pid, worker_umask = ray.get(probe.__ray_call__.remote(lambda self: (os.getpid(), umask())))
print("READY", pid, os.environ.get("RAY_AUTH_MODE"), worker_umask == umask(), flush=True)
sys.stdin.readline()
ray.shutdown()
print("DONE", flush=True)
"""

PORT_FILES = ("gcs_server_port", "dashboard_agent_listen_port", "metrics_agent_port",
              "metrics_export_port", "runtime_env_agent_port")


def _ppids() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat_line = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            out[int(d)] = int(stat_line.rsplit(")", 1)[1].split()[1])
    return out


def instance_pids(root: int, home: str) -> set[int]:
    """The child and its descendants, plus any process whose environment has our HOME."""
    ppids = _ppids()
    pids, grew = {root}, True
    while grew:
        more = {p for p, pp in ppids.items() if pp in pids} - pids
        pids |= more
        grew = bool(more)
    marker = f"HOME={home}".encode()
    for p in ppids:
        try:
            if marker in Path(f"/proc/{p}/environ").read_bytes().split(b"\0"):
                pids.add(p)
        except OSError:
            pass
    return {p for p in pids if Path(f"/proc/{p}").exists()}


def _address(hex_ip: str) -> ipaddress._BaseAddress:
    raw = bytes.fromhex(hex_ip)  # 32-bit words in host (little-endian) order
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def listening_sockets() -> dict[int, tuple[ipaddress._BaseAddress, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state (0A), IPv4 and IPv6."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                hex_ip, hex_port = fields[1].split(":")
                out[int(fields[9])] = (_address(hex_ip), int(hex_port, 16))
    return out


def is_loopback(addr: ipaddress._BaseAddress) -> bool:
    mapped = getattr(addr, "ipv4_mapped", None)  # [::ffff:127.0.0.1] from an IPv6 socket
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()[:80]
    except OSError:
        return "?"


def executable(pid: int) -> str:
    """The file the process runs: unlike its command line, which a process may rewrite (Ray's
    native binaries showed up as 'gcs_ser' on one machine), this is what the kernel mapped."""
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return "?"


def loose_modes(top: Path, dirs: bool = True) -> list[str]:
    """``top`` and what is under it that group or others may access (symlinks aside; directories
    below ``top`` only if ``dirs``)."""
    bad = []
    for path in [top, *top.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode) or (stat.S_ISDIR(mode) and path != top and not dirs):
            continue
        if mode & 0o077:
            bad.append(f"{stat.filemode(mode)} {path}")
    return bad


def wait_for(predicate, timeout: float, what: str, child: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert child.poll() is None, f"the Ray child exited early:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_local_instance_listens_on_loopback_only_and_keeps_files_private(tmp_path):
    from pflalign.runtime.cluster import RAY_SUBDIR  # here: importing it loads ray

    temp_dir = Path(tempfile.mkdtemp(prefix="pfs-", dir="/tmp"))  # short: Ray's unix sockets live here
    home = Path(tempfile.mkdtemp(prefix="pfh-", dir="/tmp"))  # Ray writes $HOME/.ray/auth_token
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # Ray's defaults
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    out, log = tmp_path / "child.out", tmp_path / "child.log"
    seen: set[int] = set()
    with open(out, "w") as stdout, open(log, "w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(temp_dir)], cwd=ROOT, env=env,
                                 stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, text=True)
    try:
        ready = wait_for(lambda: [ln for ln in out.read_text().splitlines() if ln.startswith("READY")],
                         90, "the instance and its actor", child, log)
        _, actor_pid, auth_mode, same_umask = ready[0].split()
        session = temp_dir / RAY_SUBDIR / "session_latest"
        ports = wait_for(lambda: [f for f in session.glob("*_port_*") if f.read_text().strip()]
                         if len(list(session.glob("*_port_*"))) >= len(PORT_FILES) else None,
                         60, "the agents' port files", child, log)
        # (each agent writes its port file after binding the port)

        seen = instance_pids(child.pid, str(home))
        socks = listening_sockets()
        listeners = [(pid, socks[inode]) for pid in seen for inode in socket_inodes(pid) if inode in socks]
        exposed = [f"{name(pid)} (pid {pid}) on {addr}:{port}" for pid, (addr, port) in listeners
                   if not is_loopback(addr)]
        assert not exposed, "listeners of the local instance off loopback:\n" + "\n".join(exposed)

        # Not vacuous: the core processes, the actor's worker and the announced ports are all seen.
        listening = {executable(pid) for pid, _ in listeners}
        assert {"gcs_server", "raylet"} <= listening, (listening, {name(pid) for pid, _ in listeners})
        assert int(actor_pid) in {pid for pid, _ in listeners}
        bound = {port for _, (_, port) in listeners}
        announced = {int(f.read_text()) for f in ports if int(f.read_text()) > 0}
        assert announced <= bound, (announced - bound, [f.name for f in ports])

        assert auth_mode == "token"  # token authentication stays on ...
        token = home / ".ray" / "auth_token"
        assert token.is_file()
        assert temp_dir.stat().st_uid == os.getuid()
        # ... and nobody else can read the token or enter the temp dir; every file in it is
        # owner-only too. Ray 2.60 re-chmods its temp/session/logs/sockets/runtime_resources
        # dirs 0777 whenever a worker starts, so dirs below the 0700 top are not checked.
        bad = loose_modes(token.parent) + loose_modes(temp_dir, dirs=False)
        assert not bad, "group/other may access:\n" + "\n".join(bad[:30])
        assert same_umask == "True"  # what the workers write (a run) keeps the user's umask

        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert "DONE" in out.read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        for _ in range(50):  # workers exit shortly after the raylet
            left = {p for p in seen | instance_pids(child.pid, str(home)) if p != child.pid and alive(p)}
            if not left:
                break
            time.sleep(0.2)
        for pid in left:  # only processes of this test's instance
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    assert not left, f"Ray processes left behind: {sorted((p, name(p)) for p in left)}"


def test_a_temp_dir_of_another_user_is_refused(tmp_path):
    """A pre-created /tmp/pflalign-ray of someone else would get our sockets and logs."""
    import pytest

    from pflalign.errors import ConfigError
    from pflalign.runtime.cluster import _private_dir

    theirs = Path("/tmp")  # root's: another user's for anyone but root
    if os.getuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o777)
        os.chown(theirs, 65534, 65534)
    mode = theirs.stat().st_mode
    with pytest.raises(ConfigError, match="belongs to another user"):
        _private_dir(theirs)
    assert theirs.stat().st_mode == mode  # untouched
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    _private_dir(mine)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
