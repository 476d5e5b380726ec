"""search.spec: TOML loading, one-line errors naming the key, path resolution, resume digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.errors import UserError
from search.spec import (
    DEFAULT_RATIOS,
    ExperimentSpec,
    SpecError,
    format_validation_error,
    frozen_diff,
    load_spec,
)

BASE = """\
name = "swin_t_mosaic"
seed = 3
n_trials = 120
#TOP

[supernet]
checkpoint = "ckpt/supernet.safetensors"

[latency]
predictor = "ckpt/predictor.json"
budget_ms = 40.0
"""

FULL = """\
name = "full"
output_dir = "out/full"
seed = 7
n_trials = 300

[supernet]
checkpoint = "/abs/ckpt/supernet.safetensors"

[latency]
predictor = "predictor.json"
budget_ms = 25.5

[evaluator]
name = "mypkg.evals:score"
subset_size = 64
batch_size = 8
split = "test"
kwargs = {img_size = 224, tags = ["a", "b"], nested = {k = 1.5}}

[space]
ratios = [0.0, 0.2, 0.4]
granularity = "block"
monotonic = false
frozen_stages = [3]
weight_ratios = {qkv = [0.0, 0.15], mlp = [0.0, 0.35]}

[objectives]
metric = "pixel_acc"
latency = true
macs = true
params = true

[sampler]
name = "sparsevit"
population_size = 40
parents = 10
mutation_prob = 0.2

[workers]
num_workers = 3
cpus_per_worker = 2
max_retries = 0

[ray]
address = "auto"
dashboard = true
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def base(top: str = "", extra: str = "") -> str:
    return BASE.replace("#TOP", top) + extra


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert isinstance(info.value, UserError)
    assert msg.startswith("spec.toml"), msg
    assert "fix:" in msg, msg
    return msg


# ---- valid specs ------------------------------------------------------------------------------

def test_minimal_spec_defaults_and_relative_paths(tmp_path: Path) -> None:
    sub = tmp_path / "exp"
    sub.mkdir()
    spec = load_spec(write(sub, base()))
    assert spec.name == "swin_t_mosaic" and spec.seed == 3 and spec.n_trials == 120
    # relative paths resolve against the spec's folder, not the cwd
    assert spec.supernet.checkpoint == sub / "ckpt" / "supernet.safetensors"
    assert spec.supernet.sidecar == sub / "ckpt" / "supernet.json"
    assert spec.latency.predictor == sub / "ckpt" / "predictor.json"
    assert spec.output_dir == sub / "runs" / "swin_t_mosaic"
    assert spec.source == sub / "spec.toml"
    # defaults
    assert spec.space.ratios == list(DEFAULT_RATIOS) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                         0.8]
    assert spec.space.granularity == "pair" and spec.space.monotonic is True
    assert spec.space.weight_ratios is None and spec.space.frozen_stages == []
    assert spec.sampler.name == "nsga2" and spec.sampler.options()["population_size"] == 50
    assert spec.evaluator.name == "fashion_mosaic" and spec.evaluator.split == "val"
    assert spec.objectives.names() == ["miou", "latency_ms"]
    assert spec.objectives.directions() == ["maximize", "minimize"]
    assert spec.workers.num_workers == 2 and spec.workers.torch_threads == 1
    assert spec.ray.address is None and spec.ray.dashboard is False


def test_full_spec_and_toml_round_trip(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, FULL))
    assert spec.output_dir == tmp_path / "out" / "full"
    assert spec.supernet.checkpoint == Path("/abs/ckpt/supernet.safetensors")
    assert spec.evaluator.kwargs == {"img_size": 224, "tags": ["a", "b"], "nested": {"k": 1.5}}
    assert spec.space.weight_ratios == {"qkv": [0.0, 0.15], "mlp": [0.0, 0.35]}
    assert spec.objectives.names() == ["pixel_acc", "latency_ms", "macs", "params"]
    assert spec.sampler.options() == {"population_size": 40, "parents": 10,
                                      "mutation_prob": 0.2, "crossover_prob": 0.5}
    assert spec.workers.torch_threads == 2  # defaults to cpus_per_worker

    # to_toml -> load_spec gives the same spec, from another folder (paths are absolute)
    other = tmp_path / "elsewhere"
    other.mkdir()
    again = load_spec(write(other, spec.to_toml()))
    assert again.model_dump() == spec.model_dump()


def test_sparsevit_defaults_follow_reference(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, base(extra='\n[sampler]\nname = "sparsevit"\n')))
    assert spec.sampler.options() == {"population_size": 100, "parents": 25,
                                      "mutation_prob": 0.1, "crossover_prob": 0.5}


# ---- one test per kind of bad input -----------------------------------------------------------

def test_unknown_top_level_key(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(top="n_trails = 5"))
    assert "n_trails: unknown key" in msg and "did you mean 'n_trials'" in msg


