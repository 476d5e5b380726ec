"""Bad input, as a hostile user would give it (issue 16): every case exits 2 with exactly one
``sparsesearch: error:`` line naming the file at fault and the fix, prints no traceback, and leaves every
recorded Parquet part byte-identical. Where the run should go on (an evaluator returning NaN) the trial is
logged ``failed`` and the experiment stays resumable.

Most cases run the CLI in-process (``search.cli.main``: no interpreter start-up per case); the cases that
involve Ray or its environment run it in a subprocess.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli_env, run_cli
from e2e_util import write_spec

pytestmark = pytest.mark.slow


def cli(*args: str):
    """(exit code, stdout, stderr) of ``sparsesearch ARGS`` run in this process."""
    from search.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def parts(exp: Path) -> dict:
    t = exp / "trials"
    return {p.name: p.read_bytes() for p in sorted(t.glob("part-*"))} if t.is_dir() else {}


def assert_user_error(code, err, *names, out=""):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("sparsesearch: error: "), lines[0]
    assert "Traceback" not in err and "Traceback" not in out
    assert "fix" in lines[0], lines[0]
    for n in names:
        assert str(n) in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model


@pytest.fixture()
def own(tiny, tmp_path):
    """A private copy of the tiny checkpoint + predictor and a valid spec using them."""
    _, ck, pr = tiny
    ck2, pr2 = tmp_path / "tiny.safetensors", tmp_path / "pred.json"
    shutil.copyfile(ck, ck2)
    shutil.copyfile(ck.with_suffix(".json"), ck2.with_suffix(".json"))
    shutil.copyfile(pr, pr2)
    spec = write_spec(tmp_path, ck2, pr2, name="bad", n_trials=6, population=4, workers=1)
    return {"dir": tmp_path, "ck": ck2, "side": ck2.with_suffix(".json"), "pr": pr2, "spec": spec,
            "exp": tmp_path / "exp_bad"}


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished tiny experiment (noop evaluator), copied by the tests that corrupt it."""
    _, ck, pr = tiny
    d = tmp_path_factory.mktemp("finished")
    spec = write_spec(d, ck, pr, name="done", n_trials=8, population=4, workers=1)
    spec.write_text(spec.read_text().replace("[evaluator]\n", '[evaluator]\nname = "search.testing:noop"\n'))
    run_cli("run", str(spec), "--no-progress", check=True)
    return d / "exp_done"


@pytest.fixture()
def exp(finished, tmp_path):
    e = tmp_path / "exp_done"
    shutil.copytree(finished, e)
    frozen = json.loads((e / "experiment.json").read_text())
    frozen["spec"]["output_dir"] = str(e)
    (e / "experiment.json").write_text(json.dumps(frozen))
    return e


