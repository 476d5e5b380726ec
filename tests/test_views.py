"""Where users look (issue 17) and the search-efficiency path end to end (issue 15): the optuna-dashboard
journal, the front table, fork, measure, multi-fidelity and the prefix cache on a real (tiny) search."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from e2e_util import median_budget, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model


def _mosaic_spec(folder, ck, pr, *, name, n_trials=24, extra_eval="", extra=""):
    """The built-in evaluator on 16 canvases (4 per batch): multi-fidelity and the prefix cache apply."""
    spec = write_spec(folder, ck, pr, name=name, n_trials=n_trials, population=8, budget_line="budget_fraction = 0.9",
                      extra=extra)
    text = spec.read_text().replace("subset_size = 4\nbatch_size = 4\n",
                                    "subset_size = 16\nbatch_size = 4\nfirst_fraction = 0.25\n"
                                    "fidelity_min_pairs = 3\nfidelity_z = 0.5\n" + extra_eval)
    spec.write_text(text)
    return spec


@pytest.fixture(scope="module")
def searched(tiny, tmp_path_factory):
    _, ck, pr = tiny
    d = tmp_path_factory.mktemp("views")
    spec = _mosaic_spec(d, ck, pr, name="views", n_trials=32)
    out = json.loads(run_cli("run", str(spec), "--json", "--no-progress", check=True).stdout)
    return {"dir": d, "spec": spec, "exp": d / "exp_views", "summary": out, "ck": ck, "pr": pr}


def test_every_trial_is_feasible_new_and_counted(searched):
    from search.trial_log import final_trials, load_trials

    s = searched["summary"]
    df = final_trials(load_trials(searched["exp"]))
    assert s["n_trials"] == 32 == (df["status"] != "rejected").sum()
    assert s["counts"]["rejected"] == 0 and (df["predicted_latency_ms"] <= s["budget_ms"] + 1e-9).all()
    evaluated = df[df["status"].isin(["complete", "partial"]) & df["eval_seconds"].notna()]
    frozen = json.loads((searched["exp"] / "experiment.json").read_text())
    assert frozen["search_img_size"] == [112, 112]
    from search.policy import SearchPolicy
    from search.spec import load_spec
    from search.space import Config

    pol = SearchPolicy.from_spec(load_spec(searched["spec"]))
    keys = [pol.key(Config(json.loads(c))) for c in evaluated["config"]]
    assert len(keys) == len(set(keys))  # no computation evaluated twice
    assert s["prefix_cache"]["hits"] > 0 and s["prefix_cache"]["bytes"] <= s["prefix_cache"]["max_bytes_per_worker"] * 2


def test_partial_trials_never_enter_the_front(searched):
    from search.trial_log import final_trials, load_trials

    df = final_trials(load_trials(searched["exp"]))
    partial = df[df["status"] == "partial"]
    assert len(partial) > 0, "the test spec should stop some configs after the first rung"
    assert (partial["canvases"] == 4).all()
    full = df[df["status"] == "complete"]
    assert (full["canvases"] == 16).all()
    front_numbers = {r["trial_number"] for r in searched["summary"]["front"]}
    assert front_numbers and not front_numbers & set(partial["trial_number"])
    ft = pd.read_parquet(searched["exp"] / "front.parquet")
    assert not ft.loc[ft["status"] == "partial", "is_pareto"].any()
    assert set(ft.loc[ft["is_pareto"], "trial_number"]) == front_numbers


def test_front_table_schema_and_flags(searched):
    ft = pd.read_parquet(searched["exp"] / "front.parquet")
    assert list(ft.columns) == ["experiment", "trial_number", "status", "feasible", "is_pareto", "rank", "miou",
                                "predicted_latency_ms", "measured_latency_ms", "confirmed_metric",
                                "is_confirmed_pareto", "macs", "canvases", "config", "config_hash"]
    assert len(ft) == ft["trial_number"].nunique() == 32
    assert (ft.loc[ft["is_pareto"], "rank"] == 0).all() and (ft.loc[~ft["feasible"], "rank"] == -1).all()


def test_front_table_flags_a_repeated_front_point_once():
    """A cached repeat of a front computation (same hash, same values) is rank 0 but not flagged, as ``pareto`` lists
    the front once; a confirmed front member's flag goes to the trial ``confirm`` re-scored."""
    from search.front import front_table
    from search.pareto import pareto_front

    rows = pd.DataFrame({
        "trial_number": [0, 1, 2, 3], "status": ["complete", "complete", "cached", "complete"],
        "miou": [0.5, 0.6, 0.6, 0.4], "predicted_latency_ms": [10.0, 12.0, 12.0, 13.0],
        "macs": [1] * 4, "config": ["[]"] * 4, "config_hash": ["a", "b", "b", "c"], "attempt": [0] * 4,
    })
    t = front_table(rows, "miou", budget_ms=20.0, confirmed={"b": {"confirmed_value": 0.61, "confirmed_pareto": True,
                                                                   "trial_number": 1}})
    assert t["rank"].tolist() == [0, 0, 0, 1]
    assert t["is_pareto"].tolist() == [True, True, False, False]
    assert set(t.loc[t["is_pareto"], "trial_number"]) == set(pareto_front(rows, budget_ms=20.0)["trial_number"])
    assert t["is_confirmed_pareto"].tolist() == [False, True, False, False]
    assert t["confirmed_metric"].isna().tolist() == [True, False, False, True]  # the value belongs to the computation