def test_unknown_nested_key(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra="\n[sampler]\npopsize = 10\n"))
    assert "[sampler] popsize: unknown key" in msg and "population_size" in msg


def test_top_level_key_below_a_section(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra="seed = 4\n"))
    assert "[latency] seed" in msg and "above the first [section]" in msg


def test_wrong_type(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base().replace("n_trials = 120", 'n_trials = "100"'))
    assert "n_trials: expected an integer, got '100' (string)" in msg


def test_wrong_type_bool(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra='\n[space]\nmonotonic = "yes"\n'))
    assert "[space] monotonic: expected true or false" in msg


def test_section_not_a_table(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(top='sampler = "nsga2"'))
    assert "[sampler]: expected a table" in msg


def test_out_of_range_ratio(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra="\n[space]\nratios = [0.0, 0.5, 1.0]\n"))
    assert "[space] ratios: 1.0 is outside 0 <= r < 1" in msg


def test_unsorted_ratios(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra="\n[space]\nratios = [0.2, 0.1]\n"))
    assert "[space] ratios: must be sorted ascending" in msg and "[0.1, 0.2]" in msg


def test_duplicate_ratios(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra="\n[space]\nratios = [0.0, 0.1, 0.1]\n"))
    assert "[space] ratios: must be sorted ascending without duplicates" in msg
    assert "fix: write [0.0, 0.1]" in msg


def test_bad_weight_ratios(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra="\n[space]\nweight_ratios = {qkv = [0.0, 1.5]}\n"))
    assert "[space] weight_ratios: qkv: 1.5 is outside" in msg
    msg = load_error(tmp_path, base(extra="\n[space]\nweight_ratios = {qvk = [0.0]}\n"))
    assert "[space] weight_ratios: unknown key 'qvk'" in msg and "qkv|proj|mlp" in msg


def test_bad_sampler_name(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra='\n[sampler]\nname = "foo"\n'))
    assert msg == ("spec.toml: [sampler] name: 'foo' is not one of "
                   "nsga2|nsga3|tpe|random|sparsevit; fix: set name = \"nsga2\"")


def test_sampler_option_of_another_sampler(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra="\n[sampler]\nname = \"tpe\"\nparents = 5\n"))
    assert "[sampler] parents: not used by sampler 'tpe'" in msg


def test_parents_exceed_population(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(
        extra='\n[sampler]\nname = "sparsevit"\npopulation_size = 10\nparents = 20\n'))
    assert "[sampler] parents: 20 exceeds population_size 10" in msg


def test_bad_evaluator_format(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra='\n[evaluator]\nname = "mypkg.evals.score"\n'))
    assert "[evaluator] name: 'mypkg.evals.score' is neither" in msg
    assert "pkg.module:function" in msg


def test_bad_split(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra='\n[evaluator]\nsplit = "train"\n'))
    assert "[evaluator] split: 'train' is not one of val|test" in msg


def test_negative_budget(tmp_path: Path) -> None:
    msg = load_error(tmp_path, BASE.replace("budget_ms = 40.0", "budget_ms = -5.0"))
    assert "[latency] budget_ms: must be > 0" in msg and "-5.0" in msg


def test_zero_trials(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base().replace("n_trials = 120", "n_trials = 0"))
    assert "n_trials: must be > 0" in msg


def test_missing_required_key(tmp_path: Path) -> None:
    msg = load_error(tmp_path, BASE.replace('checkpoint = "ckpt/supernet.safetensors"', ""))
    assert "[supernet] checkpoint: required key is missing" in msg


def test_missing_section(tmp_path: Path) -> None:
    text = BASE.split("[latency]")[0]
    msg = load_error(tmp_path, text)
    assert "[latency]: required section is missing" in msg


def test_checkpoint_suffix(tmp_path: Path) -> None:
    msg = load_error(tmp_path, BASE.replace("supernet.safetensors", "supernet.pt"))
    assert "[supernet] checkpoint: expected a .safetensors file" in msg


def test_params_objective_needs_weight_ratios(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(extra="\n[objectives]\nparams = true\n"))
    assert "[objectives] params: needs [space] weight_ratios" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.toml")
    msg = str(info.value)
    assert "\n" not in msg and "nope.toml" in msg and "not found" in msg


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    msg = load_error(tmp_path, base(top="x = = 4"))
    assert "line 4" in msg and "TOML syntax error" in msg


def test_several_errors_one_line_each(tmp_path: Path) -> None:
    text = base(extra='\n[sampler]\nname = "foo"\n').replace("seed = 3", 'seed = "x"')
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    err = info.value
    assert "\n" not in str(err) and str(err).startswith("spec.toml: 2 errors: ")
    assert len(err.lines) == 2
    assert err.lines[0].startswith("spec.toml: seed: expected an integer")
    assert err.lines[1].startswith("spec.toml: [sampler] name:")


