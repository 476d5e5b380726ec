"""Experiment spec: one TOML file -> a validated :class:`ExperimentSpec`.

A spec names everything a search needs: the supernet checkpoint, the latency predictor and
budget, the evaluator, the search space, the objectives, the sampler, the worker pool and the Ray
cluster. :func:`load_spec` reads it with :mod:`tomllib`, validates it with pydantic (unknown keys
are errors everywhere) and resolves relative paths against the spec file's folder.

Bad input never produces a traceback: :func:`load_spec` raises :class:`SpecError` (a
:class:`~search.errors.UserError`) whose message names the file, the key and the fix, e.g.::

    spec.toml: [sampler] name: 'foo' is not one of nsga2|nsga3|tpe|random|sparsevit; fix: set name = "nsga2"

Example spec (every section but ``[supernet]`` and ``[latency]`` is optional)::

    name = "swin_t_mosaic"
    seed = 0
    n_trials = 2000

    [supernet]
    checkpoint = "../checkpoints/swin_t_mosaic.safetensors"   # sidecar swin_t_mosaic.json beside it

    [latency]
    predictor = "../checkpoints/predictor_cpu.json"
    budget_ms = 40.0

    [space]
    ratios = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    granularity = "pair"

    [sampler]
    name = "sparsevit"

The reference values (search space, population 100, 25 parents, mutation probability 0.1) come
from SparseViT (Chen et al., CVPR 2023, arXiv 2303.17605), reference ``tools/search.py``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from search.errors import UserError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 with the tomli backport
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "BUILTIN_EVALUATORS",
    "DEFAULT_RATIOS",
    "WEIGHT_MODULES",
    "EvaluatorSection",
    "ExperimentSpec",
    "LatencySection",
    "ObjectivesSection",
    "RaySection",
    "SamplerSection",
    "SpaceSection",
    "SpecError",
    "SupernetSection",
    "WorkersSection",
    "file_sha256",
    "format_validation_error",
    "frozen_diff",
    "load_spec",
]

from supernet.sparse_swin import DEFAULT_RATIOS  # noqa: E402 - the SparseViT reference grid, one home
#: Evaluators shipped with the package (anything else is ``pkg.mod:function``).
BUILTIN_EVALUATORS: tuple[str, ...] = ("fashion_mosaic",)
#: DIMAP modules whose weight-pruning ratio can be searched jointly (``[space] weight_ratios``).
WEIGHT_MODULES: tuple[str, ...] = ("qkv", "proj", "mlp")

_EVALUATOR_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_METRIC_RE = re.compile(r"^[A-Za-z_]\w*$")


def _samplers() -> dict[str, Any]:
    from search.samplers import SAMPLERS

    return SAMPLERS


class SpecError(UserError):
    """The spec file is missing, is not valid TOML, or fails validation.

    The message is one line (see :class:`~search.errors.UserError`); with several validation
    errors it starts with ``"<file>: N errors: "`` and joins them with ``" | "``.

    Attributes:
        lines: one line per problem (``"<file>: [section] key: what; fix: how"``).
    """

    def __init__(self, message: object, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines: list[str] = list(lines) if lines else [self.message]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Resolve a relative path against ``context["base_dir"]`` (the spec file's folder)."""
    if value is None:
        return None
    value = Path(os.path.expanduser(str(value)))
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return Path(os.path.normpath(value)) if value.is_absolute() else value


def _check_ratio_list(values: list[float], label: str = "") -> list[float]:
    """Validate a list of ratios: non-empty, each 0 <= r < 1, sorted ascending, unique.

    Raises:
        ValueError: one-line message (prefixed ``"<label>: "``) with the fix.
    """
    pre = f"{label}: " if label else ""
    if not values:
        raise ValueError(f"{pre}empty list; fix: give at least one ratio, e.g. [0.0, 0.5]")
    for r in values:
        if not (math.isfinite(r) and 0.0 <= r < 1.0):
            raise ValueError(
                f"{pre}{r!r} is outside 0 <= r < 1; fix: use ratios in [0, 1), e.g. 0.8"
            )
    fixed = sorted(set(values))
    if list(values) != fixed:
        raise ValueError(
            f"{pre}must be sorted ascending without duplicates, got {list(values)}; "
            f"fix: write {fixed}"
        )
    return [float(r) for r in values]