def test_front_members_add_the_confirmed_front_once_per_config():
    """``measure`` and ``baselines.py`` cover the search's front plus the confirmed front's members it lacks (a config
    confirm found better than its search score), once per config, in latency order."""
    from search.front import front_members
    from search.trial_log import final_trials

    rows = pd.DataFrame({
        "trial_number": [0, 1, 2, 3, 4, 5], "status": ["complete", "complete", "complete", "cached", "complete", "complete"],
        "miou": [0.5, 0.7, 0.45, 0.45, 0.4, 0.8], "predicted_latency_ms": [10.0, 14.0, 12.0, 12.0, 11.0, 30.0],
        "macs": [1] * 6, "config": ["[]"] * 6, "config_hash": ["a", "b", "c", "c", "d", "e"], "attempt": [0] * 6,
    })
    fin = final_trials(rows)
    assert front_members(fin, "miou")["trial_number"].tolist() == [0, 1, 5]
    assert front_members(fin, "miou", budget_ms=20.0)["trial_number"].tolist() == [0, 1]
    conf = {"c": {"confirmed_pareto": True}, "d": {"confirmed_pareto": False}, "b": {"confirmed_pareto": True}}
    got = front_members(fin, "miou", budget_ms=20.0, confirmed=conf)
    assert got["trial_number"].tolist() == [0, 2, 1]  # c once (its first trial), between a and b; d is not on it
    assert front_members(fin.iloc[:0], "miou", confirmed=conf).empty
    # a config whose first trial failed: the trial confirm names, else the first complete one, never the failed row
    redo = pd.concat([rows.assign(trial_number=rows["trial_number"] + 2), pd.DataFrame({
        "trial_number": [0, 1], "status": ["failed", "complete"], "miou": [float("nan"), 0.45],
        "predicted_latency_ms": [12.0, 12.0], "macs": [1, 1], "config": ["[]", "[]"], "config_hash": ["c", "c"],
        "attempt": [0, 0]})], ignore_index=True)
    fin2 = final_trials(redo)
    got = front_members(fin2, "miou", budget_ms=20.0, confirmed=conf)
    assert got.loc[got["config_hash"] == "c", "trial_number"].tolist() == [1]
    named = dict(conf, c={"confirmed_pareto": True, "trial_number": 4})
    got = front_members(fin2, "miou", budget_ms=20.0, confirmed=named)
    assert got.loc[got["config_hash"] == "c", "trial_number"].tolist() == [4]
    assert got["status"].isin(["complete", "cached"]).all()


def test_front_table_flags_on_hand_made_points():
    from search.front import front_table

    rows = pd.DataFrame({
        "trial_number": [0, 1, 2, 3, 4, 5], "status": ["complete", "complete", "cached", "complete", "partial",
                                                        "failed"],
        "miou": [0.5, 0.6, 0.4, 0.7, 0.9, np.nan], "predicted_latency_ms": [10.0, 12.0, 11.0, 30.0, 5.0, 5.0],
        "macs": [1] * 6, "config": ["[]"] * 6, "config_hash": list("abcdef"), "attempt": [0] * 6,
    })
    t = front_table(rows, "miou", budget_ms=20.0)
    assert t["is_pareto"].tolist() == [True, True, False, False, False, False]
    assert t["rank"].tolist() == [0, 0, 1, -1, -1, -1]  # 3 over budget, 4 partial, 5 failed: not feasible
    assert t["feasible"].tolist() == [True, True, True, False, False, False]


