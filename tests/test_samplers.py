"""search.samplers: the five samplers on a toy objective, and the SparseViT evolution's rules."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from search.samplers import (
    CONSTRAINT_ATTR,
    SparseViTEvolutionSampler,
    is_feasible,
    latency_constraints,
    make_sampler,
    trial_generation,
)
from search.space import SearchSpace
from search.spec import SamplerSection

optuna.logging.set_verbosity(optuna.logging.WARNING)

SWIN_T = [2, 2, 6, 2]
SPACE = SearchSpace(SWIN_T)
GEN = SparseViTEvolutionSampler.generation_key()
OP = SparseViTEvolutionSampler.op_key()
PARENTS = SparseViTEvolutionSampler.parents_key()
SMALL = {"nsga2": {"population_size": 10}, "nsga3": {"population_size": 10},
         "tpe": {"n_startup_trials": 10}, "random": {},
         "sparsevit": {"population_size": 10, "parents": 4}}


def toy_study(sampler: optuna.samplers.BaseSampler, n: int, space: SearchSpace = SPACE,
              min_sum: float = 0.0) -> optuna.Study:
    """metric = -sum(ratios) (maximise), latency = 10 - sum (minimise);
    infeasible (constraint > 0) when sum(ratios) < min_sum, told through the user attr."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(n):
        trial = study.ask(space.distributions())
        total = sum(space.decode(trial.params).flat)
        trial.set_user_attr(CONSTRAINT_ATTR, min_sum - total)
        study.tell(trial, [-total, 10.0 - total])
    return study


def sparsevit(seed: int = 0, space: SearchSpace = SPACE, **kw) -> SparseViTEvolutionSampler:
    opts = {"population_size": 10, "parents": 4} | kw
    return make_sampler(SamplerSection(name="sparsevit", **opts), space, seed,
                        constraints_func=latency_constraints)  # type: ignore[return-value]


# ---- all samplers ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["nsga2", "nsga3", "tpe", "random", "sparsevit"])
def test_each_sampler_runs_60_trials_deterministically(name: str) -> None:
    def run(seed: int) -> optuna.Study:
        sampler = make_sampler(SamplerSection(name=name, **SMALL[name]), SPACE, seed,
                               constraints_func=latency_constraints)
        return toy_study(sampler, 60, min_sum=5.0)

    a, b, c = run(1), run(1), run(2)
    assert len(a.trials) == 60
    assert all(t.state == TrialState.COMPLETE for t in a.trials)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.params for t in a.trials] != [t.params for t in c.trials]
    # every decoded config is valid: sorted within stage, pairs equal
    for t in a.trials:
        cfg = SPACE.decode(t.params)
        assert all(stage == sorted(stage) for stage in cfg.ratios)
    # constraints_func's values are stored for every sampler; feasibility = sum >= 5
    assert all(is_feasible(t) == (sum(SPACE.decode(t.params).flat) >= 5.0) for t in a.trials)
    assert any(not is_feasible(t) for t in a.trials) and any(is_feasible(t) for t in a.trials)


@pytest.mark.parametrize("name", ["nsga2", "nsga3", "tpe", "random", "sparsevit"])
def test_every_sampler_pickles_and_keeps_proposing(name: str) -> None:
    """Ray Tune pickles its searcher with the sampler in it; Optuna 5.1's GA samplers hold a threading.Lock."""
    import pickle

    def fresh():
        return make_sampler(SamplerSection(name=name, **SMALL[name]), SPACE, 3, constraints_func=latency_constraints,
                            feasible=bool)  # a picklable predicate: every non-empty proposal is feasible

    copy = pickle.loads(pickle.dumps(fresh()))
    a, b = toy_study(fresh(), 12, min_sum=5.0), toy_study(copy, 12, min_sum=5.0)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]  # the copy proposes what the original does
    lock = getattr(getattr(copy, "base", copy), "_thread_lock", None)
    if lock is not None:
        with lock:
            assert lock.locked()
        assert not lock.locked()


