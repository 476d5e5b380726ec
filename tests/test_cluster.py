"""Cluster submission against a real Ray head started by the test, all on 127.0.0.1.

The head is ``ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1`` with token
authentication (``RAY_AUTH_MODE=token``, a token file of the test's own) on free ports and a private
``--temp-dir``, started in a session of its own; the test stops it by killing exactly the processes
of that session (never ``ray stop``).
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli_env, kill_session, run_cli, session_pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode(hexaddr: str):
    ip_hex, port_hex = hexaddr.split(":")
    raw = bytes.fromhex(ip_hex)
    # /proc/net/tcp{,6} print the address as 32-bit words in host (little-endian) order
    raw = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0]) for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip, int(port_hex, 16)


def listening(pids) -> list:
    """(ip, port, pid) of every TCP socket in LISTEN state held by ``pids`` (from /proc)."""
    inode_pid = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inode_pid[link[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inode_pid:  # 0A = LISTEN
                    ip, port = _decode(cols[1])
                    out.append((ip, port, inode_pid[cols[9]]))
    return out


def _reset_ray_auth() -> None:
    """Ray caches the auth mode (RayConfig) and the token (AuthenticationTokenLoader) once per process: re-read
    the environment, so that no later test (here or in another module) inherits a token mode or a token."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(autouse=True)
def _fresh_ray_auth():
    """Autouse, so it is set up before (and torn down after) ``monkeypatch``: the reset at teardown sees the
    restored environment."""
    _reset_ray_auth()
    yield
    _reset_ray_auth()


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A token-authenticated Ray head on 127.0.0.1; yields its addresses and token file."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="ssc", dir="/tmp"))
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    ports = {k: _free_port() for k in ("port", "dashboard", "client", "agent", "metrics", "agent_grpc")}
    env = cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                  PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--port={ports['port']}", f"--dashboard-port={ports['dashboard']}",
           f"--ray-client-server-port={ports['client']}", f"--dashboard-agent-listen-port={ports['agent']}",
           f"--dashboard-agent-grpc-port={ports['agent_grpc']}", f"--metrics-export-port={ports['metrics']}",
           "--num-cpus=2", f"--temp-dir={tmp / 'ray'}", "--disable-usage-stats"]
    p = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    sid = p.pid
    try:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out[-3000:]
        yield {"sid": sid, "url": f"http://127.0.0.1:{ports['dashboard']}", "gcs": f"127.0.0.1:{ports['port']}",
               "token": token, "tmp": tmp}
    finally:
        kill_session(sid)  # every daemon `ray start` left behind, and their workers: nothing else
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def client_token(head, monkeypatch):
    """The submitting client configured token auth (RAY_AUTH_MODE=token) and knows the token file."""
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(head["token"]))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    _reset_ray_auth()  # as a fresh client process configured this way would start
    return head


def test_head_daemons_listen_on_loopback_only(head):
    socks = listening(session_pids(head["sid"]))
    ports = {port for _, port, _ in socks}
    assert int(head["url"].rsplit(":", 1)[1]) in ports  # the job server / dashboard is up
    assert int(head["gcs"].rsplit(":", 1)[1]) in ports
    assert socks and all(ip.is_loopback for ip, _, _ in socks), socks


