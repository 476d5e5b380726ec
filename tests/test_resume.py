"""Resume: kill -9 of the driver at random moments, finished experiments with a larger budget, refusals.

The kill test runs ONE search (tiny supernet, nsga2, population 8, 40 trials, one Ray worker whose
evaluator sleeps 0.5 s) through the real CLI in a subprocess of its own session, SIGKILLs the whole
session (the driver, its embedded Ray's gcs_server / raylet / dashboard agent and the worker actors)
at 10 random moments, checks that nothing of that session survives, and resumes each time.
Half of the kills fall 0.5-4 s after the start (imports, lock, restore, Ray start-up), half 0.5-4 s
after the driver entered its trial loop (pending.json rewritten), where trials are in flight.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, cli_env, kill_session, run_cli, session_pids
from e2e_util import write_spec

N_TRIALS, POP, N_KILLS = 40, 8, 10


def _sleepy_spec(d: Path, ck: Path, pr: Path, *, name="kill", n_trials=N_TRIALS, seconds=0.5, workers=1) -> Path:
    spec = write_spec(d, ck, pr, name=name, n_trials=n_trials, population=POP, workers=workers)
    text = spec.read_text().replace("[evaluator]\n", '[evaluator]\nname = "search.testing:sleep"\n')
    spec.write_text(text + f"\n[evaluator.kwargs]\nseconds = {seconds}\n")
    return spec


def _rows(exp: Path):
    from search.trial_log import load_trials

    if not (exp / "trials").exists():
        return None
    return load_trials(exp)


def _complete_rows(df) -> dict:
    if df is None or not len(df):
        return {}
    done = df[df["status"] == "complete"]
    return {int(r.trial_number): (r.config_hash, float(r.miou), r.params_json, int(r.generation))
            for r in done.itertuples()}


def _pending(exp: Path) -> dict:
    try:
        return {t["number"]: t["params"] for t in json.loads((exp / "pending.json").read_text())["trials"]}
    except (OSError, ValueError, KeyError):
        return {}


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def killed_search(tiny, tmp_path_factory):
    """The search killed N_KILLS times and resumed to the end; what was seen before each kill."""
    _, ck, pr = tiny
    d = tmp_path_factory.mktemp("kill")
    spec = _sleepy_spec(d, ck, pr)
    exp = d / "exp_kill"
    seed = int(os.environ.get("SPARSESEARCH_KILL_SEED", random.SystemRandom().randrange(1 << 30)))
    rng = random.Random(seed)
    raytmp = tempfile.mkdtemp(prefix="ssk", dir="/tmp")  # short: Ray's unix socket paths must fit
    env = cli_env(RAY_TMPDIR=raytmp)
    seen_complete: dict = {}
    interrupted: dict = {}  # trial number -> params of trials in flight at a kill
    kills = []
    try:
        for i in range(N_KILLS):
            cmd = ["resume", str(exp)] if (exp / "experiment.json").exists() else ["run", str(spec)]
            pend_before = (exp / "pending.json").stat().st_mtime_ns if (exp / "pending.json").exists() else 0
            log = open(d / f"kill{i}.log", "w")
            p = subprocess.Popen([sys.executable, "-m", "search.cli", *cmd, "--no-progress"], cwd=ROOT, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            phase = "start" if i % 2 == 0 else "trials"
            if phase == "trials":  # wait for this driver's first batch: pending.json rewritten
                while p.poll() is None:
                    pj = exp / "pending.json"
                    if pj.exists() and pj.stat().st_mtime_ns != pend_before:
                        break
                    time.sleep(0.05)
            time.sleep(rng.uniform(0.5, 4.0))
            finished = p.poll() is not None
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
            log.close()
            killed = kill_session(p.pid)  # leftovers of the embedded Ray (none is expected to resist)
            assert session_pids(p.pid) == [], f"seed {seed}: processes of the killed driver survive"
            df = _rows(exp)
            now_complete = _complete_rows(df)
            for n, v in seen_complete.items():  # nothing recorded is ever lost or changed
                assert now_complete.get(n) == v, f"seed {seed}: complete trial {n} changed after kill {i}"
            seen_complete.update(now_complete)
            logged = set() if df is None else set(df["trial_number"])
            for n, params in _pending(exp).items():
                if n not in logged:
                    interrupted.setdefault(n, params)
            kills.append({"i": i, "cmd": cmd[0], "phase": phase, "finished_before_kill": finished,
                          "rows": 0 if df is None else len(df), "leftover_pids_killed": len(killed)})
        final = run_cli("resume", str(exp), "--json", "--no-progress", env=env, check=True)
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    return {"exp": exp, "spec": spec, "seed": seed, "seen_complete": seen_complete, "kills": kills,
            "interrupted": interrupted, "summary": json.loads(final.stdout)}


@pytest.mark.slow
def test_kill9_at_random_moments_then_resume_loses_nothing(killed_search):
    from search.trial_log import FINAL_STATUSES, final_trials, load_trials

    ks = killed_search
    seed, exp = ks["seed"], ks["exp"]
    print(f"kill seed {seed}: {ks['kills']}")
    assert any(k["phase"] == "trials" and not k["finished_before_kill"] and k["rows"] for k in ks["kills"]), \
        f"seed {seed}: no kill landed in the trial loop: {ks['kills']}"
    df = load_trials(exp)
    fin = final_trials(df)
    # exactly n_trials trials 0..n-1, one final row each, no duplicate
    assert sorted(fin["trial_number"]) == list(range(N_TRIALS)), f"seed {seed}"
    finals = df[df["status"].isin(FINAL_STATUSES)]
    assert not finals["trial_number"].duplicated().any(), f"seed {seed}: duplicate final rows"
    assert len(finals) == N_TRIALS
    assert ks["summary"]["n_trials"] == N_TRIALS
    # every complete row seen before a kill is still there with the same values
    now = _complete_rows(df)
    for n, v in ks["seen_complete"].items():
        assert now.get(n) == v, f"seed {seed}: trial {n}"
    # no config evaluated twice on this checkpoint, across all the kills
    done = df[df["status"] == "complete"]
    assert not done["config_hash"].duplicated().any(), f"seed {seed}: a config was evaluated twice"
    # trials in flight at a kill were re-run once, with their original parameters
    for n, params in ks["interrupted"].items():
        rows = finals[finals["trial_number"] == n]
        assert len(rows) == 1 and json.loads(rows["params_json"].iloc[0]) == params, f"seed {seed}: trial {n}"
    # the generation state survived: batches of one population, generation = number // population
    assert (fin["generation"] == fin["trial_number"] // POP).all(), \
        f"seed {seed}: {fin[['trial_number', 'generation']].values.tolist()}"
    assert json.loads((exp / "pending.json").read_text()) == {"trials": []}


@pytest.mark.slow
def test_resume_finished_is_a_noop_and_larger_budget_continues_after_moving_aside_a_corrupt_part(killed_search,
                                                                                                  tmp_path):
    from search.trial_log import FINAL_STATUSES, final_trials, load_trials

    exp = tmp_path / "exp"
    shutil.copytree(killed_search["exp"], exp)
    before = load_trials(exp)
    # a finished experiment: resume evaluates nothing (and starts no Ray)
    out = json.loads(run_cli("resume", str(exp), "--json", "--no-progress", check=True).stdout)
    assert out["n_trials"] == N_TRIALS and out["trials_this_run"] == 0
    assert len(load_trials(exp)) == len(before)

    # corrupt the part that holds a complete trial: resume and pareto refuse with one line naming it
    parts = sorted((exp / "trials").glob("part-*.parquet"))
    victim = next(p for p in parts if "complete" in pq.read_table(p)["status"].to_pylist())
    lost = set(pq.read_table(victim)["trial_number"].to_pylist())
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    snapshot = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (exp / "trials").iterdir()}
    for args in (("resume", str(exp), "--n-trials", "48"), ("pareto", str(exp))):
        r = run_cli(*args)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2, r.stderr
        assert len(err) == 1 and str(victim) in err[0] and "sparsesearch: error:" in err[0], err
    # nothing recorded was touched (no part rewritten, removed or added), the lock is free again
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (exp / "trials").iterdir()} == snapshot

    # the fix the message gives: move the part aside; resume then refills its trial numbers and goes on
    victim.rename(victim.parent / (".corrupt-" + victim.name))
    out = json.loads(run_cli("resume", str(exp), "--n-trials", "48", "--json", "--no-progress", check=True).stdout)
    df = load_trials(exp)
    fin = final_trials(df)
    assert sorted(fin["trial_number"]) == list(range(48)) and out["n_trials"] == 48
    assert not df[df["status"].isin(FINAL_STATUSES)]["trial_number"].duplicated().any()
    kept = before[~before["trial_number"].isin(lost)]
    merged = kept.merge(df, on=["trial_number", "status", "config_hash", "attempt"], how="left", indicator=True)
    assert (merged["_merge"] == "both").all()  # every other recorded row is still there
    assert not df[df["status"] == "complete"]["config_hash"].duplicated().any()


def _frozen_experiment(tiny, tmp_path, name):
    """An experiment directory as `run` leaves it right after start-up (no Ray needed)."""
    from search.policy import SearchPolicy
    from search.runner import _freeze, _prepare_dir
    from search.spec import load_spec

    d, ck, pr = tiny
    own = tmp_path / name
    own.mkdir()
    ck2 = own / "tiny.safetensors"
    shutil.copyfile(ck, ck2)
    shutil.copyfile(ck.with_suffix(".json"), ck2.with_suffix(".json"))
    pr2 = own / "pred.json"
    shutil.copyfile(pr, pr2)
    spec_path = _sleepy_spec(own, ck2, pr2, name=name, n_trials=8)
    spec = load_spec(spec_path)
    exp = _prepare_dir(spec)
    _freeze(spec, exp, SearchPolicy.from_spec(spec))
    return own, spec_path, exp, ck2, pr2


def test_resume_refuses_changed_checkpoint_predictor_or_space(tiny, tmp_path):
    from search.testing import make_tiny_checkpoint as remake

    own, spec_path, exp, ck2, pr2 = _frozen_experiment(tiny, tmp_path, "frozen")
    # the checkpoint re-saved with other weights
    remake(own, seed=1)
    r = run_cli("resume", str(exp))
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "checkpoint" in err[0] and str(ck2) in err[0] and "changed" in err[0] and "fix:" in err[0]
    assert not (exp / "trials").exists()  # refused before anything was written

    own, spec_path, exp, ck2, pr2 = _frozen_experiment(tiny, tmp_path, "pred")
    pr2.write_text(pr2.read_text().replace("{", "{\"x\": 1, ", 1))
    r = run_cli("resume", str(exp))
    assert r.returncode == 2 and "predictor" in r.stderr and str(pr2) in r.stderr, r.stderr

    own, spec_path, exp, ck2, pr2 = _frozen_experiment(tiny, tmp_path, "space")
    frozen = json.loads((exp / "experiment.json").read_text())
    frozen["spec"]["space"]["ratios"] = [0.0, 0.5]
    (exp / "experiment.json").write_text(json.dumps(frozen))
    r = run_cli("resume", str(exp))
    assert r.returncode == 2 and "search space" in r.stderr, r.stderr


_HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from search.runner import _Lock
with _Lock(Path({exp!r})):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_driver_on_a_locked_experiment_exits_2_and_a_killed_holder_frees_it(tiny, tmp_path, spawned):
    from search.runner import _Lock

    own, spec_path, exp, ck2, pr2 = _frozen_experiment(tiny, tmp_path, "locked")
    holder = spawned.popen([sys.executable, "-c", _HOLD.format(root=str(ROOT), exp=str(exp))],
                           stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    for args in (("resume", str(exp)), ("run", str(spec_path))):
        r = run_cli(*args)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1, r.stderr
        assert "in use by another sparsesearch driver" in err[0] and f"pid {holder.pid}" in err[0], err
    # kill -9 the holder: the kernel drops its flock, the stale .lock file does not block anyone
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (exp / ".lock").exists()
    with _Lock(exp):
        assert f"pid {os.getpid()}" in (exp / ".lock").read_text()


@pytest.mark.slow
def test_restore_rebuilds_the_sampler_state(killed_search, tmp_path):
    """restore(): values, constraints (feasibility) and generations of every logged trial, no Ray."""
    from search.runner import _Search
    from search.samplers import is_feasible, trial_generation
    from search.spec import load_spec
    from search.trial_log import final_trials, load_trials

    exp = tmp_path / "exp"
    shutil.copytree(killed_search["exp"], exp)
    s = _Search(load_spec(killed_search["spec"]), exp, progress=False)
    assert s.restore() == [] and s.free_numbers == [] and s.next_number == N_TRIALS
    fin = final_trials(load_trials(exp)).set_index("trial_number")
    trials = {t.user_attrs["number"]: t for t in s.study.trials}
    assert sorted(trials) == list(range(N_TRIALS))
    for n, t in trials.items():
        row = fin.loc[n]
        assert is_feasible(t) == (row["status"] != "rejected"), n
        assert trial_generation(t) == row["generation"] == n // POP
        if row["status"] in ("complete", "cached"):
            assert t.values[0] == row["miou"] and t.values[1] == row["predicted_latency_ms"]
    # the next ask continues the evolution: generation N_TRIALS // POP, number N_TRIALS
    p = s.ask()
    assert p.number == N_TRIALS and p.generation == N_TRIALS // POP


def test_result_cache_key_groups_configs_that_keep_the_same_windows(tiny, tmp_path):
    """Ratios that give every block the same kept-window count share one evaluation (SearchPolicy.key)."""
    from search.runner import _Search
    from search.space import Config
    from search.spec import load_spec

    _, ck, pr = tiny
    s = _Search(load_spec(write_spec(tmp_path, ck, pr)), tmp_path / "exp", progress=False)
    nw = s.policy.arch_model.backbone.num_windows(None)
    assert nw[0] == [16, 16] and nw[2] == [1, 1]  # tiny supernet at 112 px
    d = [len(r) for r in nw]

    def key(stage, r):
        return s.policy.key(Config([[r] * n if i == stage else [0.0] * n for i, n in enumerate(d)]))

    assert key(2, 0.2) == key(2, 0.6)  # one window: any ratio > 0 keeps int(1 * (1 - r)) = 0
    assert key(2, 0.2) != key(2, 0.0)
    assert key(0, 0.2) != key(0, 0.4)  # 16 windows: keeps 12 vs 9
    assert key(0, 0.0) == key(2, 0.0)  # both dense
