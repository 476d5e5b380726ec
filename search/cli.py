"""``sparsesearch``: the command line, a thin layer over the Python API.

Every command that reports figures takes ``--json`` and then prints exactly one JSON object on
stdout (progress bars and logs go to stderr). Bad input (a malformed spec, a missing dataset, a
checkpoint that does not match, a corrupted Parquet file) prints one ``sparsesearch: error: ...``
line naming the file and the fix, and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

EXIT_USER_ERROR = 2


def _emit(obj: Dict[str, Any], as_json: bool, text: Optional[str] = None) -> None:
    if as_json:
        from supernet.fileio import strict_json

        print(strict_json(obj, default=str))  # NaN -> null
    elif text is not None:
        print(text)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error contract: one ``sparsesearch: error:`` line, exit 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        print(f"sparsesearch: error: {self.prog}: {message}; fix: see `{self.prog} --help`", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _int_at_least(lo: int):
    """argparse type: an integer >= ``lo``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _seed(text: str) -> int:
    """argparse type: a seed numpy and Optuna accept, 0 .. 2**32 - 1."""
    v = _nonneg_int(text)
    if v >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be < 2**32, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _fraction(text: str) -> float:
    v = _positive_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def _user_error_types():
    from .errors import UserError

    types: List[type] = [UserError]
    for mod, name in (("supernet.data", "DatasetNotFoundError"), ("supernet.checkpoint", "CheckpointError"),
                      ("latency.predictor", "PredictorError"), ("supernet.train", "TrainSpecError")):
        try:
            types.append(getattr(__import__(mod, fromlist=[name]), name))
        except Exception:  # noqa: BLE001 - optional module
            pass
    return tuple(types)


# ---------------------------------------------------------------------------------------------
# search commands
# ---------------------------------------------------------------------------------------------
def _front_table(summary: Dict[str, Any], metric: str) -> str:
    lines = [f"{'trial':>6} {metric:>8} {'latency ms':>11} {'GMACs':>7}  config"]
    for r in summary["front"]:
        lines.append(f"{r['trial_number']:>6} {r[metric]:>8.4f} {r['predicted_latency_ms']:>11.2f} "
                     f"{r['macs'] / 1e9:>7.3f}  {json.dumps(r['config'])}")
    return "\n".join(lines)


def _summary_text(s: Dict[str, Any]) -> str:
    c = s["counts"]
    metric = next((k for k in (s["front"][0] if s["front"] else {}) if k not in
                   ("trial_number", "predicted_latency_ms", "macs", "config")), "miou")
    head = (f"experiment {s['experiment']}: {s['n_trials']} trials (complete {c['complete']}, rejected "
            f"{c['rejected']}, cached {c['cached']}, failed {c['failed']}), {s['evaluations']} evaluations, "
            f"hypervolume {s['hypervolume']:.4g}")
    ref = s.get("reference") or {}
    refs = "\n".join(f"  reference {k:12s} {((v.get('metrics') or {}).get(metric, float('nan'))):.4f} "
                     f"@ {v['predicted_latency_ms']:.2f} ms" for k, v in ref.items())
    tail = (f"\nexperiment directory: {s['exp_dir']}\n"
            f"  query:  sparsesearch pareto {s['exp_dir']} [--plot front.png] [--json]\n"
            f"  resume: sparsesearch resume {s['exp_dir']} [--n-trials N]")
    return f"{head}\nPareto front (feasible, by latency):\n{_front_table(s, metric)}\n{refs}{tail}"


def _log(a: argparse.Namespace):
    """Where a search's notes go: stdout, or stderr under ``--json`` (stdout holds exactly one JSON object)."""
    if getattr(a, "json", False):
        return lambda *args, **kw: print(*args, **{**kw, "file": sys.stderr})
    return print


def cmd_run(a: argparse.Namespace) -> int:
    from .runner import run
    from .spec import load_spec

    spec = load_spec(a.spec)
    s = run(spec, address=a.address, n_trials=a.n_trials, progress=not a.no_progress, log=_log(a))
    _emit(s, a.json, _summary_text(s))
    return 0