def test_journal_matches_the_parquet_log_and_is_rebuilt_when_broken(searched, tmp_path):
    import optuna

    from search.journal import JOURNAL_FILE, journal_trial_count
    from search.trial_log import load_trials

    exp = tmp_path / "exp"
    shutil.copytree(searched["exp"], exp)
    n_rows = len(load_trials(exp))
    assert journal_trial_count(exp / JOURNAL_FILE, "views") == n_rows
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / JOURNAL_FILE)))
    study = optuna.load_study(study_name="views", storage=storage)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all("constraints" in t.system_attrs for t in done)
    # a partially evaluated config is a pruned trial there: never on the dashboard's Pareto front
    partial = (load_trials(exp)["status"] == "partial").sum()
    assert partial > 0 and sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials) == partial
    # a broken journal is rebuilt from the log by the next resume; Parquet is untouched
    (exp / JOURNAL_FILE).write_text("not a journal\n")
    before = {p.name: p.read_bytes() for p in (exp / "trials").glob("part-*")}
    frozen = json.loads((exp / "experiment.json").read_text())
    frozen["spec"]["output_dir"] = str(exp)
    (exp / "experiment.json").write_text(json.dumps(frozen))
    run_cli("resume", str(exp), "--n-trials", "36", "--no-progress", check=True)
    assert journal_trial_count(exp / JOURNAL_FILE, "views") == len(load_trials(exp))
    assert all((exp / "trials" / n).read_bytes() == b for n, b in before.items())


def test_fresh_search_starts_from_the_feasible_uniform_configs(searched):
    """``[sampler] seed_uniform`` (default): the first trials are the feasible uniform-sparsity configs nearest the
    budget, one per computation, at most half the population, stamped as NSGA-II's generation 0."""
    from search.policy import SearchPolicy
    from search.space import Config
    from search.spec import load_spec
    from search.trial_log import final_trials, load_trials

    pol = SearchPolicy.from_spec(load_spec(searched["spec"]))
    want = list(pol.uniform_seeds())[:4]  # population 8
    assert want  # a 0.9 budget admits some uniform sparsity
    df = final_trials(load_trials(searched["exp"])).sort_values("trial_number")
    first = [pol.key(Config(json.loads(c))) for c in df["config"].iloc[:len(want)]]
    assert first == want
    assert all(json.loads(a).get("NSGAIISampler:generation") == 0 for a in df["sampler_attrs"].iloc[:len(want)])
    # ``[sampler] seed_sparsest`` (default): right after them, the sparsest config of the space (the front's fast end)
    sparsest = pol.key(pol.sparsest_config())
    assert pol.feasible(pol.sparsest_config()) and sparsest not in want
    assert pol.key(Config(json.loads(df["config"].iloc[len(want)]))) == sparsest
    assert json.loads(df["sampler_attrs"].iloc[len(want)]).get("NSGAIISampler:generation") == 0