def test_make_sampler_maps_names_and_options() -> None:
    s = make_sampler(SamplerSection(name="nsga2", population_size=12), SPACE, 0)
    assert isinstance(s, optuna.samplers.NSGAIISampler) and s.population_size == 12
    assert isinstance(make_sampler(SamplerSection(name="nsga3"), SPACE, 0),
                      optuna.samplers.NSGAIIISampler)
    assert isinstance(make_sampler(SamplerSection(name="tpe"), SPACE, 0),
                      optuna.samplers.TPESampler)
    assert isinstance(make_sampler(SamplerSection(name="random"), SPACE, 0),
                      optuna.samplers.RandomSampler)
    assert isinstance(make_sampler(SamplerSection(name="random"), SPACE, 0,
                                   constraints_func=latency_constraints),
                      optuna.samplers.RandomSampler)
    sv = make_sampler(SamplerSection(name="sparsevit"), SPACE, 0)
    assert isinstance(sv, SparseViTEvolutionSampler)
    assert sv.population_size == 100 and sv.n_parents == 25

    class Fake:
        name = "cmaes"

        def options(self) -> dict:
            return {}

    with pytest.raises(ValueError, match="unknown sampler 'cmaes'"):
        make_sampler(Fake(), SPACE, 0)


def test_latency_constraints_reads_user_attr() -> None:
    t = optuna.trial.create_trial(params={}, distributions={}, values=[1.0, 2.0],
                                  user_attrs={CONSTRAINT_ATTR: 2.5})
    assert latency_constraints(t) == [2.5]
    t = optuna.trial.create_trial(params={}, distributions={}, values=[1.0, 2.0])
    assert latency_constraints(t) == [0.0]  # no budget -> feasible
    t = optuna.trial.create_trial(params={}, distributions={}, values=[1.0, 2.0],
                                  user_attrs={CONSTRAINT_ATTR: "slow"})
    with pytest.raises(ValueError, match="constraint"):
        latency_constraints(t)


def test_trial_generation_for_every_sampler() -> None:
    for name in ("nsga2", "nsga3", "sparsevit"):
        sampler = make_sampler(SamplerSection(name=name, **SMALL[name]), SPACE, 0)
        study = toy_study(sampler, 35)
        gens = [trial_generation(t) for t in study.trials]
        assert gens == sorted(gens) and gens[0] == 0 and gens[-1] == 3, (name, gens)
    study = toy_study(optuna.samplers.RandomSampler(seed=0), 25)
    assert [trial_generation(t) for t in study.trials][:3] == [-1, -1, -1]
    assert trial_generation(study.trials[24], population_size=10) == 2


# ---- SparseViT evolution ---------------------------------------------------------------------

def test_sparsevit_generations_and_operators() -> None:
    study = toy_study(sparsevit(), 60)
    trials = study.trials
    assert all(GEN in t.system_attrs for t in trials)
    assert [t.system_attrs[GEN] for t in trials] == [i // 10 for i in range(60)]  # all feasible
    assert {t.system_attrs[OP] for t in trials[:10]} == {"random"}
    ops = Counter(t.system_attrs[OP] for t in trials[10:])
    assert set(ops) == {"mutation", "crossover"} and min(ops.values()) >= 15  # about half each
    for t in trials[10:]:
        n_parents = {"mutation": 1, "crossover": 2}[t.system_attrs[OP]]
        assert len(set(t.system_attrs[PARENTS])) == n_parents
        for p in t.system_attrs[PARENTS]:
            assert trials[p].system_attrs[GEN] < t.system_attrs[GEN]


def test_sparsevit_children_inherit_parent_genes() -> None:
    """Without re-sorting: every crossover gene comes from one of its two parents; a mutation
    child keeps most genes of its parent (each resampled with probability 0.1)."""
    dists = {f"g{i}": CategoricalDistribution(list(range(10))) for i in range(8)}
    sampler = SparseViTEvolutionSampler(search_space=dists, population_size=10, parents=4,
                                        mutation_prob=0.1, seed=3)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: sum(t.suggest_categorical(n, list(range(10))) for n in dists),
                   n_trials=80)
    trials = study.trials
    changed = []
    for t in trials[10:]:
        parents = [trials[p].params for p in t.system_attrs[PARENTS]]
        gen_parents = study._storage.get_study_system_attrs(study._study_id)[
            f"SparseViTEvolutionSampler:parent:{t.system_attrs[GEN]}"]
        assert {trials[p]._trial_id for p in t.system_attrs[PARENTS]} <= set(gen_parents)
        if t.system_attrs[OP] == "crossover":
            a, b = parents
            assert all(t.params[n] in (a[n], b[n]) for n in dists)
        else:
            changed.append(sum(t.params[n] != parents[0][n] for n in dists))
    assert changed and max(changed) <= 4 and np.mean(changed) < 2.0
    # a uniformly random child would differ from a given parent in about 7.2 of 8 genes


