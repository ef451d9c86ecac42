"""Nothing the project starts listens beyond loopback (issue 31, item 4).

Listening sockets are read from /proc (the TCP tables and each process's socket fds) for the
launched process and all its descendants, polled while the job runs (Linux only)."""
import os
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads /proc (Linux)")
SMALL = ["--chunks", "4", "--truncation", "3", "--delay", "3", "--batch", "4", "--hidden", "8", "--no-progress"]


def _tree(root: int) -> set:
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, []))
    return out


def _address(hexaddr: str, v6: bool) -> str:
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    if v6:
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return f"[{socket.inet_ntop(socket.AF_INET6, raw)}]:{int(port, 16)}"
    return f"{socket.inet_ntop(socket.AF_INET, raw[::-1])}:{int(port, 16)}"


def listening(pids) -> dict:
    """{address: command line} of the TCP sockets in LISTEN state that ``pids`` hold."""
    owner = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[int(target[8:-1])] = pid
    out = {}
    for table, v6 in (("tcp", False), ("tcp6", True)):
        try:
            rows = open(f"/proc/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and int(f[9]) in owner:  # 0A: LISTEN
                try:
                    cmd = open(f"/proc/{owner[int(f[9])]}/cmdline").read().replace("\0", " ")[:100]
                except OSError:
                    cmd = "?"
                out[_address(f[1], v6)] = cmd
    return out


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host == "::1"


def run_and_watch(cmd, timeout=240, env=None, probe_http=False):
    """Run ``cmd``; return (its output, rc, {address: command} of everything its process tree
    listened on while it ran). ``probe_http``: a listener beyond loopback that answers HTTP has
    its command prefixed with ``"HTTP "``."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
    seen, t0 = {}, time.time()
    try:
        while p.poll() is None:
            if time.time() - t0 > timeout:
                raise TimeoutError(f"{cmd} still running after {timeout}s")
            for address, command in listening(_tree(p.pid)).items():
                if address not in seen:
                    http = probe_http and not _loopback(address) and _answers_http(int(address.rsplit(":", 1)[1]))
                    seen[address] = ("HTTP " if http else "") + command
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.kill()
        out = p.communicate()[0]
    return out, p.returncode, seen


def test_the_socket_reader_sees_a_wildcard_listener():
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen(1)
    try:
        got = listening({os.getpid()})
        assert f"0.0.0.0:{s.getsockname()[1]}" in got and not _loopback(f"0.0.0.0:{s.getsockname()[1]}")
    finally:
        s.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_launch_torchrun_listens_on_loopback_only():
    out, rc, seen = run_and_watch(["bash", "launch/torchrun.sh", "2", "--steps", "60", *SMALL])
    assert rc == 0, out[-3000:]
    assert seen, "nothing seen listening: the probe missed the job"
    exposed = {a: c for a, c in seen.items() if not _loopback(a)}
    assert not exposed, f"listening beyond loopback: {exposed}"
    # what SECURITY.md lists: the agent's two stores and each worker's gloo listeners
    agents = [a for a, c in seen.items() if "torchrun_local" in c]
    assert len(agents) == 2, seen


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_local_instance_exports_no_metrics_and_is_quiet():
    """Ray's own gRPC services bind every interface (token authentication guards them; SECURITY.md);
    what answers plain HTTP without a token (the metrics endpoints) must not listen beyond loopback."""
    pytest.importorskip("ray")
    out, rc, seen = run_and_watch([sys.executable, "-m", "dni_dist.train", "--backend", "ray", "--workers", "2",
                                   "--steps", "6", *SMALL[:-1]], probe_http=True)
    assert rc == 0, out[-3000:]
    assert "\x1b[" not in out, "ANSI escape codes in the output"
    assert "Token authentication is enabled" not in out
    http = {a: c for a, c in seen.items() if c.startswith("HTTP ") and not _loopback(a)}
    assert not http, f"HTTP endpoints beyond loopback, without a token: {http}"


def _answers_http(port: int) -> bool:
    """Whether 127.0.0.1:``port`` answers an HTTP/1 ``GET /metrics`` (gRPC servers do not)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
            c.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            c.settimeout(2)
            return c.recv(16).startswith(b"HTTP/1")
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_launch_torchrun_restarts_a_killed_worker_on_loopback(tmp_path):
    """The loopback stores survive the agent's restart of the worker group."""
    out, rc, seen = run_and_watch(["bash", "launch/torchrun.sh", "2", "--steps", "6", *SMALL, "--checkpoint-dir",
                                   str(tmp_path / "ck"), "--checkpoint-every", "2", "--fail-at", "3", "--fail-rank",
                                   "1", "--fail-mode", "kill", "--timeout-s", "30"], env={"MAX_RESTARTS": "1"})
    assert rc == 0, out[-3000:]
    assert (tmp_path / "ck" / "failed-once-rank1").exists()  # the kill happened
    assert "resumed from batch" in out
    exposed = {a: c for a, c in seen.items() if not _loopback(a)}
    assert not exposed, f"listening beyond loopback: {exposed}"
