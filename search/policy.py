"""The search policy: decode -> predict -> gate -> cache key -> objective vector, in one object.

Both drivers (the runner's ask/tell loop and the Ray Tune path) hold one :class:`SearchPolicy` and
ask it everything about a proposal that does not need the supernet's weights:

- ``decode(params)``: Optuna parameters -> :class:`search.space.Config`;
- ``predict(config)``: predicted latency (ms) from the latency predictor;
- ``feasible(config)`` / ``constraint(config)``: the latency gate (predicted - budget <= 0);
- ``key(config)``: the result-cache key, the windows every block keeps *at the search resolution*
  plus the DIMAP weight ratios: configs with equal keys run the same computation;
- ``objectives(metrics, config, params)``: the objective vector told to Optuna, after checking the
  evaluator's metrics (the spec's metric present and finite, else :class:`MetricError`).

:meth:`SearchPolicy.from_spec` validates every input before anything is written: the checkpoint
(sidecar readable, weights hash matching), the predictor (readable, profiled for this architecture at
the search resolution, positive terms) and the budget (at least one config fits).

The *search resolution* is the image size the evaluator runs the backbone at: ``[evaluator] img_size``
when set, else the predictor's profiled size, else the checkpoint's. SparseViT's kept windows
k = int(nW (1 - r)) depend on it (nW grows with the image), so the space's genes, the cache keys,
the MACs and the predictor all use that one size.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import UserError

__all__ = ["SearchPolicy", "MetricError", "BudgetError", "InputError", "search_resolution", "finite"]


def finite(v: Any) -> bool:
    """True for a finite number (False for None, NaN, +-inf and anything that is not a number)."""
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class MetricError(UserError):
    """The evaluator's result lacks the spec's metric or gives a non-finite value.

    Attributes:
        configuration: True when every trial would fail the same way (no such metric, not a number, not a dict):
            the search stops; False for a value that is NaN / infinite this once (one failed trial).
    """

    def __init__(self, message: object, configuration: bool = False) -> None:
        super().__init__(message)
        self.configuration = bool(configuration)


class BudgetError(UserError):
    """The latency budget admits no config of the search space."""


class InputError(UserError):
    """A checkpoint, sidecar or predictor the spec names cannot be used for this search."""


def search_resolution(spec, meta: Mapping[str, Any], predictor=None) -> Tuple[int, int]:
    """(H, W) the search evaluates at: ``[evaluator] img_size`` > the predictor's > the checkpoint's."""
    size = getattr(spec.evaluator, "img_size", None)
    if size is None and predictor is not None and predictor.img_size is not None:
        size = predictor.img_size
    if size is None:
        size = meta.get("img_size", 224)
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


class SearchPolicy:
    """Everything about a proposal that needs no weights (see the module docstring).

    Args:
        spec: the :class:`search.spec.ExperimentSpec`.
        meta: the checkpoint sidecar dict.
        predictor: the :class:`latency.Predictor`.
        img_size: the search resolution (H, W).

    Attributes:
        space: the :class:`search.space.SearchSpace` (genes canonical at ``img_size`` when the spec asks).
        budget: the latency budget in ms, or None.
        dense_ms: the dense model's predicted latency (ms).
        names / directions / metric: the objectives.
        depths: blocks per stage.
    """

    def __init__(self, spec, meta: Mapping[str, Any], predictor, img_size: Tuple[int, int]):
        from supernet.checkpoint import build_model

        from .space import SearchSpace

        self.spec, self.meta, self.predictor = spec, dict(meta), predictor
        self.img_size = tuple(int(v) for v in img_size)
        self._arch_model = build_model(self.meta, img_size=self.img_size)  # random weights: MACs, window counts
        bb = self.arch_model.backbone
        self.depths = tuple(bb.depths)
        # the backbone's own input size: the canvas size, or the resized input of a reduced-resolution checkpoint
        self.backbone_size = tuple(int(v) for v in bb.img_size)
        self.num_windows = bb.num_windows(self.backbone_size)
        self.space = SearchSpace.from_spec(spec.space, self.depths,
                                           num_windows=self.num_windows if spec.space.canonical else None)
        self.dense_ms = float(self.predictor.predict(np.asarray([self.space.dense_config().flat]))[0])
        self.budget: Optional[float] = spec.latency.budget_ms
        if spec.latency.budget_fraction is not None:
            self.budget = float(spec.latency.budget_fraction) * self.dense_ms
        self.names: List[str] = spec.objectives.names()
        self.directions: List[str] = spec.objectives.directions()
        self.metric: str = spec.objectives.metric
        self.checkpoint_sha256: str = str(self.meta.get("weights_sha256", ""))
        self._macs: Dict[str, int] = {}

    @property
    def arch_model(self):
        """The checkpoint's architecture with random weights (built lazily: a pickled policy travels without it)."""
        if self._arch_model is None:
            from supernet.checkpoint import build_model

            self._arch_model = build_model(self.meta, img_size=self.img_size)
        return self._arch_model

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arch_model"] = None  # ~a model's worth of bytes: rebuilt on first use (Tune pickles its searcher)
        state["_macs"] = {}
        return state

    # ---- construction with every input validated ---------------------------------------------
    @classmethod
    def from_spec(cls, spec, *, verify_weights: bool = True) -> "SearchPolicy":
        """Read and check the spec's checkpoint and predictor, then build the policy.

        Raises:
            InputError: the checkpoint's weights or sidecar are missing, malformed or do not match;
                the predictor is unreadable, malformed, or profiled for another architecture or
                image size. The message names the file and the fix.
            BudgetError: the budget admits no config.
        """
        from latency.predictor import Predictor, PredictorError
        from supernet.checkpoint import CheckpointError, check_checkpoint, read_sidecar

        ckpt = Path(spec.supernet.checkpoint)
        try:
            meta = check_checkpoint(ckpt) if verify_weights else read_sidecar(ckpt)
        except CheckpointError as e:
            raise InputError(str(e)) from None
        try:
            predictor = Predictor.load(spec.latency.predictor)
        except PredictorError as e:
            raise InputError(str(e)) from None
        size = search_resolution(spec, meta, predictor)
        try:
            policy = cls(spec, meta, predictor, size)
        except CheckpointError as e:
            raise InputError(str(e)) from None
        policy.check_predictor()
        policy.check_budget()
        return policy

    def check_predictor(self) -> None:
        """The predictor must describe this architecture at the search resolution.

        Raises:
            InputError: other depths, window counts or image size (the message names the predictor file
                and the command that re-profiles it).
        """
        pred, src = self.predictor, self.predictor.source
        fix = (f"fix: profile this checkpoint at {self.img_size[0]} px: `sparsesearch latency profile --checkpoint "
               f"{self.spec.supernet.checkpoint} --img-size {self.img_size[0]} --out {src}`")
        if tuple(pred.depths) != self.depths:
            raise InputError(f"predictor {src} was profiled for depths {list(pred.depths)} but the checkpoint "
                             f"{self.spec.supernet.checkpoint} has depths {list(self.depths)}; {fix}")
        if pred.img_size is not None and tuple(pred.img_size) not in (self.img_size, self.backbone_size):
            raise InputError(f"predictor {src} was profiled at {list(pred.img_size)} px but the search evaluates at "
                             f"{list(self.img_size)} px; {fix}")
        if pred.num_windows != self.num_windows:
            raise InputError(f"predictor {src} models windows {pred.num_windows} per block but the checkpoint has "
                             f"{self.num_windows} at {list(self.img_size)} px (another window size or model); {fix}")
        arch = pred.model_arch
        if isinstance(arch, Mapping) and isinstance(arch.get("timm_kwargs"), Mapping):
            mine = (self.meta.get("arch") or {}).get("timm_kwargs") or {}
            for key in ("embed_dim", "num_heads", "window_size"):
                a, b = arch["timm_kwargs"].get(key), mine.get(key)
                if a is not None and b is not None and list(np.atleast_1d(a)) != list(np.atleast_1d(b)):
                    raise InputError(f"predictor {src} was profiled for {key} {a} but the checkpoint "
                                     f"{self.spec.supernet.checkpoint} has {b}; {fix}")

    def sparsest_params(self) -> Dict[str, Any]:
        """Gene values of :meth:`sparsest_config`: every gene at its largest choice."""
        return {name: max(d.choices) for name, d in self.space.distributions().items()}

    def sparsest_config(self):
        """Every gene at its largest ratio (the fastest config of the space)."""
        return self.space.decode(self.sparsest_params())

    def uniform_seeds(self) -> Dict[str, Dict[str, Any]]:
        """The feasible uniform-sparsity configs of the space (SparseViT's baseline: one ratio on every block of
        stages 0 .. n-2, :meth:`search.space.SearchSpace.uniform_params`), one per distinct computation, least
        sparse first: ``{computation key: gene values}``."""
        dists = self.space.distributions()
        levels = sorted({float(c) for grp in self.space.stage_groups() for n in grp for c in dists[n].choices if c > 0})
        out: Dict[str, Dict[str, Any]] = {}
        for r in levels:
            params = self.space.uniform_params(r)
            config = self.decode(params)
            if self.feasible(config):
                out.setdefault(self.key(config), params)
        return out

    def check_budget(self) -> None:
        """Raises :class:`BudgetError` when even the sparsest config is over the budget, :class:`InputError` when
        the predictor prices a config of the space at <= 0 ms (a calibration that no budget can be compared with)."""
        fastest = self.predict(self.sparsest_config())
        if fastest <= 0:
            raise InputError(f"predictor {self.predictor.source} predicts {fastest:.3g} ms for the sparsest config of "
                             f"the space (its calibration offset is too negative); fix: profile again on a quiet "
                             f"machine: `sparsesearch latency profile --checkpoint {self.spec.supernet.checkpoint} "
                             f"--img-size {self.img_size[0]} --out {self.predictor.source}`")
        if self.budget is None:
            return
        if fastest > self.budget:
            raise BudgetError(
                f"the latency budget {self.budget:.3f} ms admits no config: the sparsest config of the space is "
                f"predicted at {fastest:.3f} ms (dense {self.dense_ms:.3f} ms); fix: raise the budget ([latency] budget_ms "
                f"or fork's --budget-ms) to >= {fastest:.3f} (budget_fraction / --budget-fraction >= "
                f"{fastest / self.dense_ms:.3f}) or add larger [space] ratios")

    # ---- one proposal ------------------------------------------------------------------------
    def decode(self, params: Mapping[str, Any]):
        """Optuna parameters -> :class:`search.space.Config`."""
        return self.space.decode(params)

    def predict(self, config) -> float:
        """Predicted latency in ms of one config."""
        return float(self.predictor.predict(np.asarray([config.flat], dtype=np.float64))[0])

    def predict_many(self, configs: Sequence[Any]) -> np.ndarray:
        """Predicted latency in ms of several configs (float64 [n])."""
        return self.predictor.predict(self.space.to_array(list(configs)))

    def constraint(self, predicted_ms: float) -> float:
        """predicted - budget (ms; <= 0 feasible); -1 when there is no budget."""
        return (predicted_ms - self.budget) if self.budget is not None else -1.0

    def feasible(self, config) -> bool:
        """Within the latency budget (always, without one)."""
        return self.budget is None or self.predict(config) <= self.budget

    def feasible_params(self, params: Mapping[str, Any]) -> bool:
        """:meth:`feasible` of the decoded parameters (the samplers' redraw test)."""
        return self.feasible(self.decode(params))

    def repair(self, params: Mapping[str, Any]) -> Dict[str, Any]:
        """A feasible proposal near ``params``: raise, one step at a time, the gene whose next ratio saves
        the most predicted ms, until the budget holds (the sparsest config is feasible: :meth:`check_budget`)."""
        params = dict(params)
        dists = self.space.distributions()
        for _ in range(sum(len(d.choices) for d in dists.values())):
            cfg = self.decode(params)
            now = self.predict(cfg)
            if self.budget is None or now <= self.budget:
                return params
            best, best_ms = None, now
            for name, d in dists.items():
                choices = list(d.choices)
                i = choices.index(params[name])
                if i + 1 < len(choices):
                    trial = {**params, name: choices[i + 1]}
                    ms = self.predict(self.decode(trial))
                    if ms < best_ms:
                        best, best_ms = trial, ms
            if best is None:
                break
            params = best
        return {name: max(d.choices) for name, d in dists.items()}

    def keep_counts(self, config) -> List[List[int]]:
        """Kept windows of every block at the search resolution (at the backbone's input size)."""
        return self.arch_model.backbone.keep_counts(self.backbone_size, config.ratios)

    def key(self, config) -> str:
        """Result-cache key: the windows every block keeps at the search resolution + the weight ratios.

        A block keeps k = int(nW (1 - r)) of its nW windows (SparseViT, ``supernet.keep_count``), so several
        ratios give the same k (at 224 px a stage-3 block has one window: any r > 0 skips it); configs with
        equal keys run the same computation and get the same metrics, MACs and predicted latency.
        """
        return json.dumps([self.keep_counts(config), config.weight_ratios], sort_keys=True, separators=(",", ":"))

    def macs(self, config) -> int:
        """Analytic MACs per image at the search resolution (memoised by key)."""
        from supernet.macs import count_macs

        k = self.key(config)
        if k not in self._macs:
            self._macs[k] = int(count_macs(self.arch_model, self.img_size, ratios=config.ratios))
        return self._macs[k]

    def config_hash(self, config) -> str:
        """Identity of (config, checkpoint) for the trial log (:func:`search.space.config_hash`)."""
        return self.space.config_hash(config, self.checkpoint_sha256)

    # ---- objectives --------------------------------------------------------------------------
    def check_metrics(self, metrics: Any) -> Dict[str, float]:
        """The evaluator's result as ``{name: float}``, with the spec's metric present and finite.

        Raises:
            MetricError: not a mapping of numbers, the metric is missing, or it is NaN / infinite.
        """
        name = self.spec.evaluator.name
        if not isinstance(metrics, Mapping):
            raise MetricError(f"evaluator {name} returned {type(metrics).__name__}, not a dict of metrics; fix: return "
                              "{'" + self.metric + "': value, ...}", configuration=True)
        if self.metric not in metrics:
            raise MetricError(f"evaluator {name} returned no {self.metric!r} (it gave {sorted(map(str, metrics)) or 'nothing'}); "
                              f"fix: set [objectives] metric to one of them or return {self.metric!r}", configuration=True)
        out: Dict[str, float] = {}
        for k, v in metrics.items():  # other keys: kept when they are numbers, dropped otherwise (arrays, text)
            try:
                out[str(k)] = float(v)
            except Exception:  # noqa: BLE001 - numpy arrays, multi-element tensors, strings
                if k == self.metric:
                    raise MetricError(f"evaluator {name} returned {k}={str(v)[:60]!r}, not a number; fix: return a "
                                      "plain float", configuration=True) from None
        if not math.isfinite(out[self.metric]):
            raise MetricError(f"evaluator {name} returned {self.metric}={out[self.metric]} (not finite)")
        return out

    def objectives(self, metrics: Mapping[str, float], predicted_ms: float, macs: int,
                   params: Optional[int] = None) -> List[float]:
        """The objective vector in study order (metric, latency_ms, macs, params)."""
        out = []
        for name in self.names:
            if name == self.metric:
                out.append(float(metrics[self.metric]))
            elif name == "latency_ms":
                out.append(float(predicted_ms))
            elif name == "macs":
                out.append(float(macs))
            elif name == "params":
                out.append(float(params if params is not None else 0))
        return out

    def worst(self, predicted_ms: float, macs: int) -> List[float]:
        """The objective vector of a config that was not evaluated (over budget): worst metric."""
        vals = []
        for name, d in zip(self.names, self.directions):
            if name == "latency_ms":
                vals.append(float(predicted_ms))
            elif name == "macs":
                vals.append(float(macs))
            else:
                vals.append(0.0 if d == "maximize" else 1e9)
        return vals
