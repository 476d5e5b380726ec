"""Run searches on a Ray cluster through Ray's Job Submission API.

``submit`` ships this repository (``working_dir`` = the repository root, without ``.venv``, ``.git``,
``runs`` and large artifacts) to the cluster's job server and starts
``python -m search.cli run SPEC --address auto`` there: the job's driver joins the cluster it runs
on and the worker actors spread over every node. ``jobs`` lists, inspects, tails and stops them.

Paths: the job's driver runs on the head node, so the spec (an absolute path), its checkpoint +
sidecar, its predictor and its ``output_dir`` (EXP_DIR) must be valid there: on a shared filesystem
mounted at the same path everywhere, or on the head's own disk. The workers never open a file: the
driver sends them the checkpoint bytes through the object store.

Authentication: Ray 2.60 heads enable token authentication by default. The token is the one Ray
itself looks up, in this order: ``RAY_AUTH_TOKEN`` (the token), ``RAY_AUTH_TOKEN_PATH`` (a file),
``~/.ray/auth_token``. It is sent (``Authorization: Bearer``) only when ``RAY_AUTH_MODE=token`` is set:
never in reply to an HTTP 401 from a server the user did not configure token authentication for.
``RAY_AUTH_MODE=disabled`` never sends it.

Example::

    >>> from search.cluster import submit, jobs
    >>> out = submit("/shared/exp/spec.toml", "http://127.0.0.1:8265")      # doctest: +SKIP
    >>> jobs("status", out["job_id"], "http://127.0.0.1:8265")["status"]     # doctest: +SKIP
    'RUNNING'
"""
from __future__ import annotations

import contextlib
import os
import shlex
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from .errors import UserError

__all__ = ["ClusterError", "submit", "jobs", "auth_token", "EXCLUDES", "ROOT"]

#: The repository root: the job's ``working_dir``.
ROOT = Path(__file__).resolve().parents[1]
#: ``working_dir`` exclusions (gitignore syntax): environments, VCS data, outputs, large artifacts.
EXCLUDES: List[str] = [".venv/", "venv/", ".git/", "runs/", "shared/", "**/__pycache__/", ".pytest_cache/",
                       "*.safetensors", "*.parquet", "*.pt", "*.pth", "*.ckpt", "*.png"]
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class ClusterError(UserError):
    """The job server cannot be reached, rejects the token, or does not know the job."""


# ---------------------------------------------------------------------------------------------
# connection
# ---------------------------------------------------------------------------------------------
def _job_server_url(address: str) -> str:
    address = (address or "").strip()
    if not address:
        raise ClusterError("no Ray job server address; fix: pass --address http://HEAD:8265 (the head's "
                           "dashboard port)")
    if "://" not in address:
        address = f"http://{address}"
    from urllib.parse import urlsplit

    bad = not address.startswith(("http://", "https://"))
    if not bad:
        try:
            u = urlsplit(address)
            bad = not u.hostname or (u.port is not None and not 0 < u.port < 65536)
        except ValueError:  # a port that is not a number
            bad = True
    if bad:
        raise ClusterError(f"--address {address} is not a job server URL; fix: pass the head's dashboard address, e.g. "
                           "http://127.0.0.1:8265 (not the GCS port 6379 or a ray:// client address)")
    return address.rstrip("/")


