"""Search space: Optuna parameters ("genes") <-> per-block sparsity configs.

A Swin model with stage depths ``depths`` (Swin-T ``[2, 2, 6, 2]``) gets one categorical gene per
block pair (``granularity="pair"``, the SparseViT reference: the W-MSA and SW-MSA block of a pair
share a ratio) or per block (``"block"``). Genes are named ``s{stage}_p{pair}`` /
``s{stage}_b{block}``; the optional joint DIMAP weight-pruning genes are ``w_qkv``, ``w_proj``,
``w_mlp`` (one ratio per module type, DIMAP arXiv 2404.13648).

Monotonic spaces follow the reference search (SparseViT arXiv 2303.17605, ``tools/search.py``):
genes are sampled, mutated and crossed freely and the values of a stage are **sorted ascending
when decoded**, so ratios never decrease inside a stage. Different gene vectors can therefore
decode to the same :class:`Config`; :func:`config_hash` identifies configs for de-duplication.

Example::

    >>> space = SearchSpace([2, 2, 6, 2])
    >>> cfg = space.decode({"s0_p0": 0.7, "s1_p0": 0.0, "s2_p0": 0.5, "s2_p1": 0.2,
    ...                     "s2_p2": 0.4, "s3_p0": 0.0})
    >>> cfg.ratios
    [[0.7, 0.7], [0.0, 0.0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0.0, 0.0]]
    >>> space.size()
    120285
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from supernet.sparse_swin import DEFAULT_RATIOS

__all__ = ["Config", "SearchSpace", "config_hash", "WEIGHT_GENES"]

#: Gene name of each DIMAP module's weight-pruning ratio.
WEIGHT_GENES: dict[str, str] = {"qkv": "w_qkv", "proj": "w_proj", "mlp": "w_mlp"}

_DECIMALS = 6  # ratios are rounded to 1e-6 for equality and hashing


def _r(x: float) -> float:
    return round(float(x), _DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


class Config:
    """One sparsity configuration (immutable, hashable, compares by value).

    Attributes:
        depths: blocks per stage, e.g. ``(2, 2, 6, 2)``.
        flat: activation-sparsity ratio (0..1) of every block, stage by stage.
        weight_ratios: DIMAP weight-pruning ratio (0..1) per module (``qkv``, ``proj``,
            ``mlp``), or ``None`` when weights are not searched.
    """

    __slots__ = ("depths", "flat", "_weights")

    def __init__(
        self,
        ratios: Sequence[Sequence[float]],
        weight_ratios: Mapping[str, float] | None = None,
    ) -> None:
        """Build from the nested form ``[[r, r], [r, r], [...6], [r, r]]`` (ratios 0 <= r < 1).

        Raises:
            ValueError: a ratio outside [0, 1) or an unknown weight module.
        """
        depths = tuple(len(stage) for stage in ratios)
        flat = tuple(_r(x) for stage in ratios for x in stage)
        for x in flat:
            if not (0.0 <= x < 1.0):
                raise ValueError(f"ratio {x} outside 0 <= r < 1")
        weights = None
        if weight_ratios is not None:
            unknown = set(weight_ratios) - set(WEIGHT_GENES)
            if unknown:
                raise ValueError(f"unknown weight modules {sorted(unknown)}; known: qkv, proj, mlp")
            weights = tuple(sorted((k, _r(v)) for k, v in weight_ratios.items()))
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "flat", flat)
        object.__setattr__(self, "_weights", weights)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is immutable")

    @property
    def ratios(self) -> list[list[float]]:
        """Nested ratios, one list per stage, one ratio (0..1) per block (a fresh list)."""
        out, i = [], 0
        for d in self.depths:
            out.append(list(self.flat[i:i + d]))
            i += d
        return out

    @property
    def weight_ratios(self) -> dict[str, float] | None:
        """DIMAP weight-pruning ratio per module, or ``None``."""
        return None if self._weights is None else dict(self._weights)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"ratios": nested, "weight_ratios": dict | None}``."""
        return {"ratios": self.ratios, "weight_ratios": self.weight_ratios}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return (self.depths, self.flat, self._weights) == (other.depths, other.flat, other._weights)

    def __hash__(self) -> int:
        return hash((self.depths, self.flat, self._weights))

    def __repr__(self) -> str:
        w = f", weight_ratios={self.weight_ratios}" if self._weights is not None else ""
        return f"Config({self.ratios}{w})"