@pytest.mark.slow
def test_submit_a_search_job_status_logs_list(client_token, tiny_model, tmp_path):
    from e2e_util import write_spec
    from search.cluster import jobs

    head = client_token
    _, ck, pr = tiny_model
    spec = write_spec(tmp_path, ck, pr, name="cluster", n_trials=8, workers=1)
    spec.write_text(spec.read_text().replace("[evaluator]\n", '[evaluator]\nname = "search.testing:noop"\n'))
    # through the CLI, as a user would; the job's entrypoint joins the head with --address auto
    r = run_cli("submit", str(spec), "--address", head["url"], "--wait", "--json",
                env=cli_env(RAY_AUTH_TOKEN_PATH=str(head["token"]), RAY_AUTH_MODE="token"), timeout=400, check=True)
    out = json.loads(r.stdout)
    job = out["job_id"]
    assert out["status"] == "SUCCEEDED", out.get("logs", "")[-4000:]
    assert out["exp_dir"] == str(tmp_path / "exp_cluster")
    assert "--address auto" in out["entrypoint"]
    st = jobs("status", job, head["url"])
    assert st["status"] == "SUCCEEDED" and st["metadata"]["experiment"] == "cluster"
    logs = jobs("logs", job, head["url"])["logs"]
    assert "experiment cluster: 8 trials" in logs and "Pareto front" in logs, logs[-3000:]
    listed = jobs("list", address=head["url"])["jobs"]
    assert job in [j["job_id"] for j in listed]
    # the job wrote the experiment where the spec said (the head's disk here)
    from search.trial_log import final_trials, load_trials

    assert sorted(final_trials(load_trials(tmp_path / "exp_cluster"))["trial_number"]) == list(range(8))
    # the CLI's list shows it too
    r = run_cli("jobs", "list", "--address", head["url"], "--json",
                env=cli_env(RAY_AUTH_TOKEN_PATH=str(head["token"]), RAY_AUTH_MODE="token"), check=True)
    assert job in [j["job_id"] for j in json.loads(r.stdout)["jobs"]]


def test_jobs_without_or_with_a_wrong_token_is_a_one_line_error(head, monkeypatch, tmp_path):
    from search.cluster import ClusterError, jobs

    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    _reset_ray_auth()
    with pytest.raises(ClusterError, match="requires a token and none was found"):
        jobs("list", address=head["url"])
    monkeypatch.setenv("RAY_AUTH_TOKEN", head["token"].read_text())  # known, but token auth not configured
    with pytest.raises(ClusterError, match="sends its token only when token authentication is configured"):
        jobs("list", address=head["url"])
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    with pytest.raises(ClusterError, match="rejected the token"):
        jobs("list", address=head["url"])
    monkeypatch.setenv("RAY_AUTH_TOKEN", head["token"].read_text())
    with pytest.raises(ClusterError, match="no job 'nope'"):
        jobs("status", "nope", head["url"])
    # through the CLI: exit 2, one line
    r = run_cli("jobs", "list", "--address", head["url"],
                env=cli_env(HOME=str(tmp_path), RAY_AUTH_TOKEN="not-the-token", RAY_AUTH_MODE="token"))
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "rejected the token" in err[0], r.stderr
    r = run_cli("jobs", "list", "--address", f"http://127.0.0.1:{_free_port()}", env=cli_env(HOME=str(tmp_path)))
    assert r.returncode == 2 and "cannot reach the Ray job server" in r.stderr


def test_token_is_never_sent_in_reply_to_an_unverified_401(monkeypatch, tmp_path):
    """A server at the address that answers 401 (anyone's: plain HTTP) gets no token unless token auth
    was configured (RAY_AUTH_MODE=token)."""
    import http.server
    import threading

    from search.cluster import ClusterError, jobs

    seen = []

    class Ask(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            seen.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Ask)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("RAY_AUTH_TOKEN", "secret-token-value")
        with pytest.raises(ClusterError, match="requires a token"):
            jobs("list", address=f"http://127.0.0.1:{srv.server_port}")
        assert seen and not any(h and "secret-token-value" in h for h in seen), seen
    finally:
        srv.shutdown()


def test_embedded_ray_dashboard_listens_on_loopback(spawned, short_tmp):
    code = ("import time\nfrom search.workers import ray_init_local\n"
            "ray_init_local(num_cpus=1, dashboard=True)\nprint('up', flush=True)\ntime.sleep(600)\n")
    p = spawned.popen([sys.executable, "-c", code], cwd=ROOT, env=cli_env(RAY_TMPDIR=str(short_tmp)),
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout.readline().strip() == "up"
    def dashboard_pids():
        out = set()
        for pid in session_pids(p.pid):
            try:
                if b"dashboard/dashboard.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.add(pid)
            except OSError:
                pass
        return out

    deadline = time.time() + 90
    while True:  # the dashboard (job server) binds its HTTP port shortly after ray.init returns
        socks = listening(session_pids(p.pid))
        if any(pid in dashboard_pids() for _, _, pid in socks) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert any(pid in dashboard_pids() for _, _, pid in socks), "the embedded dashboard never listened"
    assert socks and all(ip.is_loopback for ip, _, _ in socks), socks
    kill_session(p.pid)