def edit_spec(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path


# ---- specs -------------------------------------------------------------------------------------
SPEC_CASES = {
    "unknown_key": ("n_trials = 6", "n_trials = 6\nbogus = 1", "bogus"),
    "wrong_type": ("n_trials = 6", 'n_trials = "six"', "n_trials"),
    "bad_toml": ("n_trials = 6", "n_trials = = 6", "line"),
    "unknown_sampler": ('name = "nsga2"', 'name = "annealing"', "annealing"),
    "option_of_another_sampler": ("population_size = 4", "population_size = 4\nparents = 2", "parents"),
    "both_budgets": ("budget_fraction = 0.95", "budget_fraction = 0.8\nbudget_ms = 3.0", "budget"),
    "ratio_out_of_range": ("ratios = [0.0, 0.2, 0.4, 0.6]", "ratios = [0.0, 0.2, 1.4]", "ratios"),
    "zero_subset": ("subset_size = 4", "subset_size = 0", "subset_size"),
    "mosaic_unknown_key": ("batch_size = 4\n", "batch_size = 4\nmosaic = {colour = 1}\n", "colour"),
    "malformed_evaluator": ("[evaluator]\n", '[evaluator]\nname = "not a module"\n', "evaluator"),
    "negative_fraction": ("budget_fraction = 0.95", "budget_fraction = -0.5", "budget_fraction"),
    "gpus_negative": ("max_retries = 1", "max_retries = 1\ngpus_per_worker = -1", "gpus_per_worker"),
    "reserved_metric": ("n_trials = 6", 'n_trials = 6\n[objectives]\nmetric = "params"', "params"),
    "negative_seed": ("seed = 0", "seed = -1", "seed"),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_bad_spec(own, case):
    old, new, name = SPEC_CASES[case]
    edit_spec(own["spec"], old, new)
    code, out, err = cli("run", own["spec"])
    assert_user_error(code, err, own["spec"].name, name, out=out)
    assert not own["exp"].exists() or not any(own["exp"].iterdir())


def test_missing_spec_file(tmp_path):
    code, out, err = cli("run", tmp_path / "nope.toml")
    assert_user_error(code, err, "nope.toml", out=out)


def test_output_dir_is_a_file(own):
    own["exp"].write_text("x")
    code, out, err = cli("run", own["spec"])
    assert_user_error(code, err, own["exp"], out=out)


# ---- checkpoints ---------------------------------------------------------------------------------
def _ck_missing_weights(o):
    o["ck"].unlink()
    return o["ck"]


def _ck_missing_sidecar(o):
    o["side"].unlink()
    return o["side"]


def _ck_sidecar_not_json(o):
    o["side"].write_text("{not json")
    return o["side"]


def _ck_weights_changed(o):
    data = bytearray(o["ck"].read_bytes())
    data[-1] ^= 0xFF
    o["ck"].write_bytes(bytes(data))
    return o["ck"]


def _ck_not_safetensors(o):
    from supernet.fileio import sha256_file

    o["ck"].write_bytes(b"\x00" * 64)
    meta = json.loads(o["side"].read_text())
    meta["weights_sha256"] = sha256_file(o["ck"])
    o["side"].write_text(json.dumps(meta))
    return o["ck"]


def _ck_sidecar_wrong_depths(o):
    meta = json.loads(o["side"].read_text())
    meta["arch"]["timm_kwargs"]["depths"] = [2, 2, 6, 2]
    o["side"].write_text(json.dumps(meta))
    return o["side"]


def _ck_sidecar_bad_sha_field(o):
    meta = json.loads(o["side"].read_text())
    meta["weights_sha256"] = "xyz"
    o["side"].write_text(json.dumps(meta))
    return o["side"]


def _ck_sidecar_no_arch(o):
    meta = json.loads(o["side"].read_text())
    del meta["arch"]
    o["side"].write_text(json.dumps(meta))
    return o["side"]


@pytest.mark.parametrize("corrupt", [_ck_missing_weights, _ck_missing_sidecar, _ck_sidecar_not_json,
                                     _ck_weights_changed, _ck_not_safetensors, _ck_sidecar_wrong_depths,
                                     _ck_sidecar_bad_sha_field, _ck_sidecar_no_arch],
                         ids=lambda f: f.__name__[4:])
def test_bad_checkpoint_is_found_before_anything_is_written(own, corrupt):
    at_fault = corrupt(own)
    code, out, err = cli("run", own["spec"])
    assert_user_error(code, err, at_fault.name, out=out)
    assert not (own["exp"] / "experiment.json").exists()  # nothing written: fixing the file is enough


def test_fixing_the_file_then_run_works(own):
    """A failed run leaves nothing behind, so after the fix `run` starts (no 'resume' / 'restore' circle)."""
    good = own["side"].read_text()
    _ck_sidecar_not_json(own)
    code, _, _ = cli("run", own["spec"])
    assert code == 2 and not (own["exp"] / "experiment.json").exists()
    own["side"].write_text(good)
    spec = edit_spec(own["spec"], "[evaluator]\n", '[evaluator]\nname = "search.testing:noop"\n')
    run_cli("run", str(spec), "--no-progress", check=True)
    assert (own["exp"] / "experiment.json").exists()


# ---- predictors ----------------------------------------------------------------------------------
def _pred_edit(fn):
    def corrupt(o):
        t = json.loads(o["pr"].read_text())
        fn(t)
        o["pr"].write_text(json.dumps(t))
        return o["pr"]
    corrupt.__name__ = fn.__name__
    return corrupt


@_pred_edit
def negative_fixed(t):
    t["fixed_ms"]["head"] = -5.0


@_pred_edit
def zero_slope(t):
    t["calibration"]["a"] = 0.0


@_pred_edit
def negative_predictions(t):
    t["calibration"]["b"] = -1e6


@_pred_edit
def other_version(t):
    t["format_version"] = 2


@_pred_edit
def other_depths(t):
    t["depths"] = [2, 2, 6, 2]
    t["num_windows"] = [[16, 16], [4, 4], [1] * 6, [1, 1]]
    t["blocks"] = [t["blocks"][0], t["blocks"][1], [t["blocks"][2][0]] * 6, t["blocks"][3]]


@_pred_edit
def other_img_size(t):
    t["img_size"] = [224, 224]


@_pred_edit
def negative_block(t):
    t["blocks"][0][0]["ms"][-1] = -1.0


def _pred_not_json(o):
    o["pr"].write_text("[1, 2")
    return o["pr"]


def _pred_missing(o):
    o["pr"].unlink()
    return o["pr"]


@pytest.mark.parametrize("corrupt", [negative_fixed, zero_slope, negative_predictions, other_version, other_depths,
                                     other_img_size, negative_block, _pred_not_json, _pred_missing],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_predictor_is_refused_before_anything_is_written(own, corrupt):
    at_fault = corrupt(own)
    code, out, err = cli("run", own["spec"])
    assert_user_error(code, err, at_fault.name, out=out)
    assert not (own["exp"] / "experiment.json").exists()


def test_budget_that_admits_no_config(own):
    edit_spec(own["spec"], "budget_fraction = 0.95", "budget_ms = 0.0001")
    code, out, err = cli("run", own["spec"])
    assert_user_error(code, err, "budget", "sparsest", out=out)


# ---- evaluators ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nosuchpkg.mod:score", "search.testing:nope"])
def test_evaluator_that_cannot_be_imported(own, name):
    edit_spec(own["spec"], "[evaluator]\n", f'[evaluator]\nname = "{name}"\n')
    code, out, err = cli("run", own["spec"])
    assert_user_error(code, err, name, out=out)
    assert not (own["exp"] / "experiment.json").exists()


def test_nan_metric_is_a_failed_trial_and_the_experiment_stays_resumable(own):
    from search.trial_log import final_trials, load_trials

    edit_spec(own["spec"], "[evaluator]\n", '[evaluator]\nname = "bad_evaluators:nan_every_third"\n')
    env = cli_env(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), cli_env()["PYTHONPATH"]]))
    run_cli("run", str(own["spec"]), "--no-progress", env=env, check=True)
    df = final_trials(load_trials(own["exp"]))
    failed = df[df["status"] == "failed"]
    assert len(failed) > 0 and failed["error"].str.contains("not finite").all()
    assert df.loc[df["status"] == "complete", "miou"].notna().all()
    before = parts(own["exp"])
    r = run_cli("resume", str(own["exp"]), "--n-trials", "9", "--no-progress", env=env, check=True)
    after = parts(own["exp"])
    assert all(after[k] == v for k, v in before.items()) and "Traceback" not in r.stderr