def test_sparsevit_children_sorted_within_stage_and_from_parents() -> None:
    """With SearchSpace.canonical: children are re-sorted within stage, as the reference does,
    and each crossover child is the sorted form of a gene-wise mix of its two parents."""
    study = toy_study(sparsevit(seed=5), 60)
    groups = SPACE.stage_groups()
    names = SPACE.gene_names
    n_cross = 0
    for t in study.trials:
        for g in groups:
            values = [t.params[n] for n in g]
            assert values == sorted(values)
        if t.system_attrs[OP] != "crossover":
            continue
        n_cross += 1
        a, b = (study.trials[p].params for p in t.system_attrs[PARENTS])
        mixes = ({n: (a if pick else b)[n] for n, pick in zip(names, picks)}
                 for picks in itertools.product([0, 1], repeat=len(names)))
        assert any(SPACE.canonical(m) == t.params for m in mixes)
    assert n_cross >= 10


def test_sparsevit_infeasible_trials_never_become_parents() -> None:
    study = toy_study(sparsevit(seed=1), 120, min_sum=3.0)  # about half of gen 0 infeasible
    trials = study.trials
    infeasible = [t for t in trials if not is_feasible(t)]
    assert infeasible and len(infeasible) < len(trials)
    referenced = {p for t in trials for p in t.system_attrs.get(PARENTS, [])}
    assert referenced and all(is_feasible(trials[p]) for p in referenced)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    by_id = {t._trial_id: t for t in trials}
    caches = {k: v for k, v in attrs.items() if k.startswith("SparseViTEvolutionSampler:parent:")}
    assert caches
    for ids in caches.values():
        assert all(is_feasible(by_id[i]) for i in ids)
    # generation 1's parents = the 4 best feasible trials of generation 0 by objective 0
    gen0 = [t for t in trials if t.system_attrs[GEN] == 0 and is_feasible(t)]
    best = sorted(gen0, key=lambda t: (-t.values[0], t.number))[:4]
    assert [by_id[i].values[0] for i in caches["SparseViTEvolutionSampler:parent:1"]] == [
        t.values[0] for t in best]
    # a generation ends after population_size *feasible* trials
    for g in range(max(t.system_attrs[GEN] for t in trials)):
        assert sum(1 for t in trials if t.system_attrs[GEN] == g and is_feasible(t)) >= 10


def test_sparsevit_resume_from_storage_is_identical() -> None:
    """A new sampler on the same storage continues the evolution exactly (state in storage)."""
    full = toy_study(sparsevit(seed=9), 45, min_sum=2.0)

    storage = optuna.storages.InMemoryStorage()

    def part(n: int) -> None:
        study = optuna.create_study(storage=storage, study_name="s", load_if_exists=True,
                                    directions=["maximize", "minimize"],
                                    sampler=sparsevit(seed=9))
        for _ in range(n):
            trial = study.ask(SPACE.distributions())
            total = sum(SPACE.decode(trial.params).flat)
            trial.set_user_attr(CONSTRAINT_ATTR, 2.0 - total)
            study.tell(trial, [-total, 10.0 - total])

    part(23)  # stop in the middle of generation 2
    part(22)  # "restart": a fresh sampler instance
    resumed = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.params for t in resumed] == [t.params for t in full.trials]
    assert [t.system_attrs[GEN] for t in resumed] == [t.system_attrs[GEN] for t in full.trials]
    assert max(t.system_attrs[GEN] for t in resumed) >= 3


def test_sparsevit_avoids_duplicate_configs() -> None:
    space = SearchSpace([2, 2], ratios=[0.0, 0.5, 0.9])  # 9 distinct configs
    sampler = make_sampler(SamplerSection(name="sparsevit", population_size=4, parents=2),
                           space, 0)
    study = toy_study(sampler, 9, space=space)
    configs = [space.decode(t.params) for t in study.trials]
    assert len(set(configs)) == 9  # random draws would repeat with probability > 0.999


def test_sparsevit_converging_population_still_proposes_new_configs(monkeypatch) -> None:
    def n_distinct() -> int:
        study = toy_study(sparsevit(seed=2, population_size=20, parents=5), 150)
        return len({SPACE.decode(t.params) for t in study.trials})

    assert n_distinct() == 150
    # the same evolution without the duplicate check re-proposes its elite (the reference
    # caches those by hash; here every trial is a new config)
    monkeypatch.setattr(SparseViTEvolutionSampler, "_seen_keys", lambda *a, **k: set())
    assert n_distinct() < 140