class _Section(BaseModel):
    """Base of every spec table: unknown keys are errors, no silent type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)


_PathField = Annotated[Path, Field(strict=False)]


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------

class SupernetSection(_Section):
    """``[supernet]``: the trained SparseSwin supernet.

    Attributes:
        checkpoint: ``X.safetensors`` weights; the JSON sidecar ``X.json`` (model kwargs,
            sha256, metrics; see ``supernet/checkpoint.py``) must lie beside it. Relative to the
            spec file's folder.
    """

    checkpoint: _PathField

    @field_validator("checkpoint", mode="after")
    @classmethod
    def _checkpoint(cls, v: Path, info: ValidationInfo) -> Path:
        if v.suffix != ".safetensors":
            raise ValueError(
                f"expected a .safetensors file, got '{v}'; fix: point it at X.safetensors "
                "(the X.json sidecar must lie beside it)"
            )
        return _resolve_path(v, info)  # type: ignore[return-value]

    @property
    def sidecar(self) -> Path:
        """The JSON sidecar path ``X.json`` beside ``X.safetensors``."""
        return self.checkpoint.with_suffix(".json")


class LatencySection(_Section):
    """``[latency]``: latency predictor and budget.

    Attributes:
        predictor: predictor JSON written by ``latency.profile`` (relative to the spec folder).
        budget_ms: latency budget in ms (> 0); configs predicted slower are infeasible.
            ``None`` (default) = no budget.
        budget_fraction: budget as a fraction (0..1] of the dense model's predicted latency,
            for specs that must work on any device; resolved to ms when the search starts.
            Give at most one of ``budget_ms`` / ``budget_fraction``.
    """

    predictor: _PathField
    budget_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    budget_fraction: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_budget(self) -> "LatencySection":
        if self.budget_ms is not None and self.budget_fraction is not None:
            raise ValueError("give budget_ms or budget_fraction, not both; fix: delete one of them")
        return self

    @field_validator("predictor", mode="after")
    @classmethod
    def _predictor(cls, v: Path, info: ValidationInfo) -> Path:
        return _resolve_path(v, info)  # type: ignore[return-value]


class EvaluatorSection(_Section):
    """``[evaluator]``: how a config is scored.

    Attributes:
        name: ``"fashion_mosaic"`` (built-in) or ``"pkg.module:function"`` with signature
            ``function(model: SegSupernet, **kwargs) -> dict[str, float]``.
        subset_size: number of validation canvases scored per config (> 0).
        batch_size: evaluation batch size (> 0).
        split: ``"val"`` (search) or ``"test"`` (final report only).
        kwargs: extra keyword arguments passed through to the evaluator.
        img_size: the search resolution in px (default: the predictor's profiled size, else the
            checkpoint's): the built-in evaluator's canvases, the kept windows of the result
            cache and the MACs use it; the predictor must have been profiled at it.
        mosaic: built-in evaluator only: canvas layout overrides (``MosaicSpec`` fields, e.g.
            ``{min_items = 4, max_items = 32}``) over the checkpoint's training canvases.
        fidelity: multi-fidelity evaluation (:mod:`search.fidelity`): score a new config on the
            first ``first_fraction`` of the subset and finish only configs that could still enter
            the front. Needs an evaluator with the ranged protocol (the built-in one has it).
        first_fraction: share of the subset in the first rung (0 < f < 1).
        fidelity_z: paired standard deviations a stop needs (see :mod:`search.fidelity`).
        fidelity_min_pairs: fully evaluated configs before any stop.
    """

    name: str = "fashion_mosaic"
    subset_size: int = Field(default=256, gt=0)
    batch_size: int = Field(default=32, gt=0)
    split: Literal["val", "test"] = "val"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    img_size: int | None = Field(default=None, ge=32, le=8192)
    mosaic: dict[str, Any] = Field(default_factory=dict)
    fidelity: bool = True
    first_fraction: float = Field(default=0.25, gt=0, lt=1, allow_inf_nan=False)
    fidelity_z: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    fidelity_min_pairs: int = Field(default=8, ge=2)

    @field_validator("mosaic")
    @classmethod
    def _mosaic(cls, v: dict[str, Any]) -> dict[str, Any]:
        from supernet.data import MosaicSpec

        unknown = sorted(set(v) - set(MosaicSpec.model_fields) - {"img_size"})
        if unknown:
            raise ValueError(f"unknown canvas keys {unknown}; fix: use MosaicSpec fields "
                             f"({', '.join(k for k in MosaicSpec.model_fields if k != 'data_dir')})")
        if "img_size" in v:
            raise ValueError("img_size: set it as [evaluator] img_size, not inside mosaic; fix: move it")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v in BUILTIN_EVALUATORS or _EVALUATOR_RE.match(v):
            return v
        raise ValueError(
            f"{v!r} is neither a built-in evaluator ({'|'.join(BUILTIN_EVALUATORS)}) nor "
            "'pkg.module:function'; fix: write e.g. name = \"fashion_mosaic\" or "
            "name = \"mypkg.evals:score\""
        )


class SpaceSection(_Section):
    """``[space]``: the per-block activation-sparsity search space.

    Attributes:
        ratios: candidate sparsity ratios (0 <= r < 1, sorted, unique); default the SparseViT
            reference {0, 0.1, ..., 0.8}.
        granularity: ``"pair"`` = one ratio per W-MSA/SW-MSA block pair (reference) or
            ``"block"`` = one ratio per block.
        monotonic: ``True`` = ratios are non-decreasing inside a stage (genes of a stage are
            sorted when decoded, as the reference re-sorts after mutation/crossover).
        canonical: ``True`` = each gene offers one ratio per distinct kept-window count of its
            blocks at the search resolution (ratios that run the same computation collapse to
            the smallest of them), so the sampler never proposes two names for one computation.
        frozen_stages: stage indices forced dense (ratio 0, no genes).
        weight_ratios: optional joint DIMAP weight-pruning search, one ratio list per module,
            e.g. ``{qkv = [0, 0.15, 0.35, 0.55], proj = [...], mlp = [...]}``.
    """

    ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS))
    granularity: Literal["pair", "block"] = "pair"
    monotonic: bool = True
    canonical: bool = True
    frozen_stages: list[int] = Field(default_factory=list)
    weight_ratios: dict[Literal["qkv", "proj", "mlp"], list[float]] | None = None

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        return _check_ratio_list(v)

    @field_validator("frozen_stages")
    @classmethod
    def _frozen(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError(
                f"must be distinct stage indices >= 0, got {v}; fix: e.g. frozen_stages = [3]"
            )
        return sorted(v)

    @field_validator("weight_ratios")
    @classmethod
    def _weights(cls, v: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
        if v is None:
            return None
        if not v:
            raise ValueError(
                "is an empty table; fix: remove it or give e.g. {qkv = [0.0, 0.15, 0.35]}"
            )
        out = {}
        for module in WEIGHT_MODULES:
            if module in v:
                out[module] = _check_ratio_list(v[module], module)
        return out


class ObjectivesSection(_Section):
    """``[objectives]``: what the search optimises.

    Attributes:
        metric: evaluator metric key (default ``"miou"``), the first objective.
        metric_direction: ``"maximize"`` (default) or ``"minimize"``.
        latency: minimise predicted latency (``latency_ms``, ms) as an objective.
        macs: minimise analytic MACs (``macs``) as an extra objective.
        params: minimise remaining weights (``params``); needs ``[space] weight_ratios``.
    """

    metric: str = "miou"
    metric_direction: Literal["maximize", "minimize"] = "maximize"
    latency: bool = True
    macs: bool = False
    params: bool = False

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if not _METRIC_RE.match(v):
            raise ValueError(f"{v!r} is not a metric key; fix: use an identifier, e.g. \"miou\"")
        from search.trial_log import COLUMN_DOCS

        reserved = set(COLUMN_DOCS) | {"latency_ms", "metrics_json", "sampler_attrs", "params_json"}
        if v in reserved or re.match(r"^r_\d+$", v):
            raise ValueError(f"{v!r} names a column of the trial log itself; fix: name the evaluator's metric "
                             "otherwise, e.g. \"miou\"")
        return v

    def names(self) -> list[str]:
        """Objective names in study order: metric, then ``latency_ms``, ``macs``, ``params``."""
        out = [self.metric]
        out += [n for n, on in (("latency_ms", self.latency), ("macs", self.macs),
                                ("params", self.params)) if on]
        return out

    def directions(self) -> list[str]:
        """Optuna directions matching :meth:`names` (the metric's, then ``"minimize"``)."""
        return [self.metric_direction] + ["minimize"] * (len(self.names()) - 1)


class SamplerSection(_Section):
    """``[sampler]``: the Optuna sampler (see :mod:`search.samplers`: one file per sampler).

    ``name`` picks the sampler; every other key is one of that sampler's options (its ``Options``
    model: an option it does not declare is an error); unset keys take the sampler's default
    (:meth:`options`). Built in: ``nsga2`` / ``nsga3`` (population_size 50, mutation_prob
    1 / genes, crossover_prob 0.9, swapping_prob 0.5), ``tpe`` (n_startup_trials 10), ``random``,
    ``sparsevit`` (population_size 100, parents 25, mutation_prob 0.1, crossover_prob 0.5).

    ``feasible_only`` (default true): the sampler proposes only configs the latency predictor puts within
    the budget, and new computations where it can (:mod:`search.samplers._feasible`); ``false`` restores the
    old gate (over-budget proposals become ``rejected`` trials that count toward ``n_trials``), kept for
    comparisons (``bench/search_efficiency.py``).

    ``seed_uniform`` (default true): a fresh search's first trials are the feasible uniform-sparsity configs
    (one ratio on stages 0 .. n-2, the paper's baseline; at most half a population, those nearest the budget),
    so the front starts at the baseline it has to beat; a fork gets them beside its parent's front. Not applied
    to resumes.

    ``seed_sparsest`` (default true): beside them, the sparsest config of the space (every gene at its largest
    ratio, the fastest computation) when it is within the budget, so the front spans its whole latency range
    from the first generation on. Not applied to resumes.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = "nsga2"
    feasible_only: bool = True
    seed_uniform: bool = True
    seed_sparsest: bool = True

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        names = _samplers()
        if v not in names:
            raise ValueError(f"{v!r} is not one of {'|'.join(names)}; fix: set name = \"nsga2\"")
        return v

    @model_validator(mode="after")
    def _applicable(self) -> SamplerSection:
        mod = _samplers()[self.name]
        given = dict(self.model_extra or {})
        allowed = set(mod.Options.model_fields)
        for key in given:
            if key not in allowed:
                users = "|".join(n for n, m in _samplers().items() if key in m.Options.model_fields)
                if not users:
                    known = sorted(allowed | {"name"})
                    close = difflib.get_close_matches(key, known, n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise ValueError(f"{key}: unknown key; fix: {hint}remove or rename it (known: {', '.join(known)})")
                raise ValueError(f"{key}: not used by sampler {self.name!r} (only by {users}); "
                                 f"fix: remove {key} or change name")
        try:
            mod.Options(**given)
        except ValidationError as exc:
            err = dict(exc.errors(include_url=False)[0])
            if err.get("type") == "value_error":
                raise ValueError(str(err.get("msg", "")).removeprefix("Value error, ")) from None
            raise ValueError(_one_error({**err, "loc": tuple(err.get("loc", ()))}).replace(" (key)", "")) from None
        return self

    def options(self) -> dict[str, Any]:
        """Effective options of the chosen sampler: the set keys over its defaults."""
        return _samplers()[self.name].Options(**dict(self.model_extra or {})).model_dump()


class WorkersSection(_Section):
    """``[workers]``: the Ray actor pool.

    Attributes:
        num_workers: evaluation actors (>= 1, default 2).
        cpus_per_worker: CPU cores reserved per actor (>= 1, default 1).
        torch_threads: ``torch.set_num_threads`` in each actor (default ``cpus_per_worker``).
        max_retries: retries of a trial whose worker died (>= 0, default 2).
        gpus_per_worker: GPUs reserved per actor (0 = CPU workers; fractional shares one GPU,
            e.g. 0.5); with > 0 each actor moves the checkpoint and its evaluation canvases to the
            GPU once and evaluates there.
        prefix_cache_mb: memory bound of each worker's stage-prefix activation cache (MiB, on the
            worker's device; 0 = off), see :mod:`supernet.prefix_cache`.
    """

    num_workers: int = Field(default=2, ge=1)
    cpus_per_worker: int = Field(default=1, ge=1)
    torch_threads: int | None = Field(default=None, ge=1)
    max_retries: int = Field(default=2, ge=0)
    gpus_per_worker: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    prefix_cache_mb: int = Field(default=1024, ge=0)

    @model_validator(mode="after")
    def _threads(self) -> WorkersSection:
        if self.torch_threads is None:
            self.torch_threads = self.cpus_per_worker
        return self


class RaySection(_Section):
    """``[ray]``: where the workers run.

    Attributes:
        address: Ray cluster address (``"auto"``, ``"ray://host:10001"``, ...); ``None``
            (default) starts an embedded local Ray.
        dashboard: start the Ray dashboard with the embedded Ray (default ``False``).
    """

    address: str | None = None
    dashboard: bool = False


# --------------------------------------------------------------------------------------------
# the spec
# --------------------------------------------------------------------------------------------

class ExperimentSpec(_Section):
    """A validated experiment spec (see the module docstring for the TOML layout).

    Attributes:
        name: experiment name (letters, digits, ``_.-``); also the Optuna study name.
        output_dir: run folder (trial log, study, Pareto front); default
            ``<spec folder>/runs/<name>``. Relative to the spec file's folder.
        seed: sampler / subset seed (default 0).
        n_trials: number of trials to run (> 0, default 500).
        supernet, latency, evaluator, space, objectives, sampler, workers, ray: the sections.

    Build it with :func:`load_spec` (resolves paths) or ``ExperimentSpec.model_validate(data,
    context={"base_dir": folder})``.
    """

    name: str
    output_dir: Annotated[Path | None, Field(strict=False)] = None
    seed: int = Field(default=0, ge=0, lt=2 ** 32)  # numpy / Optuna seeds: 0 .. 2**32 - 1
    n_trials: int = Field(default=500, gt=0)
    supernet: SupernetSection
    latency: LatencySection
    evaluator: EvaluatorSection = Field(default_factory=EvaluatorSection)
    space: SpaceSection = Field(default_factory=SpaceSection)
    objectives: ObjectivesSection = Field(default_factory=ObjectivesSection)
    sampler: SamplerSection = Field(default_factory=SamplerSection)
    workers: WorkersSection = Field(default_factory=WorkersSection)
    ray: RaySection = Field(default_factory=RaySection)

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                f"{v!r} has characters other than letters, digits and _.-; "
                "fix: e.g. name = \"swin_t_mosaic\""
            )
        return v

    @field_validator("output_dir", mode="after")
    @classmethod
    def _output_dir(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve_path(v, info)

    @model_validator(mode="after")
    def _cross(self, info: ValidationInfo) -> ExperimentSpec:
        if self.output_dir is None:
            self.output_dir = _resolve_path(Path("runs") / self.name, info)
        if self.objectives.params and self.space.weight_ratios is None:
            raise ValueError(
                "[objectives] params: needs [space] weight_ratios (no weights are pruned "
                "otherwise); fix: set params = false or add weight_ratios"
            )
        return self

    @property
    def source(self) -> Path | None:
        """The TOML file this spec was loaded from (``None`` if built in code)."""
        return self._source

    # ---- resume check ----------------------------------------------------------------------

    def frozen_fields(
        self, checkpoint_sha256: str | None = None, predictor_sha256: str | None = None
    ) -> dict[str, Any]:
        """What must not change between a run and its resume.

        The checkpoint and predictor are identified by content (sha256 of the files), so
        moving them is fine, retraining is not. Also frozen: the latency budget, the search
        space, the objectives, the evaluator (name, split, subset, kwargs) and the sampler.
        Free to change: ``n_trials``, ``seed``, ``[workers]``, ``[ray]``, ``batch_size``,
        paths.

        Args:
            checkpoint_sha256: the checkpoint's sha256 hex if already known (skips hashing).
            predictor_sha256: the predictor file's sha256 hex if already known.

        Raises:
            SpecError: the checkpoint or predictor file does not exist.
        """
        ev = self.evaluator
        return {
            "checkpoint_sha256": checkpoint_sha256 or _sha_or_error(
                self.supernet.checkpoint, "[supernet] checkpoint"),
            "predictor_sha256": predictor_sha256 or _sha_or_error(
                self.latency.predictor, "[latency] predictor"),
            "budget_ms": self.latency.budget_ms,
            "space": self.space.model_dump(mode="json"),
            "objectives": {"names": self.objectives.names(),
                           "directions": self.objectives.directions()},
            "evaluator": {"name": ev.name, "split": ev.split, "subset_size": ev.subset_size,
                          "kwargs": ev.kwargs},
            "sampler": {"name": self.sampler.name, **self.sampler.options()},
        }

    def frozen_json(
        self, checkpoint_sha256: str | None = None, predictor_sha256: str | None = None
    ) -> str:
        """:meth:`frozen_fields` as canonical JSON (sorted keys, no spaces)."""
        return json.dumps(self.frozen_fields(checkpoint_sha256, predictor_sha256),
                          sort_keys=True, separators=(",", ":"), default=str)

    def spec_digest(
        self, checkpoint_sha256: str | None = None, predictor_sha256: str | None = None
    ) -> str:
        """sha256 hex (64 chars) of :meth:`frozen_json`; equal digests = safe to resume."""
        return hashlib.sha256(
            self.frozen_json(checkpoint_sha256, predictor_sha256).encode()).hexdigest()

    # ---- serialisation ---------------------------------------------------------------------

    def to_toml(self) -> str:
        """The spec as TOML with every default spelled out and absolute paths.

        ``load_spec`` of the result gives an equal spec (used to save the resolved spec in
        the run folder).
        """
        data = self.model_dump(mode="json", exclude_none=True)
        lines: list[str] = []
        for key, value in data.items():
            if not isinstance(value, dict):
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value in data.items():
            if isinstance(value, dict):
                lines.append("")
                lines.append(f"[{key}]")
                for k, v in value.items():
                    lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    """Render one value as TOML (inline tables for nested dicts)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# --------------------------------------------------------------------------------------------
# files, hashing
# --------------------------------------------------------------------------------------------

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex of a file's bytes, read in 1 MiB chunks; cached on (path, size, mtime).

    Raises:
        FileNotFoundError: the file does not exist.
    """
    from supernet.fileio import sha256_file

    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(p)
    return _SHA_CACHE[key]


def _sha_or_error(path: Path, key: str) -> str:
    try:
        return file_sha256(path)
    except FileNotFoundError:
        raise SpecError(f"{key}: file not found: {path}; fix: correct the path (relative paths "
                        "resolve against the spec file's folder)") from None


def frozen_diff(old: str | dict[str, Any], new: str | dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two :meth:`ExperimentSpec.frozen_json` outputs.

    Example: ``["space.ratios", "checkpoint_sha256"]``; empty list = identical.
    """
    a = json.loads(old) if isinstance(old, str) else old
    b = json.loads(new) if isinstance(new, str) else new
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}.{k}" if prefix else str(k))
        elif x != y:
            out.append(prefix)

    walk(a, b, "")
    return out


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

_SECTIONS: dict[str, type[BaseModel]] = {
    "supernet": SupernetSection,
    "latency": LatencySection,
    "evaluator": EvaluatorSection,
    "space": SpaceSection,
    "objectives": ObjectivesSection,
    "sampler": SamplerSection,
    "workers": WorkersSection,
    "ray": RaySection,
}

_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
               dict: "table"}