def cmd_resume(a: argparse.Namespace) -> int:
    from .runner import resume

    s = resume(Path(a.exp_dir), n_trials=a.n_trials, address=a.address, progress=not a.no_progress, log=_log(a))
    _emit(s, a.json, _summary_text(s))
    return 0


def cmd_pareto(a: argparse.Namespace) -> int:
    from supernet.fileio import strict_json

    from .report import pareto_report

    rep = pareto_report([Path(d) for d in a.exp_dir], budget_ms=a.budget_ms, plot=a.plot, history=a.history)
    if a.json or a.format == "json":
        print(strict_json(rep["json"], default=str))
    elif a.format == "csv":
        print(rep["front_df"].to_csv(index=False), end="")
    else:
        print(rep["text"])
    return 0


def cmd_fork(a: argparse.Namespace) -> int:
    from .runner import fork

    s = fork(Path(a.exp_dir), Path(a.out), budget_ms=a.budget_ms, budget_fraction=a.budget_fraction,
             n_trials=a.n_trials, seed=a.seed, address=a.address, progress=not a.no_progress, log=_log(a))
    _emit(s, a.json, _summary_text(s) + (f"\nforked from {a.exp_dir}: {s['fork']}" if s.get("fork") else ""))
    return 0


def cmd_measure(a: argparse.Namespace) -> int:
    from .measure import measure_front

    m = measure_front(Path(a.exp_dir), repeats=a.repeats, progress=not a.no_progress)
    lines = [f"measured {m['n']} front members of {a.exp_dir} end to end on this device"]
    if m["n"]:
        lines[0] += (f": {m['within_10pct'] * 100:.0f} % within +-10 % of predicted (relative to dense "
                     f"{m['relative_within_10pct'] * 100:.0f} %), MAPE {m['mape']:.1f} %")
        lines.append(f"{'trial':>6} {'predicted ms':>13} {'measured ms':>12} {'error':>7}  over budget")
        for r in m["members"]:
            lines.append(f"{r['trial_number']:>6} {r['predicted_latency_ms']:>13.2f} {r['measured_latency_ms']:>12.2f} "
                         f"{r['error_pct']:>6.1f}%  {'YES' if r['over_budget'] else ''}")
        if m["over_budget"]:
            lines.append(f"members over the budget when measured ({m['over_budget_rule']}): {m['over_budget']}")
        from latency.validate import speed_drift_warning

        drift = speed_drift_warning(m["dense_ms_measured"], m["dense_ms_predicted"])
        if drift:
            lines.append(f"note: {drift}")
        lines.append(f"written: {a.exp_dir}/measured.json and the measured_latency_ms column of {a.exp_dir}/front.parquet")
    _emit(m, a.json, "\n".join(lines))
    return 0


def cmd_confirm(a: argparse.Namespace) -> int:
    from .confirm import confirm_front

    c = confirm_front(Path(a.exp_dir), canvases=a.canvases, z=a.z, max_candidates=a.max_candidates, seed=a.seed,
                      threads=a.threads, progress=not a.no_progress)
    lines = [f"re-scored {c['n']} configs of {a.exp_dir} on {c['canvases']} canvases (the front and those within "
             + (f"{c['margin'] * 100:.2f} points of it: z {c['z']:g} x the search subset's paired noise)"
                if c.get("margin") is not None else "nothing else: no first-rung scores to estimate the noise)")]
    if c["n"]:
        metric = c["metric"]
        lines.append(f"dense {metric} {c['dense_value']:.4f} on the same canvases")
        lines.append(f"{'trial':>6} {'predicted ms':>13} {'of dense':>9} {'search':>8} {'confirmed':>10} "
                     f"{'retention':>10}  confirmed front")
        for r in c["members"]:
            lines.append(f"{r['trial_number']:>6} {r['predicted_latency_ms']:>13.2f} {r['predicted_vs_dense']:>9.3f} "
                         f"{r['search_value']:>8.4f} {r['confirmed_value']:>10.4f} {r['retention']:>10.4f}  "
                         f"{'*' if r['confirmed_pareto'] else ''}")
        b = c["best"]
        if b:
            lines.append(f"most accurate on the confirmed front: trial {b['trial_number']} {b['config']}, "
                         f"{metric} {b['confirmed_value']:.4f} ({b['retention'] * 100:.1f} % of dense) at "
                         f"{b['predicted_vs_dense']:.3f} of dense predicted latency")
        lines.append(f"written: {a.exp_dir}/confirmed.json and the confirmed_metric / is_confirmed_pareto columns of "
                     f"{a.exp_dir}/front.parquet")
    _emit(c, a.json, "\n".join(lines))
    return 0