def test_metric_missing_from_the_result_stops_with_one_line(own):
    from search.trial_log import load_trials

    edit_spec(own["spec"], "[evaluator]\n", '[evaluator]\nname = "bad_evaluators:wrong_key"\n')
    env = cli_env(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), cli_env()["PYTHONPATH"]]))
    r = run_cli("run", str(own["spec"]), "--no-progress", env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("sparsesearch: error:")]
    assert r.returncode == 2 and len(lines) == 1 and "'miou'" in lines[0] and "accuracy" in lines[0]
    assert "Traceback" not in r.stderr


# ---- experiment directory files --------------------------------------------------------------------
def _exp_json_not_json(e):
    (e / "experiment.json").write_text("{")
    return "experiment.json"


def _exp_json_no_spec(e):
    (e / "experiment.json").write_text(json.dumps({"format_version": 1}))
    return "experiment.json"


def _exp_frozen_spec_invalid(e):
    f = json.loads((e / "experiment.json").read_text())
    f["spec"]["n_trials"] = -1
    (e / "experiment.json").write_text(json.dumps(f))
    return "experiment.json"


def _pending_corrupt(e):
    (e / "pending.json").write_text("[[[")
    return "pending.json"


def _pending_wrong_shape(e):
    (e / "pending.json").write_text(json.dumps({"trials": [{"number": "x"}]}))
    return "pending.json"


def _reference_corrupt(e):
    (e / "reference.json").write_text("{\"dense\": ")
    return "reference.json"


def _part_truncated(e):
    p = sorted((e / "trials").glob("part-*"))[0]
    p.write_bytes(p.read_bytes()[:100])
    return p.name


def _part_bad_params(e):
    p = sorted((e / "trials").glob("part-*"))[0]
    t = pq.read_table(p)
    col = t.column("params_json").to_pylist()
    col[0] = "{bad json"
    t = t.set_column(t.schema.get_field_index("params_json"), "params_json", pa.array(col, pa.string()))
    pq.write_table(t, p)
    return "trials"


@pytest.mark.parametrize("corrupt", [_exp_json_not_json, _exp_json_no_spec, _exp_frozen_spec_invalid, _pending_corrupt,
                                     _pending_wrong_shape, _reference_corrupt, _part_truncated, _part_bad_params],
                         ids=lambda f: f.__name__.strip("_"))
def test_corrupt_bookkeeping_file(exp, corrupt):
    at_fault = corrupt(exp)
    before = parts(exp)
    code, out, err = cli("resume", exp, "--n-trials", "12", "--no-progress")
    assert_user_error(code, err, at_fault, out=out)
    assert parts(exp) == before


def test_run_into_a_folder_with_parts_but_no_experiment_json(exp, own):
    (exp / "experiment.json").unlink()
    before = parts(exp)
    edit_spec(own["spec"], f'output_dir = "{own["exp"]}"', f'output_dir = "{exp}"')
    code, out, err = cli("run", own["spec"])
    assert_user_error(code, err, exp, "trials", out=out)
    assert parts(exp) == before and not (exp / "experiment.json").exists()


@pytest.mark.parametrize("command", ["resume", "pareto", "measure", "confirm"])
def test_not_an_experiment_directory(tmp_path, command):
    code, out, err = cli(command, tmp_path)
    assert_user_error(code, err, tmp_path, out=out)


def test_spec_toml_is_copied_into_the_experiment(finished):
    assert (finished / "spec.toml").is_file() and "name = \"done\"" in (finished / "spec.toml").read_text()


# ---- CLI numbers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, args", [
    ("--n-trials", ("run", "SPEC", "--n-trials", "0")), ("--n-trials", ("run", "SPEC", "--n-trials", "-5")),
    ("--n-trials", ("resume", "EXP", "--n-trials", "abc")), ("--budget-ms", ("pareto", "EXP", "--budget-ms", "nan")),
    ("--budget-ms", ("pareto", "EXP", "--budget-ms", "-1")), ("--budget-ms", ("pareto", "EXP", "--budget-ms", "inf")),
    ("--repeats", ("measure", "EXP", "--repeats", "0")),
    ("--canvases", ("confirm", "EXP", "--canvases", "0")), ("--z", ("confirm", "EXP", "--z", "nan")),
    ("--max-candidates", ("confirm", "EXP", "--max-candidates", "-1")),
    ("--budget-fraction", ("fork", "EXP", "--out", "NEW", "--budget-fraction", "1.5")),
    ("--threads", ("latency", "profile", "--checkpoint", "CK", "--threads", "0", "--out", "x.json")),
    ("--n", ("latency", "validate", "--predictor", "PR", "--checkpoint", "CK", "--n", "-3")),
    ("--seed", ("fork", "EXP", "--out", "NEW", "--seed", "-1")),
    ("--seed", ("fork", "EXP", "--out", "NEW", "--seed", str(2 ** 32))),
], ids=lambda a: a if isinstance(a, str) else "_".join(a[:2]))
def test_bad_numbers(own, exp, flag, args):
    sub = {"SPEC": own["spec"], "EXP": exp, "NEW": own["dir"] / "new", "CK": own["ck"], "PR": own["pr"]}
    before = parts(exp)
    code, out, err = cli(*[sub.get(a, a) for a in args])
    assert_user_error(code, err, flag, out=out)
    assert parts(exp) == before