def config_hash(config: Config, checkpoint_sha256: str) -> str:
    """Stable identity of a config evaluated on one checkpoint (for the result cache).

    sha256 of the canonical JSON ``{"checkpoint": sha, "ratios": nested (rounded to 1e-6),
    "weight_ratios": sorted dict or null}``, first 16 hex characters.

    Args:
        config: the sparsity config.
        checkpoint_sha256: sha256 hex of the supernet checkpoint (same config on another
            checkpoint -> another hash).
    """
    payload = {"checkpoint": checkpoint_sha256, "ratios": config.ratios,
               "weight_ratios": config.weight_ratios}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Gene:
    __slots__ = ("name", "stage", "blocks", "choices", "module")

    def __init__(self, name: str, stage: int, blocks: tuple[int, ...], choices: tuple[float, ...],
                 module: str | None = None) -> None:
        self.name, self.stage, self.blocks = name, stage, blocks
        self.choices, self.module = choices, module


class SearchSpace:
    """Per-block activation-sparsity space (plus optional DIMAP weight ratios).

    Args:
        depths: blocks per stage, e.g. ``[2, 2, 6, 2]`` for Swin-T.
        ratios: candidate ratios (0 <= r < 1, sorted, unique); reference {0, 0.1, ..., 0.8}.
        granularity: ``"pair"`` (one gene per W/SW block pair, the reference) or ``"block"``.
        monotonic: sort the genes of a stage ascending when decoding (non-decreasing ratios
            inside a stage, as the supernet expects).
        frozen_stages: stages forced dense (ratio 0, no genes).
        weight_ratios: ``{"qkv": [...], "proj": [...], "mlp": [...]}`` candidate DIMAP weight-
            pruning ratios per module (any subset of the modules), or ``None``.
        num_windows: nW of every block at the search resolution (``SparseSwin.num_windows``), one list
            per stage: the space becomes *canonical*, each gene offering one ratio per distinct
            kept-window count k = int(nW (1 - r)) of its blocks (the smallest ratio giving that k), so
            no two choices run the same computation. ``None``: every ratio is a choice.

    Raises:
        ValueError: empty/odd depths for ``"pair"``, bad ratios, a frozen stage out of range,
            an unknown granularity or weight module.
    """

    def __init__(
        self,
        depths: Sequence[int],
        ratios: Sequence[float] = DEFAULT_RATIOS,
        granularity: str = "pair",
        monotonic: bool = True,
        frozen_stages: Iterable[int] = (),
        weight_ratios: Mapping[str, Sequence[float]] | None = None,
        num_windows: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.depths: tuple[int, ...] = tuple(int(d) for d in depths)
        if not self.depths or any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be positive block counts, got {list(depths)}")
        if granularity not in ("pair", "block"):
            raise ValueError(f"granularity must be 'pair' or 'block', got {granularity!r}")
        if granularity == "pair" and any(d % 2 for d in self.depths):
            raise ValueError(f"granularity 'pair' needs even stage depths, got {list(depths)}; "
                             "use granularity 'block'")
        self.ratios: tuple[float, ...] = self._check_ratios(ratios, "ratios")
        self.granularity = granularity
        self.monotonic = bool(monotonic)
        self.frozen_stages: tuple[int, ...] = tuple(sorted(set(int(s) for s in frozen_stages)))
        for s in self.frozen_stages:
            if not 0 <= s < len(self.depths):
                raise ValueError(f"frozen stage {s} out of range: the model has stages "
                                 f"0..{len(self.depths) - 1}")
        self.weight_ratios: dict[str, tuple[float, ...]] | None = None
        if weight_ratios is not None:
            unknown = set(weight_ratios) - set(WEIGHT_GENES)
            if unknown or not weight_ratios:
                raise ValueError(f"weight_ratios modules must be among qkv, proj, mlp, got "
                                 f"{sorted(weight_ratios)}")
            self.weight_ratios = {m: self._check_ratios(weight_ratios[m], f"weight_ratios.{m}")
                                  for m in WEIGHT_GENES if m in weight_ratios}

        flat_nw: list[int] | None = None
        if num_windows is not None:
            if [len(r) for r in num_windows] != list(self.depths):
                raise ValueError(f"num_windows {num_windows} must list one count per block of depths {list(depths)}")
            flat_nw = [int(n) for r in num_windows for n in r]
        self.num_windows = [list(r) for r in num_windows] if num_windows is not None else None

        def choices(blocks: tuple[int, ...]) -> tuple[float, ...]:
            if flat_nw is None:
                return self.ratios
            from supernet.sparse_swin import keep_count

            seen: dict[tuple[int, ...], float] = {}
            for r in self.ratios:  # ascending: the first ratio of each kept-window count represents it
                seen.setdefault(tuple(keep_count(flat_nw[b], r) for b in blocks), r)
            return tuple(seen.values())

        genes: list[_Gene] = []
        start = 0
        for s, d in enumerate(self.depths):
            if s not in self.frozen_stages:
                if granularity == "pair":
                    for p in range(d // 2):
                        blocks = (start + 2 * p, start + 2 * p + 1)
                        genes.append(_Gene(f"s{s}_p{p}", s, blocks, choices(blocks)))
                else:
                    for b in range(d):
                        genes.append(_Gene(f"s{s}_b{b}", s, (start + b,), choices((start + b,))))
            start += d
        if self.weight_ratios:
            for m, choices in self.weight_ratios.items():
                genes.append(_Gene(WEIGHT_GENES[m], -1, (), choices, module=m))
        self._genes = genes
        self._n_blocks = start
        self._choice_index = {g.name: {_r(c): i for i, c in enumerate(g.choices)} for g in genes}

    @staticmethod
    def _check_ratios(values: Sequence[float], what: str) -> tuple[float, ...]:
        vals = [float(v) for v in values]
        if not vals or any(not (math.isfinite(v) and 0.0 <= v < 1.0) for v in vals):
            raise ValueError(f"{what} must be a non-empty list of ratios in [0, 1), got {vals}")
        if vals != sorted(set(vals)):
            raise ValueError(f"{what} must be sorted ascending and unique, got {vals}")
        return tuple(vals)

    @classmethod
    def from_spec(cls, space: Any, depths: Sequence[int],
                  num_windows: Sequence[Sequence[int]] | None = None) -> SearchSpace:
        """Build from a :class:`search.spec.SpaceSection` and the model's stage depths (canonical
        genes when ``num_windows`` at the search resolution is given)."""
        return cls(depths, ratios=space.ratios, granularity=space.granularity,
                   monotonic=space.monotonic, frozen_stages=space.frozen_stages,
                   weight_ratios=space.weight_ratios, num_windows=num_windows)

    # ---- description -----------------------------------------------------------------------

    @property
    def gene_names(self) -> list[str]:
        """Gene (Optuna parameter) names in order: stages, then weight modules."""
        return [g.name for g in self._genes]

    @property
    def n_blocks(self) -> int:
        """Total number of transformer blocks (length of :attr:`Config.flat`)."""
        return self._n_blocks

    def stage_groups(self) -> list[list[str]]:
        """Gene names grouped by stage (stages with genes only); used to sort within stage."""
        out: dict[int, list[str]] = {}
        for g in self._genes:
            if g.stage >= 0:
                out.setdefault(g.stage, []).append(g.name)
        return list(out.values())

    def distributions(self) -> dict[str, CategoricalDistribution]:
        """One Optuna ``CategoricalDistribution`` per gene (choices = ratios, 0..1)."""
        return {g.name: CategoricalDistribution(list(g.choices)) for g in self._genes}

    def size(self) -> int:
        """Number of distinct decoded configs.

        Per stage with n genes and V choices per gene: C(V + n - 1, n) multisets when monotonic,
        else V ** n; 1 for a frozen stage; times the weight-ratio choices. Swin-T, pair, monotonic,
        9 ratios: 9 * 9 * 165 * 9 = 120,285 ("about 120k" in the SparseViT reference); canonical at
        224 px (stage 2: 5 distinct k, stage 3: 2): 9 * 9 * 35 * 2 = 5,670.
        """
        by_name = {g.name: g for g in self._genes}
        total = 1
        for group in self.stage_groups():
            n = len(group)
            v = len(by_name[group[0]].choices)
            total *= math.comb(v + n - 1, n) if self.monotonic else v ** n
        for choices in (self.weight_ratios or {}).values():
            total *= len(choices)
        return total

    # ---- params <-> config -----------------------------------------------------------------

    def decode(self, params: Mapping[str, Any]) -> Config:
        """Gene values -> :class:`Config` (genes of a stage sorted ascending if monotonic).

        Args:
            params: ``{gene name: ratio}``, e.g. ``trial.params``; extra keys are ignored.

        Raises:
            KeyError: a gene is missing.
            ValueError: a value is not one of the gene's choices.
        """
        flat = [0.0] * self._n_blocks
        by_stage: dict[int, list[tuple[_Gene, float]]] = {}
        weights: dict[str, float] | None = {} if self.weight_ratios else None
        for g in self._genes:
            if g.name not in params:
                raise KeyError(f"gene {g.name!r} missing from params")
            value = _r(params[g.name])
            if value not in self._choice_index[g.name]:
                raise ValueError(f"gene {g.name}={params[g.name]!r} is not one of {g.choices}")
            if g.module is not None:
                assert weights is not None
                weights[g.module] = value
            else:
                by_stage.setdefault(g.stage, []).append((g, value))
        for items in by_stage.values():
            values = [v for _, v in items]
            if self.monotonic:
                values.sort()
            for (g, _), v in zip(items, values):
                for b in g.blocks:
                    flat[b] = v
        return self._config_from_flat(flat, weights)

    def encode(self, config: Config) -> dict[str, float]:
        """:class:`Config` -> gene values (the inverse of :meth:`decode` on canonical genes).

        Raises:
            ValueError: the config does not fit the space (other depths, a ratio not in the
                choices, two blocks of a pair differ, a frozen stage not dense, a monotonic
                stage that decreases, weight ratios missing or unexpected).
        """
        if config.depths != self.depths:
            raise ValueError(f"config depths {list(config.depths)} != space depths "
                             f"{list(self.depths)}")
        start = 0
        for s, d in enumerate(self.depths):
            stage = config.flat[start:start + d]
            if s in self.frozen_stages and any(x != 0.0 for x in stage):
                raise ValueError(f"stage {s} is frozen (dense) but the config has {list(stage)}")
            if self.monotonic and list(stage) != sorted(stage):
                raise ValueError(f"stage {s} ratios {list(stage)} decrease; the space is "
                                 "monotonic")
            start += d
        params: dict[str, float] = {}
        for g in self._genes:
            if g.module is not None:
                w = config.weight_ratios
                if w is None or g.module not in w:
                    raise ValueError(f"config has no weight ratio for {g.module!r}")
                value = w[g.module]
            else:
                values = {config.flat[b] for b in g.blocks}
                if len(values) != 1:
                    raise ValueError(f"blocks {list(g.blocks)} of pair {g.name} differ: "
                                     f"{sorted(values)}")
                value = values.pop()
            idx = self._choice_index[g.name].get(_r(value))
            if idx is None:
                raise ValueError(f"{g.name}: ratio {value} is not one of {g.choices}")
            params[g.name] = g.choices[idx]
        if config.weight_ratios is not None and self.weight_ratios is None:
            raise ValueError("config has weight ratios but the space searches none")
        if config.weight_ratios is not None and set(config.weight_ratios) != set(
                self.weight_ratios or {}):
            raise ValueError(f"config weight modules {sorted(config.weight_ratios)} != space "
                             f"modules {sorted(self.weight_ratios or {})}")
        return params

    def canonical(self, params: Mapping[str, Any]) -> dict[str, float]:
        """Gene values with each monotonic stage sorted (``encode(decode(params))``)."""
        return self.encode(self.decode(params))

    def suggest(self, trial: Any) -> Config:
        """Suggest every gene on an Optuna ``trial`` and decode (for ``study.optimize``)."""
        params = {name: trial.suggest_categorical(name, list(dist.choices))
                  for name, dist in self.distributions().items()}
        return self.decode(params)

    def config_hash(self, config: Config, checkpoint_sha256: str) -> str:
        """Same as the module-level :func:`config_hash`."""
        return config_hash(config, checkpoint_sha256)

    def to_array(self, configs: Sequence[Config]) -> np.ndarray:
        """Flat ratios of ``configs`` as float64 ``[n_configs, n_blocks]`` (predictor input)."""
        if not configs:
            return np.zeros((0, self._n_blocks))
        return np.asarray([c.flat for c in configs], dtype=np.float64)

    # ---- sampling and reference points ------------------------------------------------------

    def sample_uniform(self, rng: np.random.Generator | int | None, n: int) -> list[Config]:
        """``n`` configs drawn as the reference draws them: every gene uniform, then decoded.

        This is uniform over gene vectors (the reference's training/search sampling), not
        over distinct configs: sorted stages with spread values are more likely.

        Args:
            rng: ``numpy.random.Generator`` or an int seed.
            n: number of configs (>= 0).
        """
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        out = []
        for _ in range(n):
            params = {g.name: g.choices[int(gen.integers(len(g.choices)))] for g in self._genes}
            out.append(self.decode(params))
        return out

    def dense_config(self) -> Config:
        """All ratios 0 (weights unpruned, ratio 0, when weights are searched)."""
        weights = {m: 0.0 for m in self.weight_ratios} if self.weight_ratios else None
        return self._config_from_flat([0.0] * self._n_blocks, weights)

    def uniform_config(self, r: float, stages: Iterable[int] | None = None) -> Config:
        """:func:`supernet.evaluate.uniform_config` as a :class:`Config`: ratio ``r`` (0..1) on every block
        of ``stages`` (default: all stages but the last; frozen stages stay dense), 0 elsewhere; weight
        ratios 0. The paper's "uniform sparsity" baseline.

        Raises:
            ValueError: ``r`` outside [0, 1) or a stage index out of range.
        """
        from supernet.evaluate import uniform_config

        if not 0.0 <= r < 1.0:
            raise ValueError(f"uniform ratio {r} outside 0 <= r < 1")
        chosen = set(range(len(self.depths) - 1)) if stages is None else set(stages)
        bad = [s for s in chosen if not 0 <= s < len(self.depths)]
        if bad:
            raise ValueError(f"stages {bad} out of range 0..{len(self.depths) - 1}")
        ratios = uniform_config(self.depths, r, chosen - set(self.frozen_stages))
        weights = {m: 0.0 for m in self.weight_ratios} if self.weight_ratios else None
        return Config(ratios, weights)

    def uniform_params(self, r: float) -> dict[str, float]:
        """Gene values of :meth:`uniform_config` ``(r)`` in this space: on stages 0 .. n-2 each block gene takes
        the largest choice <= ``r`` (in a canonical space, the representative of ``r``'s kept-window count: the
        same computation), the last stage and the weight genes their smallest choice.

        Raises:
            ValueError: ``r`` outside [0, 1).
        """
        if not 0.0 <= r < 1.0:
            raise ValueError(f"uniform ratio {r} outside 0 <= r < 1")
        last = len(self.depths) - 1
        out: dict[str, float] = {}
        for g in self._genes:
            below = [c for c in g.choices if c <= r + 1e-9]
            out[g.name] = max(below) if (g.module is None and g.stage < last and below) else min(g.choices)
        return out

    def _config_from_flat(self, flat: Sequence[float],
                          weights: Mapping[str, float] | None) -> Config:
        nested, i = [], 0
        for d in self.depths:
            nested.append(flat[i:i + d])
            i += d
        return Config(nested, weights)

    def __repr__(self) -> str:
        return (f"SearchSpace(depths={list(self.depths)}, ratios={list(self.ratios)}, "
                f"granularity={self.granularity!r}, monotonic={self.monotonic}, "
                f"frozen_stages={list(self.frozen_stages)}, weight_ratios={self.weight_ratios})")
