"""Test-wide settings and process helpers.

Ray stays on loopback and sends no usage stats in every test (set at import, before any test
imports ray). ``spawned`` starts subprocesses in their own session and, at teardown, SIGKILLs
every process still in those sessions: the spawned command and whatever it started (an embedded
Ray's gcs_server / raylet / workers, or the daemons of ``ray start``). Nothing else is touched:
a session id belongs to exactly the processes started under it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# Leaving the test process. Several tests start and stop an embedded Ray in this process (ray.init / ray.shutdown
# more than once, as a driver does across runs and resumes). Ray's native worker threads of the earlier sessions
# may reference freed core-worker state when the interpreter finalises (ray-project/ray#31145): the CI once ended
# "504 passed" and then "Segmentation fault" (exit 139) during that teardown, and passed on the rerun with the same
# tree. So once pytest has finished everything it does (summary printed, every cleanup run, output flushed), a
# process that imported Ray exits with pytest's own status without the interpreter's finalisation. A failing test
# still fails the run; SPARSESEARCH_TESTS_FULL_EXIT=1 keeps the ordinary exit (to look for that crash).
# ---------------------------------------------------------------------------------------------------------------
_EXIT_STATUS: List[int] = []


def _exit_without_finalising() -> None:
    if _EXIT_STATUS and "ray" in sys.modules and not os.environ.get("SPARSESEARCH_TESTS_FULL_EXIT"):
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        os._exit(_EXIT_STATUS[-1])


def pytest_configure(config) -> None:
    # config cleanups run last-in first-out: registered first, this one runs after pytest's own (capture, tmp_path)
    config.add_cleanup(_exit_without_finalising)


def pytest_sessionfinish(session, exitstatus) -> None:
    _EXIT_STATUS.append(int(exitstatus))


def _stat(pid: int):
    """(state, ppid, pgid, session) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def session_pids(sid: int) -> List[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st and st[3] == sid and st[0] != "Z":
                out.append(int(name))
    return sorted(out)


def kill_session(sid: int, timeout: float = 30.0) -> List[int]:
    """SIGKILL every process of session ``sid`` until none is left; returns the pids killed."""
    killed: List[int] = []
    deadline = time.time() + timeout
    while True:
        pids = session_pids(sid)
        if not pids:
            return killed
        if time.time() > deadline:
            raise AssertionError(f"processes of session {sid} survive SIGKILL: {pids}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def cli_env(**extra: str) -> Dict[str, str]:
    """Environment for a ``python -m search.cli`` subprocess (repo + tests on PYTHONPATH)."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]
                                          + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.update(extra)
    return env


def run_cli(*args: str, env=None, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """``python -m search.cli ARGS`` in a subprocess of its own session (cleaned up afterwards)."""
    p = subprocess.Popen([sys.executable, "-m", "search.cli", *args], cwd=ROOT, env=env or cli_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        kill_session(p.pid)
    cp = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if check and cp.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {cp.returncode}\n{out[-3000:]}\n{err[-5000:]}")
    return cp


class Spawned:
    """Subprocesses started in new sessions; :meth:`cleanup` kills every process of those sessions."""

    def __init__(self) -> None:
        self.sids: List[int] = []

    def popen(self, args, **kw) -> subprocess.Popen:
        p = subprocess.Popen(args, start_new_session=True, **kw)
        self.sids.append(p.pid)
        return p

    def cleanup(self) -> None:
        for sid in self.sids:
            kill_session(sid)


@pytest.fixture
def spawned():
    s = Spawned()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """(folder, checkpoint, predictor) of the tiny real supernet, made once per test session (read-only)."""
    from search.testing import make_tiny_checkpoint, make_tiny_predictor

    d = tmp_path_factory.mktemp("tiny_model")
    ck = make_tiny_checkpoint(d)
    return d, ck, make_tiny_predictor(d, ck)


@pytest.fixture
def short_tmp():
    """A short private folder under /tmp (Ray's unix socket paths must stay under 108 bytes)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="ss", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