def test_fork_reuses_and_never_re_evaluates(searched, tmp_path):
    from search.trial_log import final_trials, load_trials

    from search.policy import SearchPolicy
    from search.runner import load_frozen_spec
    from search.space import Config

    old = final_trials(load_trials(searched["exp"]))
    dense = json.loads((searched["exp"] / "reference.json").read_text())["dense"]["predicted_latency_ms"]
    # 0.8 of dense, raised where this machine's profile prices even uniform 0.8 above that (the tiny model's sparse
    # overhead on a busy CPU), so that the uniform seeds checked below exist
    parent = SearchPolicy.from_spec(load_frozen_spec(searched["exp"])[1])
    budget = max(0.8 * dense, 1.02 * parent.predict(parent.decode(parent.space.uniform_params(0.8))))
    out = tmp_path / "fork"
    r = run_cli("fork", str(searched["exp"]), "--out", str(out), "--budget-ms", f"{budget:.4f}",
                "--n-trials", "16", "--json", "--no-progress", check=True)
    s = json.loads(r.stdout)
    assert s["fork"]["reused_evaluations"] == (old["status"] == "complete").sum() and s["fork"]["seeded_trials"] > 0
    new = final_trials(load_trials(out))
    assert (new["predicted_latency_ms"] <= float(f"{budget:.4f}") + 1e-6).all()

    pol = SearchPolicy.from_spec(load_frozen_spec(out)[1])
    old_keys = {pol.key(Config(json.loads(c))) for c in old.loc[old["status"] == "complete", "config"]}
    new_eval = {pol.key(Config(json.loads(c))) for c in new.loc[new["status"].isin(["complete", "partial"]), "config"]}
    assert not old_keys & new_eval  # nothing the old experiment measured is measured again
    assert (new["status"] == "cached").sum() >= s["fork"]["seeded_trials"]
    # the seeds form the first generation of NSGA-II (stamped with its generation 0, not just enqueued)
    first = [json.loads(a) for a in new["sampler_attrs"]]
    seeded = [a for a in first if a.get("NSGAIISampler:generation") == 0]
    assert len(seeded) >= s["fork"]["seeded_trials"]
    assert json.loads((out / "experiment.json").read_text())["forked_from"] == str(searched["exp"].resolve())
    # beside the parent's front, the fork's first generation holds the feasible uniform configs (seed_uniform)
    uniform = list(pol.uniform_seeds())
    gen0 = {pol.key(Config(json.loads(c))) for c, a in zip(new["config"], first)
            if a.get("NSGAIISampler:generation") == 0}
    assert uniform and set(uniform[:4]) <= gen0  # population 8: at most 4 uniform seeds