_EXPECTED = {
    "int_type": ("an integer", "e.g. {key} = 10"),
    "int_parsing": ("an integer", "e.g. {key} = 10"),
    "int_from_float": ("an integer", "e.g. {key} = 10"),
    "float_type": ("a number", "e.g. {key} = 0.5"),
    "float_parsing": ("a number", "e.g. {key} = 0.5"),
    "finite_number": ("a finite number", "e.g. {key} = 0.5"),
    "bool_type": ("true or false", "write {key} = true (no quotes)"),
    "string_type": ("a string", "quote it, e.g. {key} = \"...\""),
    "list_type": ("an array", "e.g. {key} = [0.0, 0.5]"),
    "dict_type": ("a table", "e.g. {key} = {{a = 1}}"),
    "path_type": ("a path string", "quote it, e.g. {key} = \"path/to/file\""),
    "model_type": ("a table", "write it as a [{key}] section"),
    "model_attributes_type": ("a table", "write it as a [{key}] section"),
}


def _toml_type(v: Any) -> str:
    return _TOML_TYPES.get(type(v), type(v).__name__)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (``loc[-1]``), if any."""
    if len(loc) == 1:
        return ExperimentSpec
    if len(loc) == 2 and loc[0] in _SECTIONS:
        return _SECTIONS[loc[0]]
    return None


def _where(loc: tuple[Any, ...]) -> str:
    """``("sampler", "name")`` -> ``"[sampler] name"``; ``("seed",)`` -> ``"seed"``."""
    parts = list(loc)
    head = ""
    if parts and parts[0] in _SECTIONS:
        head = f"[{parts.pop(0)}]"
    tail = ""
    for p in parts:
        if isinstance(p, int):
            tail += f"[{p}]"
        elif p == "[key]":
            tail += " (key)"
        else:
            tail += f".{p}" if tail else str(p)
    return f"{head} {tail}".strip() if tail else (head or "spec")


def _one_error(err: dict[str, Any]) -> str:
    """One pydantic error dict -> ``"[section] key: what; fix: how"``."""
    loc = tuple(err.get("loc", ()))
    typ = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    msg = str(err.get("msg", ""))
    key = str(loc[-1]) if loc else "key"

    if typ == "value_error":
        text = msg.removeprefix("Value error, ")
        if text.startswith("["):
            return text  # cross-section message, already names its key
        m = re.match(r"^([A-Za-z_]\w*): ", text)
        model = _model_at(loc + ("x",))
        if m and model is not None and (m.group(1) in model.model_fields or (
                model is SamplerSection and any(m.group(1) in s.Options.model_fields for s in _samplers().values())
                or model is SamplerSection and "unknown key" in text)):
            loc = loc + (m.group(1),)
            text = text[m.end():]
        where = _where(loc)
        return f"{where}: {text}" if "; fix:" in text else f"{where}: {text}; fix: correct it"
    where = _where(loc)
    if typ == "extra_forbidden":
        model = _model_at(loc)
        known = sorted(model.model_fields) if model is not None else []
        if len(loc) == 1:
            known += [s for s in _SECTIONS if s not in known]
            known = sorted(set(known))
        if len(loc) == 2 and key in ExperimentSpec.model_fields:
            return (f"{where}: top-level key found inside [{loc[0]}]; fix: move {key} = ... "
                    "above the first [section] header")
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        known_txt = f" (known: {', '.join(known)})" if known else ""
        return f"{where}: unknown key; fix: {hint}remove or rename it{known_txt}"
    if typ == "missing":
        if len(loc) == 1 and key in _SECTIONS:
            return f"[{key}]: required section is missing; fix: add a [{key}] table"
        return f"{where}: required key is missing; fix: add {key} = ..."
    if typ == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        alts = "|".join(choices)
        if loc and loc[-1] == "[key]":
            return (f"{_where(loc[:-2])}: unknown key {value!r} (not one of {alts}); "
                    f"fix: rename it to one of {alts}")
        return (f"{where}: {value!r} is not one of {alts}; "
                f"fix: set {key} = {json.dumps(choices[0]) if choices else '...'}")
    for bound, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal") \
                and bound in ctx:
            return f"{where}: must be {op} {ctx[bound]}, got {value!r}; fix: use a value {op} " \
                   f"{ctx[bound]}"
    if typ in _EXPECTED:
        expected, fix = _EXPECTED[typ]
        return (f"{where}: expected {expected}, got {value!r} ({_toml_type(value)}); "
                f"fix: {fix.format(key=key)}")
    return f"{where}: {msg}; fix: correct it"


def format_validation_error(exc: ValidationError, path: str | os.PathLike[str]) -> str:
    """Turn a pydantic ``ValidationError`` into one line per error.

    Each line reads ``"<file name>: [section] key: what is wrong; fix: what to write"``, e.g.
    ``"spec.toml: [sampler] name: 'foo' is not one of nsga2|nsga3|tpe|random|sparsevit;
    fix: set name = \\"nsga2\\""``.

    Args:
        exc: the validation error from ``ExperimentSpec.model_validate``.
        path: the spec file (its name prefixes every line).

    Returns:
        The lines joined by ``"\\n"`` (no trailing newline).
    """
    name = Path(path).name
    lines = []
    for err in exc.errors(include_url=False):
        line = f"{name}: {_one_error(dict(err))}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def load_spec(path: str | os.PathLike[str]) -> ExperimentSpec:
    """Read, validate and resolve a TOML experiment spec.

    Relative paths (``output_dir``, ``[supernet] checkpoint``, ``[latency] predictor``)
    resolve against the spec file's folder. Files are not opened here (see
    :meth:`ExperimentSpec.frozen_fields`).

    Args:
        path: the ``.toml`` file.

    Returns:
        The validated spec (``spec.source`` = the absolute file path).

    Raises:
        SpecError: the file is missing or unreadable, is not valid TOML (message names the
            line), or fails validation (message names each bad key and the fix).
    """
    p = Path(path).expanduser().absolute()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{p}: spec file not found; fix: check the path "
                        "(e.g. experiments/fashion_mosaic/spec.toml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{p}: cannot read the spec ({exc}); fix: check the file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"line {m.group(1)}, column {m.group(2)}" if m else "?"
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise SpecError(f"{p.name}: {where}: TOML syntax error: {reason}; fix: correct the TOML "
                        "syntax there (strings need quotes, tables are [name])") from None
    try:
        spec = ExperimentSpec.model_validate(data, context={"base_dir": p.parent})
    except ValidationError as exc:
        lines = format_validation_error(exc, p).splitlines()
        if len(lines) == 1:
            raise SpecError(lines[0], lines) from None
        bodies = [ln.removeprefix(f"{p.name}: ") for ln in lines]
        raise SpecError(f"{p.name}: {len(lines)} errors: " + " | ".join(bodies), lines) from None
    spec._source = p
    return spec