def test_sparsevit_prefilter_redraws_rejected_proposals() -> None:
    def fast_enough(params: dict) -> bool:
        return sum(SPACE.decode(params).flat) >= 4.0

    sampler = make_sampler(SamplerSection(name="sparsevit", population_size=10, parents=4),
                           SPACE, 0, feasible=fast_enough)
    study = toy_study(sampler, 30)
    assert all(fast_enough(t.params) for t in study.trials)
    assert any(t.system_attrs.get("SparseViTEvolutionSampler:attempts", 1) > 1 for t in study.trials)


@pytest.mark.parametrize("name", ["nsga2", "nsga3", "tpe", "random", "sparsevit"])
def test_every_sampler_proposes_only_feasible_configs(name: str) -> None:
    """FeasibleSampler: redraws (seeded) until the test holds; the same seed proposes the same configs."""
    def fast_enough(params: dict) -> bool:
        return sum(SPACE.decode(params).flat) >= 4.0

    def proposals(seed: int) -> list:
        sampler = make_sampler(SamplerSection(name=name, **SMALL[name]), SPACE, seed, feasible=fast_enough)
        study = toy_study(sampler, 40)
        assert all(fast_enough(t.params) for t in study.trials), name
        return [SPACE.decode(t.params) for t in study.trials]

    assert proposals(3) == proposals(3)


def test_feasible_sampler_repairs_when_no_draw_fits() -> None:
    """A budget only the sparsest configs meet: the repair raises genes until the test holds."""
    sparsest = {g: max(d.choices) for g, d in SPACE.distributions().items()}

    def tight(params: dict) -> bool:
        return sum(SPACE.decode(params).flat) >= sum(SPACE.decode(sparsest).flat) - 1e-9

    sampler = make_sampler(SamplerSection(name="random"), SPACE, 0, feasible=tight, max_draws=3,
                           repair=lambda p: dict(sparsest))
    study = toy_study(sampler, 5)
    assert all(tight(t.params) for t in study.trials) and sampler.repairs == 5


def test_sparsevit_beats_random_search() -> None:
    """Best of 200 trials on a toy target (distance to the reference cfg3), mean of 3 seeds."""
    target = np.array(Config3.flat)

    def best(sampler: optuna.samplers.BaseSampler) -> float:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for _ in range(200):
            trial = study.ask(SPACE.distributions())
            flat = np.array(SPACE.decode(trial.params).flat)
            study.tell(trial, -float(((flat - target) ** 2).sum()))
        return study.best_value

    evo = np.mean([best(sparsevit(seed=s, population_size=20, parents=5)) for s in range(3)])
    rnd = np.mean([best(optuna.samplers.RandomSampler(seed=s)) for s in range(3)])
    assert evo > rnd + 0.05, (evo, rnd)


Config3 = SPACE.decode({"s0_p0": 0.7, "s1_p0": 0.0, "s2_p0": 0.2, "s2_p1": 0.4, "s2_p2": 0.5,
                        "s3_p0": 0.0})


def test_sparsevit_bad_arguments() -> None:
    with pytest.raises(ValueError, match="population_size"):
        SparseViTEvolutionSampler(population_size=1)
    with pytest.raises(ValueError, match="parents"):
        SparseViTEvolutionSampler(population_size=10, parents=11)
    with pytest.raises(ValueError, match="mutation_prob"):
        SparseViTEvolutionSampler(mutation_prob=1.5)


def test_feasible_sampler_backs_off_in_an_exhausted_space_and_recovers() -> None:
    """No new computation left: each trial draws half as many proposals as the last, down to max_draws / 16;
    the first new computation restores max_draws."""
    new = {"left": 0}

    def is_new(params: dict) -> bool:
        if new["left"] > 0:
            new["left"] -= 1
            return True
        return False

    sampler = make_sampler(SamplerSection(name="random"), SPACE, 0, feasible=lambda p: True, is_new=is_new,
                           max_draws=32)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    draws = []
    for _ in range(7):
        before = sampler.draws
        trial = study.ask(SPACE.distributions())
        study.tell(trial, 0.0)
        draws.append(sampler.draws - before)
    assert draws == [32, 16, 8, 4, 2, 2, 2] and sampler.repeats == 7
    new["left"] = 1
    trial = study.ask(SPACE.distributions())
    study.tell(trial, 0.0)
    assert sampler.misses == 0
    before = sampler.draws
    study.tell(study.ask(SPACE.distributions()), 0.0)
    assert sampler.draws - before == 32