def test_format_validation_error_one_line_per_error() -> None:
    from pydantic import ValidationError

    data = {"name": "x", "n_trials": -1, "supernet": {"checkpoint": "a.safetensors"},
            "latency": {"predictor": "p.json", "budget": 3}}
    with pytest.raises(ValidationError) as info:
        ExperimentSpec.model_validate(data)
    text = format_validation_error(info.value, "/some/dir/my.toml")
    lines = text.splitlines()
    assert len(lines) == 2
    assert all(ln.startswith("my.toml: ") for ln in lines)
    assert any("n_trials: must be > 0" in ln for ln in lines)
    assert any("[latency] budget: unknown key" in ln and "budget_ms" in ln for ln in lines)


# ---- resume digest ----------------------------------------------------------------------------

def _with_files(tmp_path: Path, text: str) -> ExperimentSpec:
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    (tmp_path / "ckpt" / "supernet.safetensors").write_bytes(b"weights-v1")
    (tmp_path / "ckpt" / "predictor.json").write_text(json.dumps({"table": [1, 2]}))
    return load_spec(write(tmp_path, text))


def test_digest_ignores_free_keys_and_tracks_frozen_ones(tmp_path: Path) -> None:
    spec = _with_files(tmp_path, base())
    digest = spec.spec_digest()
    assert len(digest) == 64

    # n_trials, seed, workers, ray may change on resume
    free = _with_files(tmp_path, base(extra="\n[workers]\nnum_workers = 5\n")
                       .replace("n_trials = 120", "n_trials = 999").replace("seed = 3", "seed = 4"))
    assert free.spec_digest() == digest

    # the search space may not
    changed = _with_files(tmp_path, base(extra="\n[space]\nratios = [0.0, 0.4]\n"))
    assert changed.spec_digest() != digest
    assert frozen_diff(spec.frozen_json(), changed.frozen_json()) == ["space.ratios"]

    # nor the checkpoint content (hashed, so a retrained file at the same path is caught)
    before = spec.frozen_json()
    (tmp_path / "ckpt" / "supernet.safetensors").write_bytes(b"weights-v2, retrained")
    assert frozen_diff(before, load_spec(write(tmp_path, base())).frozen_json()) == [
        "checkpoint_sha256"]
    assert spec.spec_digest(checkpoint_sha256="a" * 64) != spec.spec_digest(
        checkpoint_sha256="b" * 64)


def test_digest_missing_checkpoint_is_user_error(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, base()))
    with pytest.raises(SpecError) as info:
        spec.spec_digest()
    assert "[supernet] checkpoint: file not found" in str(info.value)


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "experiments").rglob("search_*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_search_specs_validate(path: Path) -> None:
    spec = load_spec(path)
    assert spec.sampler.name in ("nsga2", "nsga3", "tpe", "random", "sparsevit")
    # a real search: four generations or more (the 672 px main job: 96 trials of 24), else 100 trials
    pop = getattr(spec.sampler, "population_size", None)
    assert spec.latency.predictor is not None and spec.n_trials >= (4 * pop if pop else 100)


def test_shipped_search_specs_exist() -> None:
    assert {"search_quick.toml", "search_full.toml", "search_main.toml"} <= {p.name for p in SHIPPED}


RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "experiments").rglob("*.toml")
                 if not p.name.startswith("search_"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_training_recipes_validate(path: Path) -> None:
    from supernet.train import load_train_spec

    cfg = load_train_spec(path)
    assert cfg.total_epochs >= 1


@pytest.mark.parametrize("name,size", [("search_main.toml", 448), ("search_672.toml", 672)])
def test_the_main_jobs_search_spec_searches_sparse_scenes(name: str, size: int) -> None:
    """The main job at 448 px (and at 672 px, SPARSESEARCH_MAIN_RES=672): item count scaled with the canvas area."""
    from supernet.data import MosaicSpec

    spec = load_spec(Path(__file__).resolve().parents[1] / "experiments" / "fashion_mosaic" / name)
    assert spec.evaluator.img_size == size and spec.evaluator.fidelity and spec.space.canonical
    scene = MosaicSpec.scene(size)
    assert (spec.evaluator.mosaic["min_items"], spec.evaluator.mosaic["max_items"]) == (scene.min_items, scene.max_items)
    assert spec.latency.budget_fraction == 0.6 and spec.workers.num_workers == 2
    assert f"latency_cpu_{size}.json" in str(spec.latency.predictor)
    # the supernet scripts/main.sh copies there: the shipped one (448 px) or the shipped 672 px one
    ck, ship = {448: ("supernet", "supernet"), 672: ("supernet_672", "supernet672")}[size]
    assert spec.supernet.checkpoint.name == f"{ck}.safetensors"
    main_sh = (Path(__file__).resolve().parents[1] / "scripts" / "main.sh").read_text()
    assert f"ship={ship} ck={ck} ;;" in " ".join(main_sh.split())
    assert {"task_quick.toml", "task_full.toml", "task_dense.toml", "task_supernet.toml"} <= {p.name for p in RECIPES}