def test_fork_with_both_budgets(exp, tmp_path):
    code, out, err = cli("fork", exp, "--out", tmp_path / "f", "--budget-ms", "3", "--budget-fraction", "0.5")
    assert_user_error(code, err, "budget", out=out)


def test_pareto_plot_into_a_folder_reports_the_file_it_wrote(exp, tmp_path):
    (tmp_path / "plots").mkdir()
    code, out, err = cli("pareto", exp, "--plot", tmp_path / "plots", "--json")
    assert code == 0, err
    j = json.loads(out)
    assert j["plot"] == str(tmp_path / "plots" / "front.png") and Path(j["plot"]).stat().st_size > 1000
    code, out, _ = cli("pareto", exp, "--plot", tmp_path / "noext", "--json")
    assert json.loads(out)["plot"] == str(tmp_path / "noext.png") and (tmp_path / "noext.png").is_file()


def test_pareto_json_is_strict(exp):
    code, out, _ = cli("pareto", exp, "--json")
    assert code == 0 and "NaN" not in out and "Infinity" not in out
    json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_train_error_is_one_sparsesearch_line(tmp_path):
    bad = tmp_path / "recipe.toml"
    bad.write_text("[train]\nbatch_size = 0\n")
    code, out, err = cli("supernet", "train", bad)
    assert_user_error(code, err, "recipe.toml", "batch_size", out=out)


def test_prune_dimap_records_the_miou_after_pruning(tiny, tmp_path):
    _, ck, _ = tiny
    code, out, err = cli("prune", "dimap", "--checkpoint", ck, "--ratio", "0.3", "--out", tmp_path / "p.safetensors",
                         "--json")
    assert code == 0, err
    side = json.loads((tmp_path / "p.json").read_text())
    rec = side["metrics"]["pruning"]
    assert isinstance(rec["miou_after_pruning"], float) and 0.0 <= rec["miou_after_pruning"] <= 1.0, rec