def test_measure_writes_measured_latency_of_the_front(searched, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(searched["exp"], exp)
    r = run_cli("measure", str(exp), "--repeats", "3", "--json", "--no-progress", check=True)
    m = json.loads(r.stdout)
    assert m["n"] == len(searched["summary"]["front"]) > 0
    assert 0.0 <= m["within_10pct"] <= 1.0 and all(x["measured_latency_ms"] > 0 for x in m["members"])
    assert m["speed_drift"] == pytest.approx(m["dense_ms_measured"] / m["dense_ms_predicted"] - 1.0)
    # budget_fraction 0.9: judged relative to the dense runs measured beside the members, not in absolute ms
    assert m["over_budget_rule"] == "measured / dense > 0.9"
    assert [x["over_budget"] for x in m["members"]] == [x["measured_vs_dense"] > 0.9 for x in m["members"]]
    assert m["over_budget"] == [x["trial_number"] for x in m["members"] if x["over_budget"]]
    ft = pd.read_parquet(exp / "front.parquet")
    measured = ft.loc[ft["is_pareto"], "measured_latency_ms"]
    assert measured.notna().all() and (measured > 0).all()
    assert ft.loc[~ft["is_pareto"] & ~ft["config_hash"].isin(
        [x["config_hash"] for x in m["members"]]), "measured_latency_ms"].isna().all()
    r = run_cli("pareto", str(exp), "--json", check=True)
    front = json.loads(r.stdout)["front"]
    assert all(f["measured_latency_ms"] > 0 for f in front)


def test_confirm_subset_noise_and_candidates_on_hand_made_values():
    from search.confirm import select_candidates, subset_noise

    rng = np.random.default_rng(0)
    s, m, n = 0.08, 16, 64  # per-canvas spread; each config's score is a mean over its canvases
    true = rng.uniform(0.6, 0.8, 400)
    canv = true[:, None] + rng.normal(0, s, (400, n))
    first, full = canv[:, :m].mean(1), canv.mean(1)
    sd = subset_noise(first, full, m, n)
    assert sd == pytest.approx(s / np.sqrt(n), rel=0.15)  # the full subset's own error, from first-rung pairs only
    assert subset_noise(first[:3], full[:3], m, n) is None and subset_noise(first, full, n, n) is None
    lat = [10.0, 20.0, 30.0, 25.0, 35.0, 40.0]
    val = [0.50, 0.60, 0.70, 0.595, 0.69, 0.40]
    assert select_candidates(lat, val, None, 10) == [0, 1, 2]  # the front only
    assert select_candidates(lat, val, 0.011, 10) == [0, 1, 3, 2, 4]  # + 25 ms (0.005 behind) and 35 ms (0.01)
    # capped: the nearest to reordering the front first, each beside its rival: 25 ms (0.005 behind the 20 ms
    # member), 35 ms (0.01 behind the 30 ms member); the fastest member (no rival) last
    assert select_candidates(lat, val, 0.011, 4) == [1, 3, 2, 4]
    # the 35 ms pair no longer fits under 3; the 20 ms member comes with its rival, the 10 ms one
    assert select_candidates(lat, val, 0.011, 3) == [0, 1, 3]
    assert select_candidates(lat, val, 0.011, 2) == [1, 3]
    assert select_candidates(lat, val, 0.011, 1) == [1]  # the front member of the nearest pair
    assert select_candidates(lat, val, 0.011, 5) == [0, 1, 3, 2, 4]
    # a member barely ahead of a faster one (0.602 at 28 ms against 0.60 at 20 ms) goes first, with that rival
    assert select_candidates(lat + [28.0], val + [0.602], None, 2) == [1, 6]
    assert select_candidates(lat + [28.0], val + [0.602], None, 3) == [1, 6, 2]  # then the 30 ms (0.098 ahead)
    assert select_candidates(lat, [-v for v in val], 0.011, 10, maximize=False) == [0, 1, 3, 2, 4]


def test_confirm_rescores_the_front_neighbourhood_on_more_canvases(searched, tmp_path):
    from search.evaluators import build_evaluator
    from search.trial_log import final_trials, load_trials
    from supernet.checkpoint import load_checkpoint, read_sidecar

    exp = tmp_path / "exp"
    shutil.copytree(searched["exp"], exp)
    before = {p.name: p.read_bytes() for p in (exp / "trials").glob("part-*")}
    r = run_cli("confirm", str(exp), "--canvases", "32", "--z", "1", "--max-candidates", "5", "--json",
                "--no-progress", check=True)
    c = json.loads(r.stdout)
    front = {f["trial_number"] for f in searched["summary"]["front"]}
    got = {x["trial_number"] for x in c["members"]}
    assert c["n"] == len(c["members"]) <= 5 and c["margin"] > 0 and c["canvases"] == 32
    # the front and its neighbours, contested first, each beside the front member it is measured against
    assert got & front and (front <= got or len(got) >= 4)
    # the confirmed values are the built-in evaluator's on 32 canvases of the search's seed (its 16 come first)
    model, meta = load_checkpoint(searched["ck"], img_size=112)
    model.eval()
    ev = build_evaluator("fashion_mosaic", subset_size=32, batch_size=16, split="val", meta=meta,
                         img_size=[112, 112], mosaic={})
    x = c["members"][0]
    model.set_sparsity(x["config"])
    assert ev(model)["miou"] == pytest.approx(x["confirmed_value"], abs=1e-9)
    assert x["retention"] == pytest.approx(x["confirmed_value"] / c["dense_value"])
    ft = pd.read_parquet(exp / "front.parquet")
    done = ft[ft["config_hash"].isin([m["config_hash"] for m in c["members"]])]
    # one row per trial: a computation the search met again (a cached trial) has its rows too, same hash
    assert done["config_hash"].nunique() == c["n"] and done["confirmed_metric"].notna().all()
    assert ft.loc[~ft["config_hash"].isin(done["config_hash"]), "confirmed_metric"].isna().all()
    assert set(ft.loc[ft["is_confirmed_pareto"], "trial_number"]) == {m["trial_number"] for m in c["members"]
                                                                       if m["confirmed_pareto"]}
    assert json.loads((exp / "confirmed.json").read_text())["canvases"] == 32
    rep = json.loads(run_cli("pareto", str(exp), "--json", "--plot", str(tmp_path / "f.png"), check=True).stdout)
    on_front = sorted((m for m in c["members"] if m["confirmed_pareto"]), key=lambda m: m["predicted_latency_ms"])
    assert [r["trial_number"] for r in rep["confirmed_front"]] == [m["trial_number"] for m in on_front]
    assert [r["confirmed_value"] for r in rep["confirmed_front"]] == [m["confirmed_value"] for m in on_front]
    assert {p.name: p.read_bytes() for p in (exp / "trials").glob("part-*")} == before  # the log is untouched
    # measure keeps the confirmed columns; asking for fewer canvases than the search's is one error line, exit 2
    run_cli("measure", str(exp), "--repeats", "1", "--no-progress", check=True)
    ft = pd.read_parquet(exp / "front.parquet")
    assert ft["confirmed_metric"].notna().sum() == c["n"]
    # ... and measures the confirmed front beside the search's own
    assert ft.loc[ft["is_confirmed_pareto"] | ft["is_pareto"], "measured_latency_ms"].notna().all()
    bad = run_cli("confirm", str(exp), "--canvases", "16", "--no-progress")
    assert bad.returncode == 2 and bad.stderr.count("sparsesearch: error:") == 1 and "--canvases" in bad.stderr
    assert json.loads((exp / "confirmed.json").read_text())["canvases"] == 32  # nothing recorded was rewritten


def test_joint_pareto_of_two_experiments_names_each_point(searched, tmp_path):
    out = tmp_path / "fork2"
    # a tighter budget that a quarter of random configs meet under the tiny predictor of this run (a fixed
    # fraction such as 0.7 of dense is below the sparsest config when the tiny model's timing is flat)
    budget = median_budget(searched["pr"], q=0.25)
    run_cli("fork", str(searched["exp"]), "--out", str(out), "--budget-ms", f"{budget:.4f}", "--n-trials", "8",
            "--no-progress", check=True)
    r = run_cli("pareto", str(searched["exp"]), str(out), "--json", check=True)
    j = json.loads(r.stdout)
    assert set(j["experiment"]) == {"views", "fork2"}
    assert {f["experiment"] for f in j["front"]} <= {"views", "fork2"} and j["front"]


def test_kill9_with_every_efficiency_feature_on_then_resume(tiny, tmp_path):
    """kill -9 of the driver mid-search with feasible proposals, the canonical space, the seeded first generation,
    multi-fidelity and the prefix cache all on (the built-in evaluator), then ``resume``: every trial recorded
    before the kill is kept unchanged, the search ends at n_trials, no computation is evaluated twice, nothing is
    rejected and no partially evaluated config reaches the front."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from conftest import ROOT, cli_env, kill_session, session_pids
    from search.policy import SearchPolicy
    from search.space import Config
    from search.spec import load_spec
    from search.trial_log import final_trials, load_trials

    _, ck, pr = tiny
    spec = _mosaic_spec(tmp_path, ck, pr, name="k9", n_trials=32)
    exp = tmp_path / "exp_k9"
    raytmp = tempfile.mkdtemp(prefix="ssk", dir="/tmp")  # short: Ray's unix socket paths must fit
    env = cli_env(RAY_TMPDIR=raytmp)
    try:
        p = subprocess.Popen([sys.executable, "-m", "search.cli", "run", str(spec), "--no-progress"], cwd=ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        before = None
        while time.time() < deadline and p.poll() is None:
            if (exp / "trials").exists():
                df = final_trials(load_trials(exp))
                if len(df) >= 10:
                    before = df
                    break
            time.sleep(0.2)
        assert p.poll() is None and before is not None, "the search ended or stalled before the kill"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        kill_session(p.pid)
        assert session_pids(p.pid) == []
        seen = final_trials(load_trials(exp))  # what the kill left recorded (>= the snapshot above)
        assert len(seen) < 32
        out = json.loads(run_cli("resume", str(exp), "--json", "--no-progress", env=env, check=True).stdout)
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    df = final_trials(load_trials(exp))
    assert sorted(df["trial_number"]) == list(range(32)) and out["n_trials"] == 32
    assert out["counts"]["rejected"] == 0
    cols = ["trial_number", "status", "config_hash", "miou", "canvases"]
    kept = df.set_index("trial_number").loc[seen["trial_number"], cols[1:]].reset_index()
    pd.testing.assert_frame_equal(kept, seen[cols].reset_index(drop=True), check_dtype=False)
    assert (seen["status"] == "partial").any() or (df["status"] == "partial").any()
    pol = SearchPolicy.from_spec(load_spec(spec))
    ev = df[df["status"].isin(["complete", "partial"]) & df["eval_seconds"].notna()]
    keys = [pol.key(Config(json.loads(c))) for c in ev["config"]]
    assert len(keys) == len(set(keys))  # across the kill, no computation evaluated twice
    front = {r["trial_number"] for r in out["front"]}
    assert front and not front & set(df.loc[df["status"] == "partial", "trial_number"])