def cmd_submit(a: argparse.Namespace) -> int:
    from .cluster import submit

    out = submit(a.spec, address=a.address, n_trials=a.n_trials, wait=a.wait)
    _emit(out, a.json, f"submitted job {out['job_id']} to {out['address']}\n"
                       f"  status: sparsesearch jobs status {out['job_id']} --address {out['address']}\n"
                       f"  logs:   sparsesearch jobs logs {out['job_id']} --address {out['address']}")
    return 0


def cmd_jobs(a: argparse.Namespace) -> int:
    from . import cluster

    out = cluster.jobs(a.action, a.job_id, address=a.address)
    if a.json:
        print(json.dumps(out, default=str))
    elif a.action == "logs":
        print(out["logs"], end="")
    elif a.action == "list":
        for j in out["jobs"]:
            print(f"{j['job_id']:24s} {j['status']:10s} {j.get('entrypoint', '')}")
    else:
        print(json.dumps(out, indent=1, default=str))
    return 0


# ---------------------------------------------------------------------------------------------
# supernet / latency / pruning commands (implemented in their packages)
# ---------------------------------------------------------------------------------------------
def cmd_supernet_train(a: argparse.Namespace) -> int:
    from supernet.train import cli_train

    return cli_train(a)


def _check_new_checkpoint(command: str, src: Path, dst: Path, overwrite: bool = False) -> None:
    """A command that writes a new checkpoint ``dst`` (+ its sidecar) from ``src`` refuses, before any work, a
    ``dst`` that is not a ``.safetensors`` file name, that would overwrite ``src``'s weights or sidecar, or whose
    weights or sidecar already exist (unless ``overwrite``: the user's ``--overwrite``).

    Raises:
        UserError: with the fix."""
    from supernet.checkpoint import sidecar_path
    from supernet.fileio import refuse_overwrite

    from .errors import UserError

    if dst.suffix != ".safetensors" or dst.is_dir():
        raise UserError(f"{command}: {dst} is not a .safetensors file name; fix: name the new checkpoint "
                        "Y.safetensors (Y.json is written beside it)")
    refuse_overwrite(command, (dst, sidecar_path(dst)), overwrite=overwrite, reads=(src, sidecar_path(src)),
                     error=UserError)


def cmd_supernet_export(a: argparse.Namespace) -> int:
    from supernet.checkpoint import export_checkpoint, read_sidecar, weights_path

    src, dst = weights_path(a.src), Path(a.dst)
    _check_new_checkpoint("supernet export", src, dst, a.overwrite)
    out = export_checkpoint(src, dst, storage_dtype=a.storage_dtype)  # a missing source: CheckpointError, one line
    info = {"src": str(src), "dst": str(out), "storage_dtype": a.storage_dtype, "bytes": out.stat().st_size,
            "sha256": read_sidecar(out)["weights_sha256"]}  # save_checkpoint hashed the bytes it wrote
    _emit(info, a.json, f"{out} ({a.storage_dtype} storage, {info['bytes']:,} bytes, sha256 {info['sha256'][:12]}...)")
    return 0


def cmd_latency_profile(a: argparse.Namespace) -> int:
    from latency import cli_profile

    return cli_profile(a)