def auth_token() -> Optional[str]:
    """The Ray auth token this client would use (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
    ``~/.ray/auth_token``), or ``None``.

    Raises:
        ClusterError: ``RAY_AUTH_TOKEN_PATH`` names a file that cannot be read or is empty.
    """
    tok = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if tok:
        return tok
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            tok = Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({e.strerror}); fix: point it at the "
                               "file holding the head's token") from None
        if not tok:
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path} is empty; fix: copy the head's token into it")
        return tok
    default = Path.home() / ".ray" / "auth_token"
    try:
        tok = default.read_text().strip()
    except OSError:
        return None
    return tok or None


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's client prefers RAY_API_SERVER_ADDRESS / RAY_ADDRESS over its argument: hide them so the
    address the user passed is the one used."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _client(address: str):
    """A connected ``JobSubmissionClient`` (token sent when needed)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ClusterError(f"the Ray job client is not installed ({e}); fix: pip install 'ray[default]'") from None

    url = _job_server_url(address)
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    token = None if mode == "disabled" else auth_token()
    fix_token = ("fix: give this client the head's token: export RAY_AUTH_TOKEN_PATH=FILE (or RAY_AUTH_TOKEN), "
                 "the file the head was started with (default ~/.ray/auth_token on the head)")

    def connect(send_token: bool):
        headers = {"Authorization": f"Bearer {token}"} if (send_token and token) else None
        with _explicit_address():
            return JobSubmissionClient(url, headers=headers)

    # The token goes only where the user configured token auth (RAY_AUTH_MODE=token): never as a reply to a
    # 401 from whatever server answers at the address (plain HTTP: anyone could ask for it).
    send = token is not None and mode == "token"
    try:
        try:
            return connect(send)
        except AuthenticationError:
            if send:
                raise
            if token is None:
                raise ClusterError(f"the Ray job server at {url} requires a token and none was found; {fix_token} "
                                   "and export RAY_AUTH_MODE=token") from None
            raise ClusterError(f"the Ray job server at {url} requires a token; this client sends its token only "
                               "when token authentication is configured; fix: if that server is your cluster's head, "
                               "export RAY_AUTH_MODE=token (the token is then sent to the --address you give)") from None
    except AuthenticationError:
        raise ClusterError(f"the Ray job server at {url} rejected the token; {fix_token}") from None
    except ConnectionError as e:
        raise ClusterError(f"cannot reach the Ray job server at {url} ({str(e).splitlines()[0][:200]}); fix: start a "
                           "head with `ray start --head --dashboard-host=127.0.0.1` and pass its dashboard "
                           "address, e.g. --address http://127.0.0.1:8265") from None


def _job_dict(info) -> Dict[str, Any]:
    status = getattr(info.status, "value", info.status)
    return {
        "job_id": info.submission_id or info.job_id, "status": str(status),
        "entrypoint": info.entrypoint, "message": info.message,
        "start_time": info.start_time, "end_time": info.end_time, "metadata": dict(info.metadata or {}),
        "driver_exit_code": getattr(info, "driver_exit_code", None),
    }


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------
def submit(spec_path, address: str, n_trials: Optional[int] = None, wait: bool = False,
           *, timeout: Optional[float] = None, python: str = "python") -> Dict[str, Any]:
    """Submit the search described by ``spec_path`` to the Ray cluster whose job server is ``address``.

    The spec is validated here first (bad input fails before anything is sent). The job runs
    ``python -m search.cli run SPEC --address auto --no-progress [--n-trials N]`` on the head with this
    repository as its ``working_dir``.

    Args:
        spec_path: the experiment spec (TOML). Its absolute path, and the checkpoint / predictor /
            output_dir it names, must be valid on the head node (shared filesystem or the head's disk).
        address: the job server, e.g. ``http://127.0.0.1:8265``.
        n_trials: override the spec's trial budget.
        wait: block until the job ends (then ``status`` is terminal).
        timeout: with ``wait``, give up waiting after this many seconds (the job goes on).
        python: the interpreter command on the head (default ``python`` on the head's PATH).

    Returns:
        ``{"job_id", "address", "exp_dir", "entrypoint", "status", "warnings"}``; with ``wait`` also
        ``"logs"`` (the job's output, which ends with the search summary).

    Raises:
        search.spec.SpecError: the spec is invalid.
        ClusterError: the job server is unreachable, needs a token or rejects it.
    """
    from .spec import load_spec

    spec_file = Path(spec_path).expanduser().resolve()
    spec = load_spec(spec_file)
    if spec.output_dir is None:
        raise UserError(f"{spec_file}: no output_dir; fix: add `output_dir = \"/shared/runs/NAME\"` (an absolute "
                        "path valid on the head node)")
    exp_dir = Path(spec.output_dir)
    warnings = [f"{what} {p} is not visible from this machine: it must exist on the head node"
                for what, p in (("checkpoint", spec.supernet.checkpoint), ("predictor", spec.latency.predictor))
                if not Path(p).exists()]
    client = _client(address)
    args = [python, "-m", "search.cli", "run", str(spec_file), "--address", "auto", "--no-progress"]
    if n_trials:
        args += ["--n-trials", str(int(n_trials))]
    entrypoint = " ".join(shlex.quote(a) for a in args)
    submission_id = f"sparsesearch-{spec.name}-{uuid.uuid4().hex[:8]}"
    job_id = client.submit_job(
        entrypoint=entrypoint, submission_id=submission_id,
        runtime_env={"working_dir": str(ROOT), "excludes": list(EXCLUDES),
                     "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
        metadata={"sparsesearch_spec": str(spec_file), "exp_dir": str(exp_dir), "experiment": spec.name})
    out: Dict[str, Any] = {"job_id": job_id, "address": _job_server_url(address), "exp_dir": str(exp_dir),
                           "entrypoint": entrypoint, "status": "PENDING", "warnings": warnings}
    if wait:
        t0 = time.time()
        while True:
            status = str(getattr(client.get_job_status(job_id), "value", ""))
            if status in _TERMINAL or (timeout is not None and time.time() - t0 > timeout):
                break
            time.sleep(1.0)
        out["status"] = status
        out["logs"] = client.get_job_logs(job_id)
    else:
        out["status"] = str(getattr(client.get_job_status(job_id), "value", "PENDING"))
    return out


def jobs(action: str, job_id: Optional[str] = None, address: str = "") -> Dict[str, Any]:
    """List / inspect / read / stop jobs on the cluster whose job server is ``address``.

    Args:
        action: ``"list"``, ``"status"``, ``"logs"`` or ``"stop"``.
        job_id: the submission id (``submit``'s ``job_id``); required except for ``list``.
        address: the job server, e.g. ``http://127.0.0.1:8265``.

    Returns:
        list: ``{"jobs": [{"job_id", "status", "entrypoint", "message", "start_time", "end_time",
        "metadata", "driver_exit_code"}, ...]}`` (newest first); status: one such dict;
        logs: ``{"job_id", "logs"}``; stop: ``{"job_id", "stopped", "status"}``.

    Raises:
        ClusterError: unknown action or job, missing job id, unreachable server, token problems.
    """
    if action not in ("list", "status", "logs", "stop"):
        raise ClusterError(f"unknown jobs action {action!r}; fix: use list, status, logs or stop")
    if action != "list" and not job_id:
        raise ClusterError(f"`jobs {action}` needs a job id; fix: `sparsesearch jobs list --address {address}` "
                           "shows them")
    client = _client(address)
    try:
        if action == "list":
            infos = sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
            return {"jobs": [_job_dict(j) for j in infos]}
        if action == "status":
            return _job_dict(client.get_job_info(job_id))
        if action == "logs":
            return {"job_id": job_id, "logs": client.get_job_logs(job_id)}
        stopped = bool(client.stop_job(job_id))
        return {"job_id": job_id, "stopped": stopped, "status": str(getattr(client.get_job_status(job_id), "value", ""))}
    except RuntimeError as e:  # the SDK's "Job ... does not exist" / request failures
        msg = " ".join(str(e).split())[:300]
        if "does not exist" in msg or "404" in msg:
            raise ClusterError(f"no job {job_id!r} on {address}; fix: `sparsesearch jobs list --address {address}` "
                               "shows the job ids") from None
        raise ClusterError(f"the job server at {address} failed: {msg}") from None
