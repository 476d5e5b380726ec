"""Worker faults on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``, all on 127.0.0.1).

One search on a head (1 CPU) + one added node (1 CPU), two evaluation actors (one per node), an
evaluator that sleeps 1 s and raises for configs whose first stage is 0.6 sparse. Mid-search the
node that runs a trial is removed (its raylet and worker processes killed); a fresh node joins so Ray
can restart the lost actor. The search must finish: the trial that was running on the dead node is
retried on the other worker (``attempt`` 1), the evaluator's exceptions are ``failed`` rows carrying
the error, and every other trial completes.

The evaluator functions below are imported by the Ray workers as ``test_faults:flaky`` (the test puts
``tests/`` on the workers' PYTHONPATH), so this module keeps its top-level imports light.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

N_TRIALS = 24


def flaky(model, seconds: float = 1.0):
    """Sleep ``seconds``; raise for configs whose first stage is 0.6 sparse (a deterministic failure)."""
    from search.testing import sleep

    if model.sparsity[0][0] == 0.6:
        raise RuntimeError(f"synthetic evaluator failure for stage-0 ratio {model.sparsity[0][0]}")
    return sleep(model, seconds)


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory):
    """RAY_TMPDIR (short, private: the cluster's address file and sessions) + PYTHONPATH for the workers."""
    import shutil
    import tempfile

    from conftest import ROOT

    mp = pytest.MonkeyPatch()
    tmp = tempfile.mkdtemp(prefix="ssf", dir="/tmp")
    mp.setenv("RAY_TMPDIR", tmp)
    mp.delenv("RAY_AUTH_MODE", raising=False)  # ray.init sets it for the process: undone at teardown
    mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    try:
        yield tmp
    finally:
        mp.undo()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def node_fault_search(tiny_model, cluster_env, tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    from e2e_util import write_spec
    from search.runner import run
    from search.spec import load_spec

    _, ck, pr = tiny_model
    d = tmp_path_factory.mktemp("faults")
    spec_path = write_spec(d, ck, pr, name="faults", n_trials=N_TRIALS, population=8, workers=2,
                           budget_line="budget_fraction = 1.0")
    text = spec_path.read_text().replace("[evaluator]\n", '[evaluator]\nname = "test_faults:flaky"\n')
    spec_path.write_text(text + "\n[evaluator.kwargs]\nseconds = 1.0\n")
    spec = load_spec(spec_path)
    exp = d / "exp_faults"

    node_args = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=dict(node_args), shutdown_at_exit=False)
    out: dict = {}
    try:
        def target():
            try:
                out["summary"] = run(spec, address=cluster.address, progress=False)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                out["error"] = e

        th = threading.Thread(target=target, daemon=True)
        th.start()
        # the driver joins while the head is the only node (it must not sit on the node we remove);
        # with 1 CPU on the head, the second actor waits for the node added now
        deadline = time.time() + 300  # generous: actor start-up is slow on a loaded 2-core machine
        while not ray.is_initialized() and th.is_alive() and time.time() < deadline:
            time.sleep(0.05)
        node = cluster.add_node(**node_args)
        victim = node.node_id[:8]
        # remove the node as soon as its actor is evaluating (a row from it is logged: the next is running)
        from search.trial_log import load_trials

        while th.is_alive() and time.time() < deadline:
            if (exp / "trials").exists():
                df = load_trials(exp)
                if len(df) and df["node"].fillna("").str.endswith(victim).any():
                    break
            time.sleep(0.1)
        out["removed_at_rows"] = len(load_trials(exp))
        cluster.remove_node(node, allow_graceful=False)
        out["replacement"] = cluster.add_node(**node_args).node_id[:8]  # Ray restarts the lost actor there
        th.join(timeout=300)
        assert not th.is_alive(), "the search did not finish after the node was removed"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    if "error" in out:
        raise out["error"]
    out.update(exp=exp, victim=victim, spec=spec)
    return out


@pytest.mark.slow
def test_trial_on_a_removed_node_is_retried_on_another_worker_and_the_search_finishes(node_fault_search):
    from search.trial_log import final_trials, load_trials

    r = node_fault_search
    df = load_trials(r["exp"])
    fin = final_trials(df)
    assert sorted(fin["trial_number"]) == list(range(N_TRIALS))
    assert r["summary"]["n_trials"] == N_TRIALS
    retried = fin[fin["attempt"] > 0]
    print(f"removed node {r['victim']} at {r['removed_at_rows']} rows; retried trials:\n"
          f"{retried[['trial_number', 'attempt', 'status', 'node', 'error']]}\n"
          f"nodes: {df['node'].value_counts().to_dict()}")
    assert len(retried) >= 1, "the trial running on the removed node was not retried"
    assert r["summary"]["worker_deaths"] >= 1
    for _, row in retried.iterrows():
        # the retry ran on a live worker, not on the dead node
        assert row["status"] in ("complete", "failed") and not str(row["node"]).endswith(r["victim"])
    # the removed node did evaluate trials before it died
    assert df["node"].fillna("").str.endswith(r["victim"]).any()


@pytest.mark.slow
def test_evaluator_exception_is_a_failed_row_with_the_error_and_the_search_goes_on(node_fault_search):
    from search.trial_log import final_trials, load_trials

    df = load_trials(node_fault_search["exp"])
    fin = final_trials(df)
    failed = fin[fin["status"] == "failed"]
    assert len(failed) >= 1, "no config with a 0.6-sparse first stage was proposed"
    for _, row in failed.iterrows():
        cfg = json.loads(row["config"])
        assert cfg[0][0] == 0.6
        assert row["error"].startswith("RuntimeError: synthetic evaluator failure")
        assert row["miou"] != row["miou"]  # null metric
        assert row["attempt"] == 0  # an exception is not a worker death: no retry
    ok = fin[fin["status"].isin(["complete", "cached"])]
    assert len(ok) + len(failed) + (fin["status"] == "rejected").sum() == N_TRIALS
    assert all(json.loads(c)[0][0] != 0.6 for c in ok["config"])
    assert node_fault_search["summary"]["counts"]["failed"] == len(failed)


def test_an_evaluator_that_cannot_be_imported_stops_the_run_with_exit_2(tiny_model, tmp_path):
    from conftest import cli_env, run_cli
    from e2e_util import write_spec

    _, ck, pr = tiny_model
    spec = write_spec(tmp_path, ck, pr, name="badeval", n_trials=4, workers=1)
    spec.write_text(spec.read_text().replace("[evaluator]\n", '[evaluator]\nname = "no_such_module_xyz:score"\n'))
    raytmp = Path(__import__("tempfile").mkdtemp(prefix="ssb", dir="/tmp"))
    try:
        r = run_cli("run", str(spec), "--no-progress", env=cli_env(RAY_TMPDIR=str(raytmp)))
    finally:
        __import__("shutil").rmtree(raytmp, ignore_errors=True)
    err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("sparsesearch: error:")]
    assert r.returncode == 2 and len(err) == 1, r.stderr[-3000:]
    assert "no_such_module_xyz" in err[0] and "fix:" in err[0]