def cmd_latency_validate(a: argparse.Namespace) -> int:
    from latency import cli_validate

    return cli_validate(a)


def cmd_prune_dimap(a: argparse.Namespace) -> int:
    from supernet.checkpoint import weights_path
    from supernet.prune import cli_prune_dimap

    from .errors import UserError

    _check_new_checkpoint("prune dimap", weights_path(a.checkpoint), Path(a.out), a.overwrite)
    try:
        return cli_prune_dimap(a)
    except ValueError as e:  # bad ratios / module names: user input
        raise UserError(f"prune dimap: {e}") from e


def cmd_dimap_report(a: argparse.Namespace) -> int:
    from supernet.dimap import dimap_report, format_report

    from .errors import UserError

    try:
        rep = dimap_report(a.model, img_size=a.img_size)
    except (RuntimeError, ValueError) as e:  # an unknown timm name, a non-Swin model, a size it cannot take
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, RuntimeError) and not first.startswith("Unknown model"):
            raise  # a fault inside torch / timm, not the user's input
        raise UserError(f"dimap report --model {a.model} --img-size {a.img_size}: {first}; fix: pass a timm Swin "
                        "name (e.g. swin_tiny_patch4_window7_224) at a size its windows divide") from None
    _emit(rep, a.json, format_report(rep))
    return 0


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sparsesearch",
        description="Distributed evolutionary search of SparseViT per-block sparsity for timm Swin under a "
                    "latency budget: spec -> sampler -> latency gate -> Ray workers -> Parquet -> Pareto.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(name, fn, help_, parent=sub):
        sp = parent.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        return sp

    r = add("run", cmd_run, "run a new search from a spec (embedded local Ray unless --address)")
    r.add_argument("spec", help="experiment spec (TOML)")
    r.add_argument("--address", help="Ray cluster to join (e.g. auto, HOST:6379); default: embedded local Ray")
    r.add_argument("--n-trials", type=_positive_int, help="override the spec's n_trials (trials evaluated or cached)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--json", action="store_true", help="print one JSON object (the summary) on stdout")

    r = add("resume", cmd_resume, "continue a killed or finished experiment")
    r.add_argument("exp_dir")
    r.add_argument("--n-trials", type=_positive_int, help="new total trial budget (default: the spec's)")
    r.add_argument("--address")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--json", action="store_true")

    r = add("pareto", cmd_pareto, "the Pareto front of one experiment, or the joint front of several on one checkpoint")
    r.add_argument("exp_dir", nargs="+", help="experiment directories (several: the joint front, with each point's experiment)")
    r.add_argument("--budget-ms", type=_positive_float, help="only configs at or under this predicted latency")
    r.add_argument("--format", choices=("table", "csv", "json"), default="table")
    r.add_argument("--plot", help="write a PNG (a folder: FOLDER/front.png): all trials, the front, reference points, "
                                  "the budget line")
    r.add_argument("--history", action="store_true", help="also give the hypervolume per generation")
    r.add_argument("--json", action="store_true")

    r = add("fork", cmd_fork, "a new experiment warm-started from an old one with a new budget (old evaluations reused)")
    r.add_argument("exp_dir")
    r.add_argument("--out", required=True, help="the new experiment directory")
    r.add_argument("--budget-ms", type=_positive_float)
    r.add_argument("--budget-fraction", type=_fraction)
    r.add_argument("--n-trials", type=_positive_int)
    r.add_argument("--seed", type=_seed, help="the new experiment's sampler seed, 0 .. 2**32 - 1 (default: the old one's)")
    r.add_argument("--address")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--json", action="store_true")

    r = add("measure", cmd_measure, "measure the end-to-end latency of the front members on this device")
    r.add_argument("exp_dir")
    r.add_argument("--repeats", type=_positive_int, default=11, help="timed runs per config (drift-corrected)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--json", action="store_true")

    r = add("confirm", cmd_confirm, "re-score the front and the configs within the search's noise of it on more "
                                    "canvases (the front a larger evaluation set confirms)")
    r.add_argument("exp_dir")
    r.add_argument("--canvases", type=_positive_int, default=256, help="validation canvases (more than the search's)")
    r.add_argument("--z", type=_positive_float, default=1.0,
                   help="paired standard deviations of the search subset's noise that keep a config a candidate")
    r.add_argument("--max-candidates", type=_positive_int, default=24, help="re-scored configs at most")
    r.add_argument("--seed", type=_seed, help="another canvas set (default: the search's, extended)")
    r.add_argument("--threads", type=_positive_int, help="torch threads (default: all cores)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--json", action="store_true")

    r = add("submit", cmd_submit, "submit a search to a Ray cluster through the Job Submission API")
    r.add_argument("spec")
    r.add_argument("--address", required=True, help="Ray job server, e.g. http://127.0.0.1:8265")
    r.add_argument("--n-trials", type=_positive_int)
    r.add_argument("--wait", action="store_true", help="wait for the job to finish")
    r.add_argument("--json", action="store_true")

    r = add("jobs", cmd_jobs, "list / inspect / stop submitted jobs")
    r.add_argument("action", choices=("list", "status", "logs", "stop"))
    r.add_argument("job_id", nargs="?")
    r.add_argument("--address", required=True)
    r.add_argument("--json", action="store_true")

    sn = add("supernet", None, "train the sparsity-aware supernet")
    snsub = sn.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    r = add("train", cmd_supernet_train, "sparsity-aware adaptation training from a recipe (TOML)", snsub)
    r.add_argument("spec")
    how = r.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    how.add_argument("--overwrite", action="store_true",
                     help="train from scratch over an existing [output] checkpoint (refused without it)")
    r.add_argument("--stop-after", type=_positive_int, metavar="EPOCH",
                   help="stop once this epoch of the run is complete (checkpoint written; continue with --resume)")
    r.add_argument("--device", help="train on this torch device (cpu, cuda, cuda:N), overriding [train] device; "
                                    "a run may resume on another device")
    r.add_argument("--json", action="store_true")

    r = add("export", cmd_supernet_export, "re-save a checkpoint for shipping (float16 storage: half the bytes; "
                                           "loading gives float32), its sidecar kept", snsub)
    r.add_argument("src", help="checkpoint X.safetensors (X.json beside it)")
    r.add_argument("dst", help="new checkpoint Y.safetensors (Y.json written beside it)")
    r.add_argument("--storage-dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    r.add_argument("--overwrite", action="store_true", help="replace an existing DST (refused without it)")
    r.add_argument("--json", action="store_true")

    lt = add("latency", None, "profile device latency and validate the predictor")
    ltsub = lt.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    r = add("profile", cmd_latency_profile, "per-block latency table + calibration -> predictor JSON", ltsub)
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--device", default="cpu", help="torch device to profile (cpu, cuda, cuda:N)")
    r.add_argument("--batch-size", type=_positive_int, default=1)
    r.add_argument("--threads", type=_positive_int, default=1)
    r.add_argument("--img-size", type=_positive_int, help="the search resolution (default: the checkpoint's)")
    r.add_argument("--repeats", type=_positive_int, default=11, help="timed runs per block x k and per calibration config")
    r.add_argument("--calib-configs", type=_int_at_least(2), default=40)
    r.add_argument("--out", required=True)
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out file (refused without it)")
    r.add_argument("--json", action="store_true")
    r = add("validate", cmd_latency_validate, "measure random configs end to end against the predictor", ltsub)
    r.add_argument("--predictor", required=True)
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--n", type=_int_at_least(2), default=200, help="held-out configs (>= 2: a rank correlation)")
    r.add_argument("--seed", type=_seed, default=1)
    r.add_argument("--repeats", type=_positive_int, default=11, help="timed runs per config (median kept)")
    r.add_argument("--spread", action="store_true",
                   help="configs drawn evenly from dense to the sparsest (default: independent draws per block, "
                        "which sit mid-range)")
    r.add_argument("--plot")
    r.add_argument("--json", action="store_true")

    pr = add("prune", None, "weight pruning")
    prsub = pr.add_subparsers(dest="sub", required=True, metavar="METHOD")
    r = add("dimap", cmd_prune_dimap, "DIMAP data-independent module-aware pruning of a checkpoint", prsub)
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--ratio", type=float)
    r.add_argument("--module-ratios", help="e.g. qkv=0.3,proj=0.3,mlp=0.5")
    r.add_argument("--out", required=True)
    r.add_argument("--finetune", type=_nonneg_int, default=0, help="fine-tuning epochs with masks fixed (>= 0)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out checkpoint (refused without it)")
    r.add_argument("--json", action="store_true")

    dm = add("dimap", None, "DIMAP reports")
    dmsub = dm.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    r = add("report", cmd_dimap_report, "analytic params/FLOPs reductions at DIMAP1/2/3 vs the paper", dmsub)
    r.add_argument("--model", default="swin_tiny_patch4_window7_224")
    r.add_argument("--img-size", type=_positive_int, default=224)
    r.add_argument("--json", action="store_true")
    return p


def _os_error_line(a: argparse.Namespace, e: BaseException) -> Optional[str]:
    """The one error line for an ``OSError`` / ``UnicodeDecodeError`` that reached :func:`main`, or ``None`` for a
    fault that is not the user's input (an I/O error, a full disk is reported, with what was kept).

    Caught nearer where it can be (readers name their file); this is the last net for paths given on the
    command line: a folder where a file is expected or the reverse, a missing or unwritable path, a binary file
    where text is expected, and an ``--address`` that cannot be reached or parsed."""
    import errno

    cmd = " ".join(x for x in (a.command, getattr(a, "sub", None)) if x)
    if isinstance(e, UnicodeDecodeError):
        return (f"sparsesearch: error: {cmd}: a file named on the command line is not UTF-8 text ({e.reason} at byte "
                f"{e.start}); fix: pass the text file (spec .toml, predictor or sidecar .json) the command expects")
    paths = " -> ".join(str(p) for p in (e.filename, getattr(e, "filename2", None)) if p)
    what = f"{paths}: {e.strerror}" if paths and e.strerror else " ".join(str(e).split("\n")).strip() or type(e).__name__
    if getattr(a, "address", None) and (isinstance(e, ConnectionError)
                                        or type(e).__module__.startswith(("requests", "urllib3"))):
        return (f"sparsesearch: error: {cmd}: --address {a.address}: {what}; fix: pass a running Ray cluster "
                "(HOST:6379, or http://HOST:8265 for jobs)")
    if e.errno == errno.ENOSPC:
        return (f"sparsesearch: error: {cmd}: {what}; fix: free disk space, then rerun (what was recorded is kept; "
                "a search continues with `sparsesearch resume`)")
    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"sparsesearch: error: {cmd}: {what}; fix: check the paths named on the command line (a folder where "
                "a file is expected or the reverse, a missing folder, permissions)")
    return None


def main(argv: Optional[List[str]] = None) -> int:
    import warnings

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # library chatter a user cannot act on (torch / timm deprecations) stays out of the one-line contract
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|timm|torchvision)(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|timm|torchvision)(\.|$)")
    parser = build_parser()
    a = parser.parse_args(argv)
    errors = _user_error_types()
    try:
        return int(a.fn(a) or 0)
    except errors as e:
        msg = " ".join(str(e).split("\n")).strip()
        print(f"sparsesearch: error: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `sparsesearch pareto ... | head`: the reader left; nothing to report
        sys.stdout = open(os.devnull, "w")
        return 0
    except (OSError, UnicodeDecodeError) as e:  # not caught nearer: a path or an address the command could not use
        line = _os_error_line(a, e)
        if line is None:  # an I/O fault, not input: the traceback is the report
            raise
        print(line, file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("sparsesearch: interrupted; what was recorded is kept (resume with `sparsesearch resume`)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