# ---- the Ray environment ------------------------------------------------------------------------------
def test_embedded_run_is_private_whatever_ray_address_says(own, tmp_path):
    spec = edit_spec(own["spec"], "[evaluator]\n", '[evaluator]\nname = "search.testing:noop"\n')
    marker = Path("/tmp/ray/ray_current_cluster")
    env = cli_env(RAY_ADDRESS="127.0.0.1:1")  # nothing listens there: joining it would fail
    r = run_cli("run", str(spec), "--no-progress", "--json", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["n_trials"] == 6
    assert not marker.exists() or marker.read_text() != "127.0.0.1:1"


def test_dead_address_fails_fast_with_one_line(own):
    spec = edit_spec(own["spec"], "[evaluator]\n", '[evaluator]\nname = "search.testing:noop"\n')
    t0 = time.time()
    r = run_cli("run", str(spec), "--address", "127.0.0.1:1", "--no-progress", timeout=120)
    assert time.time() - t0 <= 30
    assert_user_error(r.returncode, r.stderr, "127.0.0.1:1", out=r.stdout)
    # --address auto is resolved as ray.init resolves it (here RAY_ADDRESS, a dead head) and probed before the
    # experiment folder is made: nothing is written, so the same command runs once the head is up
    r = run_cli("run", str(spec), "--address", "auto", "--no-progress", timeout=120,
                env=cli_env(RAY_ADDRESS="127.0.0.1:1"))
    assert_user_error(r.returncode, r.stderr, "127.0.0.1:1", out=r.stdout)
    assert not (own["exp"] / "experiment.json").exists()


def test_address_auto_is_resolved_as_ray_init_resolves_it(monkeypatch):
    """--address auto with RAY_ADDRESS set: a Ray Client address (ray://) is probed as it is (Ray's bootstrap
    resolver would call it malformed), a plain one through that resolver; the refusal names RAY_ADDRESS, the
    thing to correct."""
    from search.workers import ClusterUnreachableError, check_reachable

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    for env in ("ray://127.0.0.1:1", "127.0.0.1:1", "not-an-address"):
        monkeypatch.setenv("RAY_ADDRESS", env)
        with pytest.raises(ClusterUnreachableError) as e:
            check_reachable("auto", timeout_s=5)
        assert f"RAY_ADDRESS (={env}" in str(e.value) and "fix:" in str(e.value)
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:1")
    with pytest.raises(ClusterUnreachableError, match=r"no Ray cluster answers at ray://127\.0\.0\.1:1 "):
        check_reachable("auto", timeout_s=5)
    with pytest.raises(ClusterUnreachableError, match=r"correct --address / \[ray\] address"):
        check_reachable("127.0.0.1:1", timeout_s=5)


def test_embedded_ray_that_does_not_start_is_retried_then_one_error(monkeypatch):
    """Ray raises a bare Exception when its raylet is not up within 30 s (a machine busy with other work): the
    processes the failed start left are stopped, the embedded start is tried again once, then refused as a
    RayStartError (one line, with the fix), not a traceback. Any other start failure is raised as it is."""
    import subprocess

    import ray

    from search import workers

    calls, left = [], []

    def late(**kw):
        calls.append(kw["address"])
        left.append(subprocess.Popen(["sleep", "60"]))  # what a failed start leaves: a child process
        if len(calls) <= fails:
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", late)
    fails = 1  # late once: the second try starts it
    assert workers.ray_init_local(num_cpus=1) is ray and calls == ["local", "local"]
    assert left[0].poll() is not None and left[1].poll() is None  # the failed start's child stopped, not the good one
    left[1].kill(), left[1].wait()
    calls.clear(), left.clear()
    fails = workers.LOCAL_START_ATTEMPTS  # late every time: one error line naming the cause and the fix
    with pytest.raises(workers.RayStartError, match=r"did not start \(2 tries\): The current node timed out .*fix:"):
        workers.ray_init_local(num_cpus=1)
    assert len(calls) == workers.LOCAL_START_ATTEMPTS and all(p.poll() is not None for p in left)

    def broken(**kw):
        raise ValueError("bad runtime_env")

    monkeypatch.setattr(ray, "init", broken)
    with pytest.raises(ValueError, match="bad runtime_env"):  # not a late raylet: no retry, no RayStartError
        workers.ray_init_local(num_cpus=1)


def test_evaluator_at_another_resolution_than_the_predictor(own):
    """The result cache, the MACs and the predictor all use the search resolution ([evaluator] img_size): a
    predictor profiled at another size is refused, naming it and the command that profiles the right one."""
    edit_spec(own["spec"], "batch_size = 4\n", "batch_size = 4\nimg_size = 224\n")
    code, out, err = cli("run", own["spec"])
    assert_user_error(code, err, own["pr"].name, "224", "--img-size 224", out=out)


def test_extra_non_numeric_metrics_are_dropped_and_the_search_goes_on(own):
    """An evaluator that also returns an array (per-class IoU) or text: the metric is logged, the rest ignored."""
    from search.trial_log import final_trials, load_trials

    edit_spec(own["spec"], "[evaluator]\n", '[evaluator]\nname = "bad_evaluators:with_extras"\n')
    env = cli_env(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), cli_env()["PYTHONPATH"]]))
    r = run_cli("run", str(own["spec"]), "--no-progress", env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    df = final_trials(load_trials(own["exp"]))
    assert (df["status"] != "failed").all() and df["miou"].notna().all()
    extra = json.loads(df["metrics_json"].dropna().iloc[0])
    assert extra["pixel_acc"] == 0.5 and "per_class" not in extra and "note" not in extra


# ---- files of the wrong kind, writes over recorded files, devices and addresses (tenth-session audit) ----------
def test_pareto_refuses_a_reference_file_of_the_wrong_shape_and_an_unwritable_plot_type(exp, tmp_path):
    before = parts(exp)
    code, out, err = cli("pareto", exp, "--plot", tmp_path / "front.txt")
    assert_user_error(code, err, "--plot", ".txt", out=out)
    assert not (tmp_path / "front.txt").exists()
    (exp / "reference.json").write_text("[]")
    code, out, err = cli("pareto", exp, "--json")
    assert_user_error(code, err, "reference.json", out=out)
    assert parts(exp) == before and (exp / "reference.json").read_text() == "[]"


@pytest.mark.parametrize("case", ["spec_is_a_folder", "spec_is_binary", "predictor_is_binary", "sidecar_is_binary"])
def test_files_of_the_wrong_kind_are_one_line_naming_them(own, tmp_path, case):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x80\x81\xfe binary")
    if case == "spec_is_a_folder":
        args, name = ("supernet", "train", tmp_path), tmp_path
    elif case == "spec_is_binary":
        args, name = ("supernet", "train", binary), binary
    elif case == "predictor_is_binary":
        args, name = ("latency", "validate", "--predictor", own["ck"], "--checkpoint", own["ck"]), own["ck"]
    else:
        own["side"].write_bytes(b"\x80\x81 not a sidecar")
        args, name = ("supernet", "export", own["ck"], tmp_path / "copy.safetensors"), own["side"]
    code, out, err = cli(*args)
    assert_user_error(code, err, name, out=out)


def test_commands_never_write_over_the_checkpoint_they_read(own, tmp_path):
    """profile --out and prune dimap --out naming the checkpoint's own weights or sidecar are refused before any
    work, and both files stay byte-identical."""
    before = {p: p.read_bytes() for p in (own["ck"], own["side"])}
    for args in (("latency", "profile", "--checkpoint", own["ck"], "--out", own["side"]),
                 ("latency", "profile", "--checkpoint", own["ck"], "--out", tmp_path / "pred.txt"),
                 ("prune", "dimap", "--checkpoint", own["ck"], "--ratio", "0.3", "--out", own["ck"])):
        code, out, err = cli(*args)
        assert_user_error(code, err, "--out" if args[0] == "latency" else own["ck"].name, out=out)
    assert {p: p.read_bytes() for p in before} == before


def test_an_existing_destination_is_refused_without_overwrite(own, tmp_path):
    """export, prune dimap and profile refuse, before any work, a destination that already exists (weights, the
    sidecar alone, or a predictor): one line naming it and --overwrite, exit 2, the file byte-identical. With
    --overwrite, export replaces it."""
    dst = tmp_path / "copy.safetensors"
    assert cli("supernet", "export", own["ck"], dst)[0] == 0
    pred = tmp_path / "gate.json"
    pred.write_text('{"recorded": true}')
    orphan = tmp_path / "orphan.json"  # a sidecar whose weights are gone is still somebody's record
    orphan.write_text("{}")
    before = {p: p.read_bytes() for p in (dst, dst.with_suffix(".json"), pred, orphan)}
    for args, name in ((("supernet", "export", own["ck"], dst), dst),
                       (("supernet", "export", own["ck"], orphan.with_suffix(".safetensors")), orphan),
                       (("prune", "dimap", "--checkpoint", own["ck"], "--ratio", "0.3", "--out", dst), dst),
                       (("latency", "profile", "--checkpoint", own["ck"], "--out", pred), pred)):
        code, out, err = cli(*args)
        assert_user_error(code, err, name.name, "--overwrite", out=out)
    assert {p: p.read_bytes() for p in before} == before
    assert not orphan.with_suffix(".safetensors").exists()
    code, out, err = cli("supernet", "export", own["ck"], dst, "--storage-dtype", "float32", "--overwrite")
    assert code == 0 and dst.read_bytes() != before[dst]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal where no GPU is present")
def test_a_device_this_machine_lacks_is_one_line(own, tmp_path):
    code, out, err = cli("latency", "profile", "--checkpoint", own["ck"], "--device", "cuda", "--out",
                         tmp_path / "p.json")
    assert_user_error(code, err, "--device cuda", out=out)
    assert not (tmp_path / "p.json").exists()


def test_dimap_report_of_a_model_it_cannot_take_and_a_malformed_jobs_address():
    for args, name in ((("dimap", "report", "--model", "nosuchmodel"), "nosuchmodel"),
                       (("dimap", "report", "--model", "resnet18"), "resnet18"),
                       (("jobs", "list", "--address", "127.0.0.1:99999"), "--address")):
        code, out, err = cli(*args)
        assert_user_error(code, err, name, out=out)


def test_search_notes_go_to_stderr_under_json(exp, monkeypatch):
    """resume (as run and fork) prints its notes (a parent gone, a drift) on stderr when --json asks for exactly
    one JSON object on stdout, and on stdout with the summary otherwise."""
    import search.runner as runner

    def fake_resume(exp_dir, **kw):  # the runner's notes go through the log it is given
        kw["log"]("note: a parent folder is gone")
        return runner.experiment_summary(exp_dir)

    monkeypatch.setattr(runner, "resume", fake_resume)
    code, out, err = cli("resume", exp, "--json", "--no-progress")
    assert code == 0 and json.loads(out)["n_trials"] > 0 and "note: a parent folder is gone" in err
    code, out, err = cli("resume", exp, "--no-progress")
    assert code == 0 and out.startswith("note: a parent folder is gone\n") and "note" not in err


def test_a_plot_path_under_a_file_is_one_line(exp, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, out, err = cli("pareto", exp, "--plot", tmp_path / "afile" / "front.png")
    assert_user_error(code, err, "afile", out=out)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal where no GPU is present")
def test_a_predictor_profiled_on_a_gpu_this_machine_lacks_is_one_line_naming_it(own):
    pr = json.loads(own["pr"].read_text())
    pr["fingerprint"]["device"] = "cuda"
    own["pr"].write_text(json.dumps(pr))
    code, out, err = cli("latency", "validate", "--predictor", own["pr"], "--checkpoint", own["ck"], "--n", "2")
    assert_user_error(code, err, own["pr"], "profiled on cuda", "latency profile --device cpu", out=out)


# ---- files a user may edit by hand, valid JSON / Parquet of the wrong shape (eighteenth-session review) ---------
def _measured_list(e):
    (e / "measured.json").write_text(json.dumps({"configs": [1]}))
    return "measured.json", ("pareto",)


def _measured_text_latency(e):
    (e / "measured.json").write_text(json.dumps({"configs": {"h": {
        "config": [[0.0]], "trial_number": 0, "predicted_latency_ms": 1.0, "measured_latency_ms": "abc"}}}))
    return "measured.json", ("pareto",)


def _confirmed_strings(e):
    (e / "confirmed.json").write_text(json.dumps({"configs": {"h": "a"}}))
    return "confirmed.json", ("pareto",)


def _confirmed_top_level_list(e):
    (e / "confirmed.json").write_text("[1, 2, 3]")
    return "confirmed.json", ("pareto",)


def _reference_without_latency(e):
    ref = json.loads((e / "reference.json").read_text())
    for v in ref.values():
        v.pop("predicted_latency_ms")
    (e / "reference.json").write_text(json.dumps(ref))
    return "reference.json", ("pareto", "resume")


def _frozen_budget_text(e):
    f = json.loads((e / "experiment.json").read_text())
    f["budget_ms"] = "fast"
    (e / "experiment.json").write_text(json.dumps(f))
    return "experiment.json", ("pareto", "resume")


def _part_with_two_columns(e):
    pq.write_table(pa.table({"trial_number": pa.array([99], pa.int64()), "status": ["complete"]}),
                   e / "trials" / "part-999999-aaaaaaaa.parquet")
    return "part-999999-aaaaaaaa.parquet", ("pareto", "resume")


@pytest.mark.parametrize("corrupt", [_measured_list, _measured_text_latency, _confirmed_strings,
                                     _confirmed_top_level_list, _reference_without_latency, _frozen_budget_text,
                                     _part_with_two_columns], ids=lambda f: f.__name__.strip("_"))
def test_hand_edited_files_of_the_wrong_shape_are_one_line(exp, corrupt):
    at_fault, commands = corrupt(exp)
    before = parts(exp)
    for command in commands:
        args = ("resume", exp, "--n-trials", "12", "--no-progress") if command == "resume" else (command, exp)
        code, out, err = cli(*args)
        assert_user_error(code, err, at_fault, out=out)
    assert parts(exp) == before


def test_a_spec_without_objectives_is_read_with_its_defaults(exp):
    f = json.loads((exp / "experiment.json").read_text())
    f["spec"].pop("objectives")
    (exp / "experiment.json").write_text(json.dumps(f))
    code, out, err = cli("pareto", exp, "--json")
    assert code == 0, err
    assert json.loads(out)["front"]


def test_pareto_history_of_an_experiment_with_no_trials_yet(exp):
    for p in (exp / "trials").glob("part-*"):
        p.unlink()
    code, out, err = cli("pareto", exp, "--history", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["front"] == [] and got["history"] == []


def test_calibration_needs_two_configs(own, tmp_path):
    code, out, err = cli("latency", "profile", "--checkpoint", own["ck"], "--calib-configs", "1",
                         "--out", tmp_path / "p.json")
    assert code == 2 and "--calib-configs" in err and "Traceback" not in err
    assert not (tmp_path / "p.json").exists()


def test_a_sidecar_ratio_out_of_range_is_one_line_naming_the_sidecar(own, tmp_path):
    side = json.loads(own["side"].read_text())
    side["search_space"] = {"ratios": [0.0, 1.5]}
    own["side"].write_text(json.dumps(side))
    code, out, err = cli("latency", "profile", "--checkpoint", own["ck"], "--out", tmp_path / "p.json")
    assert_user_error(code, err, own["side"].name, "search_space.ratios", out=out)


MOSAIC_CASES = {
    "mosaic_bad_value": ("batch_size = 4\n", 'batch_size = 4\nmosaic = {min_items = "lots"}\n', "min_items"),
    "kwargs_unknown": ("batch_size = 4\n", "batch_size = 4\nkwargs = {colour = 1}\n", "colour"),
    "data_dir_missing": ("batch_size = 4\n", 'batch_size = 4\nkwargs = {data_dir = "/nonexistent/fmnist"}\n',
                         "/nonexistent/fmnist"),
}


@pytest.mark.parametrize("case", sorted(MOSAIC_CASES))
def test_what_only_the_workers_would_find_is_found_before_anything_is_written(own, case):
    old, new, name = MOSAIC_CASES[case]
    edit_spec(own["spec"], old, new)
    code, out, err = cli("run", own["spec"])
    assert_user_error(code, err, name, out=out)
    assert not (own["exp"] / "experiment.json").exists()


def test_prune_dimap_names_the_bad_module_ratio_and_the_fix(own, tmp_path):
    code, out, err = cli("prune", "dimap", "--checkpoint", own["ck"], "--module-ratios", "qkv=abc",
                         "--out", tmp_path / "p.safetensors")
    assert_user_error(code, err, "qkv=abc", out=out)


@pytest.mark.parametrize("command", ["measure", "confirm"])
def test_measure_and_confirm_refuse_a_checkpoint_changed_since_the_search(exp, tmp_path, command):
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the experiment's weights")
    f = json.loads((exp / "experiment.json").read_text())
    f["spec"]["supernet"]["checkpoint"] = str(other)
    (exp / "experiment.json").write_text(json.dumps(f))
    before = parts(exp)
    code, out, err = cli(command, exp, "--no-progress")
    assert_user_error(code, err, "other.safetensors", "changed", out=out)
    assert parts(exp) == before and not (exp / f"{command}ed.json").exists()


def test_fork_into_the_parent_experiment_is_refused(exp):
    before = parts(exp)
    code, out, err = cli("fork", exp, "--out", exp / "trials" / "child", "--budget-fraction", "0.9")
    assert_user_error(code, err, "inside the experiment", out=out)
    assert parts(exp) == before and not (exp / "trials" / "child").exists()


@pytest.mark.parametrize("device", ["xpu", "meta", "hpu"])
def test_devices_this_project_does_not_run_on_are_one_line(own, tmp_path, device):
    code, out, err = cli("latency", "profile", "--checkpoint", own["ck"], "--device", device,
                         "--out", tmp_path / "p.json")
    assert_user_error(code, err, device, out=out)
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("edit, words", [
    (lambda p: p.update(ratios=[0.0, 1.5]), "ratios"),
    (lambda p: p.update(img_size=[0, 0]), "img_size"),
    (lambda p: p.update(batch_size=0), "batch_size"),
    (lambda p: (p.pop("img_size", None), p["fingerprint"].update(img_size="abc")), "fingerprint.img_size"),
    (lambda p: p["fingerprint"].update(threads="many"), "fingerprint.threads")],
    ids=["ratio_over_1", "img_size_zero", "batch_too_large", "fingerprint_img_size_text", "threads_text"])
def test_predictor_fields_a_reader_uses_are_typed(own, edit, words):
    p = json.loads(own["pr"].read_text())
    edit(p)
    own["pr"].write_text(json.dumps(p))
    code, out, err = cli("latency", "validate", "--predictor", own["pr"], "--checkpoint", own["ck"], "--n", "2",
                         "--repeats", "1")
    assert_user_error(code, err, own["pr"].name, words, out=out)


# ---- third review: resume bookkeeping, joint fronts, plots, job addresses, the Python API ----------------------
def _a_logged_params(exp):
    t = pq.read_table(sorted((exp / "trials").glob("part-*"))[0]).to_pylist()
    return json.loads(next(r["params_json"] for r in t if r["params_json"]))


def test_resume_below_the_trials_done_keeps_the_pending_trials(exp):
    pending = {"trials": [{"number": 100, "params": _a_logged_params(exp)}]}
    (exp / "pending.json").write_text(json.dumps(pending))
    before = parts(exp)
    code, out, err = cli("resume", exp, "--n-trials", "8", "--no-progress")
    assert_user_error(code, err, "pending.json", "--n-trials 9", out=out)
    assert json.loads((exp / "pending.json").read_text()) == pending and parts(exp) == before


@pytest.mark.parametrize("case", ["outside_the_choices", "negative_number"])
def test_pending_trials_outside_the_space_are_refused(exp, case):
    params = _a_logged_params(exp)
    if case == "outside_the_choices":
        params[sorted(params)[0]] = 0.15
    number = -5 if case == "negative_number" else 100
    (exp / "pending.json").write_text(json.dumps({"trials": [{"number": number, "params": params}]}))
    before = parts(exp)
    code, out, err = cli("resume", exp, "--n-trials", "12", "--no-progress")
    assert_user_error(code, err, "pending.json", out=out)
    assert parts(exp) == before


def test_rows_scored_on_another_checkpoint_stop_the_resume(exp):
    p = sorted((exp / "trials").glob("part-*"))[0]
    t = pq.read_table(p)
    col = t.column("checkpoint_sha256").to_pylist()
    t = t.set_column(t.schema.get_field_index("checkpoint_sha256"), t.schema.field("checkpoint_sha256"),
                     pa.array(["d" * 64] * len(col), t.schema.field("checkpoint_sha256").type))
    pq.write_table(t, p)
    before = parts(exp)
    code, out, err = cli("resume", exp, "--n-trials", "12", "--no-progress")
    assert_user_error(code, err, "trials", "another checkpoint", out=out)
    assert parts(exp) == before


def test_a_plot_into_the_trial_log_is_refused(exp):
    before = parts(exp)
    for target in (exp / "trials", exp / "trials" / "front.png"):
        code, out, err = cli("pareto", exp, "--plot", target)
        assert_user_error(code, err, "trial log", out=out)
    assert parts(exp) == before and not (exp / "trials" / "front.png").exists()


def test_joint_fronts_refuse_repeats_other_predictors_and_history(exp, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(exp, twin)
    code, out, err = cli("pareto", exp, exp)
    assert_user_error(code, err, "twice", out=out)
    code, out, err = cli("pareto", exp, twin, "--history")
    assert_user_error(code, err, "--history", out=out)
    f = json.loads((twin / "experiment.json").read_text())
    f["predictor_sha256"] = "e" * 64
    (twin / "experiment.json").write_text(json.dumps(f))
    code, out, err = cli("pareto", exp, twin)
    assert_user_error(code, err, "another predictor", out=out)


@pytest.mark.parametrize("address", ["http://", "https://", "http://head:notaport"])
def test_a_job_server_address_without_a_host_is_one_line(address):
    code, out, err = cli("jobs", "list", "--address", address)
    assert_user_error(code, err, address, out=out)


def test_the_python_api_takes_a_spec_path_and_refuses_a_non_integer_trial_budget(own, tmp_path):
    import search
    from search.errors import UserError

    with pytest.raises(UserError, match="absent.toml"):
        search.run(tmp_path / "absent.toml")
    for bad in (1.5, float("nan"), True, 0):
        with pytest.raises(UserError, match="n_trials"):
            search.run(own["spec"], n_trials=bad)
    assert not own["exp"].exists()


def test_the_driver_checks_the_dataset_where_the_workers_look(own, monkeypatch):
    """``[evaluator.mosaic] data_dir`` (or the sidecar's) is where the workers read: the driver's check looks there,
    not only at the environment; a corrupt IDX file is one EvaluatorError, not a ValueError traceback."""
    from search.evaluators import EvaluatorError
    from search.policy import SearchPolicy
    from search.runner import _check_evaluator
    from search.spec import load_spec
    from supernet.data import resolve_data_dir

    real = resolve_data_dir()
    edit_spec(own["spec"], "batch_size = 4\n", f'batch_size = 4\nmosaic = {{data_dir = "{real}"}}\n')
    monkeypatch.setenv("SPARSESEARCH_FASHION_MNIST", "/nonexistent/fmnist")
    spec = load_spec(own["spec"])
    _check_evaluator(spec, SearchPolicy.from_spec(spec))  # passes: the mosaic's folder exists
    bad = own["dir"] / "fmnist_bad"
    bad.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad / name).write_bytes(b"not an idx file")
    edit_spec(own["spec"], f'data_dir = "{real}"', f'data_dir = "{bad}"')
    spec = load_spec(own["spec"])
    with pytest.raises(EvaluatorError, match="unreadable.*fix:"):
        _check_evaluator(spec, SearchPolicy.from_spec(spec))


def test_a_confirmed_record_with_a_nan_retention_reads_back(tmp_path):
    """``confirm`` writes NaN (a retention over a dense score of 0) as JSON null: its reader takes it as NaN."""
    import math

    from search.front import read_confirmed
    from supernet.fileio import atomic_write_json

    atomic_write_json(tmp_path / "confirmed.json", {"configs": {"h": {
        "config": [[0.0]], "trial_number": 1, "predicted_latency_ms": 2.0, "confirmed_value": 0.0,
        "retention": float("nan")}}})
    assert math.isnan(read_confirmed(tmp_path)["h"]["retention"])
