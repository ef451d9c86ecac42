"""A Ray cluster started as a user would (`ray start --head`, a second node joining it) and the
engine submitted to it through `launch/ray_job.sh` (`ray job submit`), on loopback only.

Every address Ray advertises is 127.0.0.2 (a loopback address: Ray rewrites 127.0.0.1 and
"localhost" to the machine's interface address, but not the rest of 127/8), the dashboard (the
job API) listens on 127.0.0.1, and token authentication is on with a token made for this test.
Each node has one CPU and each engine worker asks for one, so K=2 runs one worker per node.
Only the processes of this cluster are stopped at the end (found by its temp dir), never a
Ray instance of the user's.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("ray") is None, reason="needs the ray CLI: pip install 'dni_dist[ray]'")

ARGS = ["--steps", "4", "--hidden", "32", "--chunks", "4", "--truncation", "4", "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_cluster(temp_dir: str) -> None:
    """SIGKILL every process whose command line names this cluster's temp dir, and all their
    descendants (Ray's agents rename themselves, e.g. ``ray::DashboardAgent``), then remove the dir."""
    for _ in range(3):
        parent, named = {}, set()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if temp_dir.encode() in f.read():
                        named.add(int(pid))
            except (OSError, IndexError, ValueError):
                continue
        mine, grew = set(named), True
        while grew:
            kids = {p for p, pp in parent.items() if pp in mine} - mine
            mine |= kids
            grew = bool(kids)
        for pid in mine:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not mine:
            break
        time.sleep(1)
    shutil.rmtree(temp_dir, ignore_errors=True)


def run(cmd, env, timeout):
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ray_cluster_job_matches_debug_mode(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="dni_rc_", dir="/tmp")  # short: Ray's socket paths have a length limit
    token = os.path.join(temp_dir, "token")
    with open(token, "w") as f:
        f.write(secrets.token_hex(32))
    gcs, dash = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": token, "RAY_ADDRESS": f"http://127.0.0.1:{dash}"}
    env.pop("RAY_ADDRESS_OVERRIDE", None)
    common = ["--node-ip-address", "127.0.0.2", "--num-cpus", "1", "--disable-usage-stats",
              "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port())]
    try:
        head_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
        run(["ray", "start", "--head", "--port", str(gcs), "--temp-dir", temp_dir, "--include-dashboard", "true",
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), *common], head_env, 180)
        common[-3], common[-1] = str(free_port()), str(free_port())
        run(["ray", "start", "--address", f"127.0.0.2:{gcs}", *common], head_env, 180)
        deadline = time.monotonic() + 90  # `ray status` reports a snapshot that lags a node's join
        while True:
            status = run(["ray", "status", "--address", f"127.0.0.2:{gcs}"], head_env, 60).stdout
            if status.count(" node_") == 2 or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert status.count(" node_") == 2, status

        out = str(tmp_path / "job.json")
        job = run(["bash", "launch/ray_job.sh", "2", *ARGS, "--metrics-json", out], env, 240)
        assert "succeeded" in job.stdout + job.stderr
        ref = str(tmp_path / "debug.json")
        run([sys.executable, "-m", "dni_dist.train", "--workers", "2", *ARGS, "--metrics-json", ref], env, 120)
        got, want = json.load(open(out)), json.load(open(ref))
        assert got["config"]["backend"] == "ray" and want["config"]["backend"] == "debug"
        assert got["losses"] == pytest.approx(want["losses"], rel=1e-6, abs=1e-7)
    finally:
        stop_cluster(temp_dir)
