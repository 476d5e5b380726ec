"""Benchmark: SparseViT window pruning on a Swin-T backbone, latency ratio vs MACs ratio.

Swin-T backbone (patch embedding + 4 stages, no head) at 672 x 672, batch 1 on CPU (batch 4 on a
GPU), dense against the SparseViT reference configs cfg1/cfg2/cfg3 and uniform 0.2/0.4/0.6/0.8 on
stages 0-2. Dense and sparse runs are paired and interleaved (dense, cfg | cfg, dense | dense, cfg, ...) so
that drift of a shared machine hits both; each config's latency ratio is the median over ``--repeats``
rounds of that round's sparse / dense time (paired: a shared CPU drifts by 10 % within seconds, which a ratio
of two medians taken seconds apart carries), beside the medians of both times.

``--flush-denormal`` runs the process with denormal floats flushed to zero (``torch.set_flush_denormal``, set
before any thread pool starts; off by default, as PyTorch ships): timm's shifted-window mask (-100 on cross-region
pairs) makes softmax produce denormal probabilities (exp(-100) ~ 4e-44), which x86 CPUs compute tens of times
slower than normal floats, so the shifted blocks of the stock model pay for them (RESULTS.md R2).

With ``--checkpoint X.safetensors`` the backbone is that supernet's (e.g. the shipped task model at the
search resolution, ``--img-size 448``) instead of a randomly initialised Swin-T; the timings do not
depend on the weights, the window ranking does.

Usage:
    python bench/window_pruning.py [--checkpoint X.safetensors] [--img-size 672] [--repeats 10]
        [--device cpu|cuda] [--threads T] [--flush-denormal] [--compare-paths] [--out bench/results/window_pruning.json] [--json]

Writes JSON (per config: latency ms, dense ms, latency ratio sparse/dense, MACs ratio, and
latency ratio / MACs ratio) and prints a table, then a one-line summary.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._result import write_result  # noqa: E402

import torch  # noqa: E402

from supernet import SparseSwin, count_macs  # noqa: E402

REFERENCE = {
    "cfg1": [[.3, .3], [0, 0], [.1, .1, .2, .2, .2, .2], [0, 0]],
    "cfg2": [[.6, .6], [0, 0], [.2, .2, .4, .4, .5, .5], [0, 0]],
    "cfg3": [[.7, .7], [0, 0], [.2, .2, .4, .4, .5, .5], [0, 0]],
}


def uniform(r: float) -> list:
    return [[r, r], [r, r], [r] * 6, [0, 0]]


def configs() -> dict:
    cfgs = dict(REFERENCE)
    for r in (0.2, 0.4, 0.6, 0.8):
        cfgs[f"uniform{r:.1f}"] = uniform(r)
    return cfgs


class Backbone(torch.nn.Module):
    """The SparseSwin backbone without norm/head: what the reference times."""

    def __init__(self, m: SparseSwin):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m.forward_stages(x)


def timed(fn, x, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="time this supernet's backbone (default: random Swin-T)")
    p.add_argument("--img-size", type=int, default=672)
    p.add_argument("--batch-size", type=int, default=None, help="default 1 on CPU, 4 on CUDA")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--flush-denormal", action="store_true",
                   help="flush denormal floats to zero in this process (default: off, as PyTorch ships)")
    p.add_argument("--configs", default=None, help="comma-separated subset of config names")
    p.add_argument("--out", default="bench/results/window_pruning.json")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--compare-paths", action="store_true",
                   help="also time every config on the previous execution path (roll + partition of the whole map, "
                        "supernet.sparse_swin.UNPADDED_PATH = 'partition'), interleaved with the default one")
    a = p.parse_args(argv)
    from supernet import sparse_swin
    if a.flush_denormal and not torch.set_flush_denormal(True):
        p.error("--flush-denormal: this CPU does not support flushing denormals (no SSE3)")
    if a.threads:
        torch.set_num_threads(a.threads)
    bs = a.batch_size or (4 if a.device == "cuda" else 1)
    torch.manual_seed(0)
    if a.checkpoint:
        from supernet.checkpoint import load_checkpoint

        model = load_checkpoint(a.checkpoint, img_size=a.img_size)[0].backbone.eval().to(a.device)
        model_name = f"{Path(a.checkpoint).name} backbone"
    else:
        model = SparseSwin.from_timm("swin_tiny_patch4_window7_224", img_size=a.img_size).eval().to(a.device)
        model_name = "swin_tiny_patch4_window7_224 backbone"
    fn = Backbone(model)
    x = torch.randn(bs, 3, a.img_size, a.img_size, device=a.device)
    if a.checkpoint:  # real canvases: the window ranking (which windows run) follows the content
        from supernet.data import FashionMosaic, MosaicSpec
        from supernet.checkpoint import read_sidecar

        spec = MosaicSpec.from_dataset(read_sidecar(a.checkpoint).get("dataset"), a.img_size)
        x = torch.stack([FashionMosaic("val", length=bs, spec=spec, seed=1)[i][0] for i in range(bs)]).to(a.device)
    cfgs = configs()
    if a.configs:
        cfgs = {k: v for k, v in cfgs.items() if k in a.configs.split(",")}
    dense_cfg = [[0.0] * d for d in model.depths]
    dense_macs = count_macs(model, a.img_size, include_head=False, ratios=dense_cfg)
    results = []
    with torch.inference_mode():
        for _ in range(a.warmup):
            model.set_sparsity(dense_cfg)
            fn(x)
        for name, cfg in cfgs.items():
            model.set_sparsity(cfg)
            fn(x)  # warm this config
            d_t, s_t, p_t = [], [], []
            for rep in range(a.repeats):
                # each round times dense and sparse back to back, in alternating order, so the machine's drift
                # (10 % within seconds on a shared CPU) hits both members of a pair alike
                for first in ((True, False) if rep % 2 == 0 else (False, True)):
                    if first:
                        model.set_sparsity(dense_cfg)
                        d_t.append(timed(fn, x, a.device))
                    else:
                        model.set_sparsity(cfg)
                        s_t.append(timed(fn, x, a.device))
                if a.compare_paths:
                    model.set_sparsity(cfg)
                    sparse_swin.UNPADDED_PATH = "partition"
                    try:
                        p_t.append(timed(fn, x, a.device))
                    finally:
                        sparse_swin.UNPADDED_PATH = "gather"
            d, s = statistics.median(d_t), statistics.median(s_t)
            ratio = statistics.median(si / di for si, di in zip(s_t, d_t))  # paired: each round's sparse / dense
            macs = count_macs(model, a.img_size, include_head=False, ratios=cfg)
            row = dict(config=name, ratios=cfg, dense_ms=round(d, 3), sparse_ms=round(s, 3),
                       latency_ratio=round(ratio, 4), ratio_of_medians=round(s / d, 4), macs=macs,
                       macs_ratio=round(macs / dense_macs, 4), latency_over_macs=round(ratio / (macs / dense_macs), 4))
            if p_t:  # the previous path, same rounds: its ratio to dense and the default path's speed-up over it
                pm = statistics.median(p_t)
                pr = statistics.median(pi / di for pi, di in zip(p_t, d_t))
                row.update(partition_ms=round(pm, 3), partition_latency_ratio=round(pr, 4),
                           partition_latency_over_macs=round(pr / (macs / dense_macs), 4),
                           gather_speedup=round(statistics.median(pi / si for pi, si in zip(p_t, s_t)), 4))
            results.append(row)
            if not a.json:
                print(f"{name:12s} dense {d:9.1f} ms  sparse {s:9.1f} ms  latency ratio {ratio:.3f}  "
                      f"MACs ratio {macs / dense_macs:.3f}  lat/MACs {row['latency_over_macs']:.3f}"
                      + (f"  (partition path: lat/MACs {row['partition_latency_over_macs']:.3f}, gather "
                         f"{row['gather_speedup']:.3f}x faster)" if p_t else ""), flush=True)
    worst = max(r["latency_over_macs"] for r in results)
    by = {r["config"]: r for r in results}
    out = dict(
        benchmark="window_pruning", model=model_name, img_size=a.img_size,
        batch_size=bs, device=a.device, threads=torch.get_num_threads(), flush_denormal=bool(a.flush_denormal), torch=torch.__version__,
        cpu=platform.processor() or platform.machine(), repeats=a.repeats, dense_macs=dense_macs,
        results=results, worst_latency_over_macs=worst,
        summary=(f"window_pruning {a.device} {a.img_size}px b{bs}{' flush-denormal' if a.flush_denormal else ''}: worst latency/MACs ratio {worst:.3f}; "
                 + "; ".join(f"{k} {by[k]['latency_ratio']:.3f} (MACs {by[k]['macs_ratio']:.3f})"
                             for k in ("uniform0.6", "cfg3") if k in by)
                 + (f"; previous (partition) path worst {max(r['partition_latency_over_macs'] for r in results):.3f}"
                    if a.compare_paths else "")),
    )
    return write_result(out, a.out, a.json, indent=2)


if __name__ == "__main__":
    main()
