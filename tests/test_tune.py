"""Ray Tune front end: a few trials of the tiny supernet through ``make_tuner`` -> the runner's Parquet log."""
from __future__ import annotations

import json
import os

import pytest

N = 8


@pytest.fixture(scope="module")
def tune_run(tiny_model, tmp_path_factory):
    import shutil
    import tempfile

    import ray

    from conftest import ROOT
    from e2e_util import write_spec
    from search.spec import load_spec
    from search.tune import make_tuner

    _, ck, pr = tiny_model
    d = tmp_path_factory.mktemp("tune")
    spec_path = write_spec(d, ck, pr, name="tune", n_trials=N, population=4, workers=1,
                           budget_line="budget_fraction = 0.85")
    # the fault tests' evaluator: sleeps, and raises for a 0.6-sparse first stage (a failed trial)
    text = spec_path.read_text().replace("[evaluator]\n", '[evaluator]\nname = "test_faults:flaky"\n')
    spec_path.write_text(text + "\n[evaluator.kwargs]\nseconds = 0.05\n")
    spec = load_spec(spec_path)
    mp = pytest.MonkeyPatch()
    raytmp = tempfile.mkdtemp(prefix="sst", dir="/tmp")
    mp.setenv("RAY_TMPDIR", raytmp)
    mp.delenv("RAY_AUTH_MODE", raising=False)  # ray.init sets it for the process: undone at teardown
    mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    try:
        tuner = make_tuner(spec, d / "exp_tune")
        grid = tuner.fit()
        results = [r.metrics for r in grid if r.metrics]
        errors = [r.error for r in grid if r.error is not None]
    finally:
        if ray.is_initialized():
            ray.shutdown()
        mp.undo()
        shutil.rmtree(raytmp, ignore_errors=True)
    return {"spec": spec, "exp": d / "exp_tune", "results": results, "errors": errors}


@pytest.mark.slow
def test_tune_trials_land_in_the_runner_parquet_log(tune_run):
    from search.runner import _Search, experiment_summary
    from search.trial_log import load_trials

    exp, spec = tune_run["exp"], tune_run["spec"]
    df = load_trials(exp)
    assert sorted(df["trial_number"]) == list(range(N))  # one row per Tune trial
    assert set(df["status"]) <= {"complete", "cached", "rejected", "failed"}
    # the same schema as the runner's log
    import pyarrow.parquet as pq

    part = sorted((exp / "trials").glob("part-*.parquet"))[0]
    runner_schema = _Search(spec, exp.parent / "schema_probe", progress=False).writer.schema
    assert pq.read_schema(part).remove_metadata() == runner_schema.remove_metadata()
    budget = json.loads((exp / "experiment.json").read_text())["budget_ms"]
    for _, r in df.iterrows():
        params = json.loads(r["params_json"])
        cfg = json.loads(r["config"])
        assert len(params) == 4 and len(cfg) == 4
        if r["status"] == "rejected":  # the latency gate: never evaluated
            assert r["predicted_latency_ms"] > budget and r["miou"] != r["miou"] and r["eval_seconds"] != r["eval_seconds"]
        elif r["status"] == "failed":
            assert cfg[0][0] == 0.6 and r["error"].startswith("RuntimeError: synthetic evaluator failure"), r["error"]
        else:
            assert r["predicted_latency_ms"] <= budget and 0 <= r["miou"] <= 1
            assert json.loads(r["metrics_json"])["miou"] == r["miou"]
    # sparsesearch pareto / experiment_summary read it like a runner experiment
    s = experiment_summary(exp)
    assert s["n_trials"] == N


@pytest.mark.slow
def test_tune_reuses_one_actor_and_loads_the_checkpoint_once(tune_run):
    res = tune_run["results"]
    assert res, tune_run["errors"]
    # one worker: every trial ran in the same reused actor process, which built the supernet once
    assert len({r["worker_pid"] for r in res}) == 1
    assert max(r["model_loads"] for r in res) == 1
    objs = [r for r in res if r["status"] in ("complete", "cached")]
    assert all("latency_ms" in r and "miou" in r for r in objs)
