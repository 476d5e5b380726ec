"""Tests for supernet.dimap (DIMAP, arXiv 2404.13648, Sec. 3.2 Eq. 10; Table 1 accounting)."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from supernet.dimap import (
    MODULES,
    PAPER_TABLE1,
    WeightRestorer,
    apply_masks,
    dense_backup,
    dimap_masks,
    dimap_report,
    dimap_scores,
    format_report,
    group_modules,
    macs_reduction,
    magnitude_masks,
    param_report,
    restore,
)

SWIN_NAMES = {
    "swin_tiny_patch4_window7_224": (96, (2, 2, 6, 2)),
    "swin_small_patch4_window7_224": (96, (2, 2, 18, 2)),
    "swin_base_patch4_window7_224": (128, (2, 2, 18, 2)),
}


def tiny_swin(seed: int = 0) -> SwinTransformer:
    """A small timm Swin V1 (2 stages, 32 px) for cheap forward/backward tests."""
    torch.manual_seed(seed)
    return SwinTransformer(img_size=32, patch_size=4, in_chans=3, num_classes=5, embed_dim=16,
                           depths=(2, 2), num_heads=(1, 2), window_size=4)


@pytest.fixture(scope="module")
def swin_t() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)


@pytest.fixture(scope="module")
def swin_t_dimap2(swin_t) -> dict[str, torch.Tensor]:
    return dimap_masks(swin_t, 0.35)


@pytest.fixture(scope="module")
def meta_models() -> dict[str, nn.Module]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return {n: timm.create_model(n, pretrained=False) for n in SWIN_NAMES}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


# ----------------------------------------------------------------------------- Eq. 10 scores

def test_scores_hand_computed():
    # |w| sorted: 4, 3, 2, 1 -> squares 16, 9, 4, 1 -> cumulative 16, 25, 29, 30
    s = dimap_scores(torch.tensor([3.0, -4.0, 1.0, 2.0]))
    expected = torch.tensor([9 / 25, 16 / 16, 1 / 30, 4 / 29], dtype=torch.float64)
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, expected, rtol=0, atol=1e-15)
    assert s.max() == 1.0


def test_scores_match_definition_and_keep_shape():
    torch.manual_seed(1)
    w = torch.randn(6, 5)
    s = dimap_scores(w)
    assert s.shape == w.shape
    flat = w.reshape(-1).double()
    for j in range(flat.numel()):  # literal Eq. 10: sum over every weight at least as large
        denom = sum(float(x) ** 2 for x in flat if abs(float(x)) >= abs(float(flat[j])))
        assert math.isclose(float(s.reshape(-1)[j]), float(flat[j]) ** 2 / denom, rel_tol=1e-12)
    # orders like magnitude within the layer
    order_s = torch.argsort(s.reshape(-1), descending=True)
    order_w = torch.argsort(w.abs().reshape(-1), descending=True)
    assert torch.equal(order_s, order_w)


def test_scores_ties_and_zeros():
    w = torch.tensor([2.0, -2.0, 2.0, 1.0])
    stable = dimap_scores(w)  # ties ordered by flat index
    torch.testing.assert_close(stable, torch.tensor([1.0, 0.5, 1 / 3, 1 / 13], dtype=torch.float64))
    shared = dimap_scores(w, ties="shared")  # ties share the denominator of the whole group
    torch.testing.assert_close(shared, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1 / 13], dtype=torch.float64))
    assert torch.equal(dimap_scores(torch.zeros(3, 2)), torch.zeros(3, 2, dtype=torch.float64))


@pytest.mark.parametrize("bad", [torch.tensor([1, 2, 3]), torch.tensor([1.0, float("nan")]),
                                 torch.tensor([float("inf"), 1.0]), [1.0, 2.0]])
def test_scores_reject_bad_input(bad):
    with pytest.raises(ValueError):
        dimap_scores(bad)
    with pytest.raises(ValueError):
        dimap_scores(torch.ones(3), ties="random")


# ----------------------------------------------------------------------------- module grouping

@pytest.mark.parametrize("name", list(SWIN_NAMES))
def test_group_modules_on_timm_swins(meta_models, name):
    model = meta_models[name]
    embed, depths = SWIN_NAMES[name]
    groups = group_modules(model)
    assert set(groups) == set(MODULES)
    n_blocks = sum(depths)
    assert len(groups["qkv"]) == n_blocks and len(groups["proj"]) == n_blocks
    assert len(groups["mlp"]) == 2 * n_blocks
    assert all(n.endswith("attn.qkv.weight") for n in groups["qkv"])
    assert all(n.endswith("attn.proj.weight") for n in groups["proj"])
    assert all(n.endswith(("mlp.fc1.weight", "mlp.fc2.weight")) for n in groups["mlp"])
    params = dict(model.named_parameters())
    # per block 3C^2 (qkv) + C^2 (proj) + 8C^2 (fc1 + fc2), C = embed * 2^stage
    expected = {"qkv": 0, "proj": 0, "mlp": 0}
    for i, d in enumerate(depths):
        c = embed * 2 ** i
        expected["qkv"] += d * 3 * c * c
        expected["proj"] += d * c * c
        expected["mlp"] += d * 8 * c * c
    for m in MODULES:
        assert sum(params[n].numel() for n in groups[m]) == expected[m]
    prunable = {n for m in MODULES for n in groups[m]}
    never = [n for n in params if any(k in n for k in
             ("patch_embed", "downsample", "norm", "bias", "relative_position", "head"))]
    assert never and not prunable & set(never)


def test_group_modules_under_prefix_and_errors(swin_t):
    class Seg(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone
            self.decode = nn.Conv2d(768, 3, 1)

    seg = Seg(swin_t)
    plain, nested = group_modules(swin_t), group_modules(seg)
    for m in MODULES:
        assert nested[m] == ["backbone." + n for n in plain[m]]
    with pytest.raises(ValueError):
        group_modules(nn.Linear(4, 4))


# ----------------------------------------------------------------------------- DIMAP masks

def _pruned(masks, names):
    return sum(int((~masks[n]).sum()) for n in names)


@pytest.mark.parametrize("ties", ["stable", "shared"])
def test_dimap_count_exact_with_massive_ties(ties):
    model = tiny_swin()
    groups = group_modules(model)
    params = dict(model.named_parameters())
    with torch.no_grad():  # every layer constant (equal magnitudes), some layers all zero
        for k, n in enumerate(n for m in MODULES for n in groups[m]):
            params[n].fill_(0.0 if k % 3 == 0 else (-0.01 if k % 2 else 0.01))
    for r in (0.0, 0.1, 0.15, 0.35, 0.5, 0.55, 0.93):
        masks = dimap_masks(model, r, ties=ties)
        assert set(masks) == {n for m in MODULES for n in groups[m]}
        for m in MODULES:
            n_mod = sum(params[n].numel() for n in groups[m])
            assert _pruned(masks, groups[m]) == math.floor(r * n_mod + 0.5)
        again = dimap_masks(model, r, ties=ties)
        assert all(torch.equal(masks[n], again[n]) for n in masks)  # deterministic


def test_dimap_threshold_is_module_quantile(swin_t, swin_t_dimap2):
    groups = group_modules(swin_t)
    params = dict(swin_t.named_parameters())
    masks = swin_t_dimap2
    for m in MODULES:
        scores = torch.cat([dimap_scores(params[n]).reshape(-1) for n in groups[m]])
        keep = torch.cat([masks[n].reshape(-1) for n in groups[m]])
        assert int((~keep).sum()) == round(0.35 * scores.numel())
        assert scores[~keep].max() <= scores[keep].min()
        assert masks[groups[m][0]].dtype == torch.bool
        assert masks[groups[m][0]].shape == params[groups[m][0]].shape


def test_dimap_module_ratios():
    model = tiny_swin()
    groups = group_modules(model)
    params = dict(model.named_parameters())
    masks = dimap_masks(model, module_ratios={"mlp": 0.5, "qkv": 0.2})
    assert _pruned(masks, groups["proj"]) == 0
    assert _pruned(masks, groups["qkv"]) == round(0.2 * sum(params[n].numel() for n in groups["qkv"]))
    assert _pruned(masks, groups["mlp"]) == round(0.5 * sum(params[n].numel() for n in groups["mlp"]))
    masks = dimap_masks(model, 0.3, module_ratios={"proj": 0.0})
    assert _pruned(masks, groups["proj"]) == 0 and _pruned(masks, groups["qkv"]) > 0


@pytest.mark.parametrize("kwargs", [{}, {"ratio": 1.0}, {"ratio": -0.1}, {"ratio": float("nan")},
                                    {"ratio": True}, {"ratio": "0.3"},
                                    {"module_ratios": {"aux": 0.2}}, {"module_ratios": {"mlp": 1.2}}])
def test_masks_reject_bad_ratios(kwargs):
    model = tiny_swin()
    with pytest.raises(ValueError):
        dimap_masks(model, **kwargs)
    with pytest.raises(ValueError):
        magnitude_masks(model, **kwargs)


# ----------------------------------------------------------------------------- baselines

def test_magnitude_baselines_prune_requested_fraction(swin_t):
    groups = group_modules(swin_t)
    params = dict(swin_t.named_parameters())
    names = [n for m in MODULES for n in groups[m]]
    uni = magnitude_masks(swin_t, 0.35, scope="uniform")
    for n in names:
        w, keep = params[n].detach().abs(), uni[n]
        assert int((~keep).sum()) == round(0.35 * w.numel())
        assert w[~keep].max() <= w[keep].min()
    glob = magnitude_masks(swin_t, 0.35, scope="global")
    w = torch.cat([params[n].detach().abs().reshape(-1) for n in names])
    keep = torch.cat([glob[n].reshape(-1) for n in names])
    assert int((~keep).sum()) == round(0.35 * w.numel())
    assert w[~keep].max() <= w[keep].min()
    with pytest.raises(ValueError):
        magnitude_masks(swin_t, 0.35, scope="layer")


def test_magnitude_exact_with_ties():
    model = tiny_swin()
    groups = group_modules(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in (n for m in MODULES for n in groups[m]):
            params[n].fill_(0.5)
    for scope in ("uniform", "global"):
        masks = magnitude_masks(model, 0.4, scope=scope)
        total = sum(params[n].numel() for n in masks)
        assert sum(int((~k).sum()) for k in masks.values()) == pytest.approx(0.4 * total, abs=len(masks))
    uni = magnitude_masks(model, 0.4, scope="uniform")
    assert all(int((~uni[n]).sum()) == math.floor(0.4 * uni[n].numel() + 0.5) for n in uni)


def test_dimap_pooled_threshold_differs_from_uniform(swin_t, swin_t_dimap2):
    groups = group_modules(swin_t)
    dimap = swin_t_dimap2
    uni = magnitude_masks(swin_t, 0.35, scope="uniform")
    for m in MODULES:
        frac_d = torch.tensor([float((~dimap[n]).float().mean()) for n in groups[m]])
        frac_u = torch.tensor([float((~uni[n]).float().mean()) for n in groups[m]])
        assert (frac_u - 0.35).abs().max() < 1e-3  # uniform: every layer at r
        assert frac_d.max() - frac_d.min() > 0.02  # pooled threshold: layers differ
    assert any(not torch.equal(dimap[n], uni[n]) for n in dimap)


# ----------------------------------------------------------------------------- apply / fine-tune

def _train_step(model, opt, seed):
    torch.manual_seed(seed)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def test_masks_stay_fixed_through_adamw():
    model = tiny_swin()
    keys = list(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    _train_step(model, opt, 0)
    opt.step()  # optimizer state (momentum) from dense training: would move zeroed weights
    masks = dimap_masks(model, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = apply_masks(model, masks).attach(opt)
    params = dict(model.named_parameters())
    assert all(bool((params[n][~k] == 0).all()) for n, k in masks.items())
    for step in range(3):
        _train_step(model, opt, step + 1)
        for n, k in masks.items():  # gradient hook zeroes the pruned entries' gradients
            assert bool((params[n].grad[~k] == 0).all())
            assert bool((params[n].grad[k] != 0).any())
        opt.step()
        for n, k in masks.items():
            assert bool((params[n][~k] == 0).all())
    assert any(not torch.equal(params[n][k], before[n][k]) for n, k in masks.items())  # kept trained
    assert list(model.state_dict()) == keys
    handle.remove()
    _train_step(model, opt, 9)
    assert any(bool((params[n].grad[~k] != 0).any()) for n, k in masks.items())  # hooks gone


def test_apply_masks_validation():
    model = tiny_swin()
    masks = dimap_masks(model, 0.3)
    name = next(iter(masks))
    with pytest.raises(ValueError):
        apply_masks(model, {"nope.weight": masks[name]})
    with pytest.raises(ValueError):
        apply_masks(model, {name: masks[name].float()})
    with pytest.raises(ValueError):
        apply_masks(model, {name: masks[name].reshape(-1)})
    with pytest.raises(ValueError):
        apply_masks(model, masks).attach("adamw")


# ----------------------------------------------------------------------------- restore

def test_restore_is_bit_exact():
    model = tiny_swin()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    backup = dense_backup(model)
    assert set(backup) == {n for m in MODULES for n in group_modules(model)[m]}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    handle = apply_masks(model, dimap_masks(model, 0.55)).attach(opt)
    _train_step(model, opt, 0)
    opt.step()
    handle.remove()
    restore(model, backup)
    params = dict(model.named_parameters())
    for n in backup:
        assert torch.equal(_bits(params[n]), _bits(original[n]))
    # the context manager restores every named parameter (including non-prunable ones)
    with WeightRestorer(model, names=list(params)):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5).add_(1.0)
    _train_step(model, opt, 1)
    for n in backup:
        assert torch.equal(_bits(params[n]), _bits(original[n]))
    with pytest.raises(ValueError):
        restore(model, {n: t.double() for n, t in backup.items()})
    with pytest.raises(ValueError):
        dense_backup(model, ["nope"])


# ----------------------------------------------------------------------------- accounting

def _hooked_linear_macs(model, img):
    """MACs of every Linear/Conv2d by forward hooks on a real forward pass (per weight id)."""
    macs: dict[int, float] = {}

    def hook(mod, inp, out):
        if isinstance(mod, nn.Linear):
            macs[id(mod.weight)] = inp[0].numel() / mod.in_features * mod.in_features * mod.out_features
        else:
            kh, kw = mod.kernel_size
            macs[id(mod.weight)] = out.numel() * mod.in_channels * kh * kw

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(img)
    for h in hs:
        h.remove()
    return macs


def test_macs_match_forward_hooks_dense_and_masked():
    model = tiny_swin()
    model.eval()
    hooked = _hooked_linear_macs(model, torch.randn(1, 3, 32, 32))
    # attention matmuls: 2 * tokens * window_area * C per block, tokens 8x8 / 4x4, window 4x4
    attn = sum(2 * tokens * 16 * c for tokens, c, d in ((64, 16, 2), (16, 32, 2)) for _ in range(d))
    res = macs_reduction(model, img_size=32)
    assert res["dense_macs"] == pytest.approx(sum(hooked.values()) + attn, rel=1e-12)
    assert res["macs_reduction"] == 0.0
    masks = dimap_masks(model, 0.4)
    params = dict(model.named_parameters())
    kept = {id(params[n]): int(k.sum()) / k.numel() for n, k in masks.items()}
    expected_pruned = sum(v * kept.get(i, 1.0) for i, v in hooked.items()) + attn
    res = macs_reduction(model, masks, img_size=32)
    assert res["pruned_macs"] == pytest.approx(expected_pruned, rel=1e-12)
    assert res["macs_reduction"] == pytest.approx(1 - expected_pruned / res["dense_macs"], rel=1e-12)


def test_accounting_swin_t_and_prefix(swin_t):
    dense = macs_reduction(swin_t, img_size=224)
    assert 4.4e9 < dense["dense_macs"] < 4.6e9  # timm / paper: 4.5 G
    masks = magnitude_masks(swin_t, 0.35, scope="global")
    rep = param_report(swin_t, masks)
    assert rep["total_params"] == sum(p.numel() for p in swin_t.parameters())
    assert rep["pruned_params"] == sum(int((~k).sum()) for k in masks.values())
    assert rep["params_reduction"] == pytest.approx(rep["pruned_params"] / rep["total_params"])

    class Seg(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone
            self.decode = nn.Conv2d(768, 3, 1)

    seg = Seg(swin_t)
    seg_masks = {"backbone." + n: k for n, k in masks.items()}
    assert macs_reduction(seg, seg_masks, 224) == macs_reduction(swin_t, masks, 224)
    with pytest.raises(ValueError):
        macs_reduction(nn.Linear(3, 3))
    with pytest.raises(ValueError):
        macs_reduction(swin_t, img_size=0)


def test_table1_swin_t_dimap2_within_0p2_points():
    rep = dimap_report("swin_tiny_patch4_window7_224", ratios=(0.35,))
    row = rep["rows"][0]
    assert row["label"] == "T-DIMAP2"
    assert abs(row["params_reduction_pct"] - 32.0) <= 0.2
    assert abs(row["macs_reduction_pct"] - 32.4) <= 0.2
    assert row["params_diff_pts"] == pytest.approx(row["params_reduction_pct"] - 32.0)


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swin_base_patch4_window7_224"])
def test_table1_all_ratios_within_0p2_points(name):
    rep = dimap_report(name)
    paper = PAPER_TABLE1[name]
    assert [r["ratio"] for r in rep["rows"]] == [0.15, 0.35, 0.55]
    for row in rep["rows"]:
        ref = paper["dimap"][row["ratio"]]
        assert abs(row["params_reduction_pct"] - ref["params_reduction_pct"]) <= 0.2
        assert abs(row["macs_reduction_pct"] - ref["flops_reduction_pct"]) <= 0.2
        assert abs(row["params"] / 1e6 - ref["params_m"]) <= 0.1
    assert abs(rep["dense"]["params"] / 1e6 - paper["dense"]["params_m"]) <= 0.1
    assert abs(rep["dense"]["macs"] / 1e9 - paper["dense"]["flops_g"]) <= 0.1
    table = format_report(rep)
    assert table.count("\n") == 1 + 1 + 3  # header, separator, dense row, 3 ratios
    assert paper["dimap"][0.35]["label"] in table


def test_report_with_real_masks_matches_analytic_params():
    model = tiny_swin()
    real = dimap_report("tiny", ratios=(0.3,), img_size=32, model=model, masks="dimap")
    analytic = dimap_report("tiny", ratios=(0.3,), img_size=32, model=model)
    assert real["counting"] == "masks" and analytic["counting"] == "analytic"
    r, a = real["rows"][0], analytic["rows"][0]
    assert r["params"] == a["params"]  # pooled threshold removes exactly round(r * n_module)
    assert r["paper_params_reduction_pct"] is None and r["params_diff_pts"] is None
    masks = dimap_masks(model, 0.3)
    given = dimap_report("tiny", ratios=(0.3,), img_size=32, model=model, masks={0.3: masks})
    assert given["rows"][0]["macs"] == r["macs"]
    with pytest.raises(ValueError):
        dimap_report("tiny", ratios=(0.3,), model=model, masks="random")
    with pytest.raises(ValueError):
        format_report({"rows": []})
