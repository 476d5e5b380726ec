"""SparseSwin: equivalence with timm, window bookkeeping, window-level execution, gradients."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from supernet import SparseSwin, count_macs, keep_count, validate_sparsity
from supernet.sparse_swin import rank_windows, sparse_block_forward

torch.set_num_threads(1)

SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
SMALL2 = dict(embed_dim=24, depths=(2, 4, 2), num_heads=(2, 2, 4), window_size=4)


def _pair(kw, size, seed=0):
    torch.manual_seed(seed)
    m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=size, num_classes=7, **kw).eval()
    return m, SparseSwin(m).eval()


@pytest.mark.parametrize("kw", [SMALL, SMALL2], ids=["16-2222", "24-242-w4"])
@pytest.mark.parametrize("size", [112, 96], ids=["aligned", "padded"])
def test_zero_sparsity_equals_timm(kw, size):
    m, s = _pair(kw, size)
    # 96 px -> 24x24 tokens: not a multiple of 7 (nor of 4 after merging to 3x3 with w4): padded
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = m(x)
        out = s(x)
    assert (ref - out).abs().max().item() <= 1e-5
    assert set(m.state_dict()) == set(s.state_dict())


def test_timm_state_dict_loads_both_ways():
    m, s = _pair(SMALL, 112, seed=1)
    m2, _ = _pair(SMALL, 112, seed=2)
    s.load_state_dict(m2.state_dict())  # a timm state_dict loads unchanged
    m.load_state_dict(s.state_dict())  # and back
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_from_timm_refuses_pretrained():
    with pytest.raises(ValueError, match="download"):
        SparseSwin.from_timm("swin_tiny_patch4_window7_224", img_size=112, pretrained=True, **SMALL)


@pytest.mark.parametrize("bad,msg", [
    ([[0.1, 0.1], [0, 0], [0, 0]], "3 stages but the model has 4"),
    ([[0.1], [0, 0], [0, 0], [0, 0]], "stage 0 has 1 ratios but 2 blocks"),
    ([[0.1, 1.0], [0, 0], [0, 0], [0, 0]], r"outside \[0, 1\)"),
    ([[-0.1, 0.1], [0, 0], [0, 0], [0, 0]], r"outside \[0, 1\)"),
    ([[0.5, 0.2], [0, 0], [0, 0], [0, 0]], "non-decreasing"),
    ([["a", 0.2], [0, 0], [0, 0], [0, 0]], "not a number"),
    ([[float("nan"), 0.2], [0, 0], [0, 0], [0, 0]], r"outside \[0, 1\)"),
])
def test_invalid_configs_raise(bad, msg):
    _, s = _pair(SMALL, 112)
    with pytest.raises(ValueError, match=msg):
        s.set_sparsity(bad)
    assert s.sparsity == [[0.0, 0.0]] * 4  # unchanged


def test_sparsity_roundtrip_and_broadcast():
    _, s = _pair(SMALL, 112)
    cfg = [[0.2, 0.3], [0.0, 0.5], [0.1, 0.1], [0.0, 0.0]]
    assert s.set_sparsity(cfg).sparsity == cfg
    assert s.set_sparsity(0.4).sparsity == [[0.4, 0.4]] * 4


def test_keep_count_matches_reference_formula():
    for nw in (1, 4, 16, 36, 576):
        for r in (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.95):
            assert keep_count(nw, r) == (nw if r == 0 else int(nw * (1 - r)))


def _count_kept_windows(s, x, monkeypatch):
    """Record k of every sparse block call through the real forward."""
    import supernet.sparse_swin as ss
    seen = []
    orig = ss.sparse_block_forward

    def spy(blk, x_, keep, **kw):
        seen.append((id(blk), keep.shape[1], keep.shape[0]))
        return orig(blk, x_, keep, **kw)
    monkeypatch.setattr(ss, "sparse_block_forward", spy)
    with torch.no_grad():
        s(x)
    return seen


def test_kept_window_count_per_block(monkeypatch):
    _, s = _pair(SMALL, 112)  # 28x28 tokens: 16 windows, then 4, 1, 1
    cfg = [[0.2, 0.5], [0.3, 0.3], [0.0, 0.5], [0.0, 0.0]]
    s.set_sparsity(cfg)
    seen = _count_kept_windows(s, torch.randn(3, 3, 112, 112), monkeypatch)
    nws = s.num_windows(112)
    assert nws == [[16, 16], [4, 4], [1, 1], [1, 1]]
    expected = []
    for st, (stage, rs) in enumerate(zip(s.layers, cfg)):
        for blk, r, nw in zip(stage.blocks, rs, nws[st]):
            k = int(nw * (1 - r)) if r > 0 else nw
            if 0 < k < nw:
                expected.append((id(blk), k, 3))
    assert seen == expected
    assert s.keep_counts(112) == [[12, 8], [2, 2], [1, 0], [1, 1]]


def _block_and_input(size=112, stage=0, block=1, seed=0, kw=SMALL):
    _, s = _pair(kw, size, seed)
    torch.manual_seed(seed + 10)
    with torch.no_grad():
        x = s.patch_embed(torch.randn(2, 3, size, size))
        for i in range(stage):
            x = s.forward_stage(i, x)
        x = s.layers[stage].downsample(x)
        for b in s.layers[stage].blocks[:block]:
            x = b(x)
    return s, s.layers[stage].blocks[block], x


def _window_tokens(blk, x):
    """(B, H, W, C) -> (B, nW, N, C) windows of the rolled + padded map (timm's order)."""
    B, H, W, C = x.shape
    sh = blk.shift_size
    wh, ww = blk.window_size
    xs = torch.roll(x, (-sh[0], -sh[1]), (1, 2)) if any(sh) else x
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    xs = F.pad(xs, (0, 0, 0, Wp - W, 0, Hp - H))
    return xs.view(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, -1, wh * ww, C)


@pytest.mark.parametrize("size,block", [(112, 0), (112, 1), (96, 1)], ids=["W-MSA", "SW-MSA", "SW-MSA-padded"])
def test_kept_windows_match_dense_and_pruned_windows_pass_through(size, block):
    s, blk, x = _block_and_input(size=size, block=block)
    nw = s.num_windows(size)[0][block]
    g = torch.Generator().manual_seed(3)
    keep = torch.stack([torch.randperm(nw, generator=g)[: nw // 2] for _ in range(x.shape[0])])
    with torch.no_grad():
        dense = _window_tokens(blk, blk(x))
        out = _window_tokens(blk, sparse_block_forward(blk, x, keep))
        inp = _window_tokens(blk, x)
    H, W = x.shape[1:3]
    valid = _window_tokens(blk, torch.ones(1, H, W, 1))[0, :, :, 0] > 0  # (nW, N) real tokens
    for b in range(x.shape[0]):
        kept = set(keep[b].tolist())
        for w in range(nw):
            v = valid[w]
            if w in kept:
                assert torch.allclose(out[b, w][v], dense[b, w][v], atol=1e-5), (b, w)
            else:
                assert torch.equal(out[b, w][v], inp[b, w][v]), (b, w)


def _slow_reference(blk, x, keep):
    """Per-window loop: roll, pad, then LN1/attention(with that window's mask)/LN2/MLP per kept window."""
    B, H, W, C = x.shape
    wh, ww = blk.window_size
    sh = blk.shift_size
    win = _window_tokens(blk, x).clone()
    valid = _window_tokens(blk, torch.ones(1, H, W, 1))[0, :, :, 0]
    for b in range(B):
        for w in keep[b].tolist():
            t = win[b, w]
            h = blk.norm1(t) * valid[w].unsqueeze(-1)
            mask = blk.attn_mask[w: w + 1] if any(sh) else None
            t = t + blk.attn(h.unsqueeze(0), mask=mask)[0]
            t = t + blk.mlp(blk.norm2(t))
            win[b, w] = t
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    out = win.view(B, Hp // wh, Wp // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    out = out[:, :H, :W]
    return torch.roll(out, sh, (1, 2)) if any(sh) else out


@pytest.mark.parametrize("size", [112, 96])
def test_shifted_block_matches_slow_per_window_loop(size):
    s, blk, x = _block_and_input(size=size, block=1)
    assert any(blk.shift_size)
    nw = s.num_windows(size)[0][1]
    keep = torch.stack([torch.arange(nw)[torch.randperm(nw)[:5]] for _ in range(2)])
    with torch.no_grad():
        ref = _slow_reference(blk, x, keep)
        out = sparse_block_forward(blk, x, keep)
    assert (ref - out).abs().max().item() <= 1e-5


@pytest.mark.parametrize("block", [0, 1], ids=["W-MSA", "SW-MSA"])
def test_gather_path_equals_partition_path_bit_for_bit(block):
    """Unpadded maps gather the kept windows' tokens by index (shift folded in) instead of rolling and
    partitioning the whole map: the same arithmetic on the same tokens, so outputs and gradients are identical."""
    from supernet.sparse_swin import _gather_block_forward, _partition_block_forward

    s, blk, x = _block_and_input(size=112, block=block)
    nw = s.num_windows(112)[0][block]
    keep = torch.stack([torch.arange(nw)[torch.randperm(nw)[:7]] for _ in range(x.shape[0])])
    with torch.no_grad():
        assert torch.equal(_gather_block_forward(blk, x, keep), _partition_block_forward(blk, x, keep))
        assert torch.equal(sparse_block_forward(blk, x, keep), _partition_block_forward(blk, x, keep))
    grads = []
    for fn in (_gather_block_forward, _partition_block_forward):
        xi = x.clone().requires_grad_(True)
        blk.zero_grad()
        (fn(blk, xi, keep) ** 2).sum().backward()
        grads.append((xi.grad, blk.attn.qkv.weight.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6) and torch.allclose(grads[0][1], grads[1][1], atol=1e-5)


def test_ranking_uses_window_l2_of_token_importance():
    s, blk, x = _block_and_input(block=0)
    imp = x.abs().mean(-1)
    order = rank_windows(imp, blk)
    scores = _window_tokens(blk, imp.unsqueeze(-1))[..., 0].norm(dim=-1)  # (B, nW)
    ranked = torch.gather(scores, 1, order)
    assert torch.all(ranked[:, :-1] >= ranked[:, 1:])


def _kept_windows(monkeypatch, s, x):
    """Run ``s`` on ``x`` and return the kept-window indices of every sparse block run, and the patch embedding."""
    import supernet.sparse_swin as ss
    keeps = []
    orig = ss.sparse_block_forward
    monkeypatch.setattr(ss, "sparse_block_forward", lambda b, x, k, **kw: (keeps.append(k.clone()), orig(b, x, k, **kw))[1])
    with torch.no_grad():
        s(x)
        emb = s.patch_embed(x)
    return keeps, emb


def test_stage_reuses_scores_and_prefix(monkeypatch):
    """Later blocks of a stage keep a prefix of the first pruned block's ranking (reference)."""
    _, s = _pair(SMALL, 112)
    s.set_sparsity([[0.25, 0.5], [0, 0], [0, 0], [0, 0]])
    keeps, emb = _kept_windows(monkeypatch, s, torch.randn(1, 3, 112, 112))
    assert [k.shape[1] for k in keeps] == [12, 8]
    imp = emb.abs().mean(-1)  # scored once, on the stage input
    assert torch.equal(keeps[0], rank_windows(imp, s.layers[0].blocks[0])[:, :12])
    assert torch.equal(keeps[1], rank_windows(imp, s.layers[0].blocks[1])[:, :8])


def test_centred_importance_ignores_a_shared_offset_and_magnitude_does_not():
    """Centred importance is mean |x - mean token|: adding one vector to every token of an image changes nothing."""
    from supernet.sparse_swin import token_importance
    x = torch.randn(2, 14, 14, 8)
    offset = torch.randn(2, 1, 1, 8) * 5
    assert torch.equal(token_importance(x, "magnitude"), x.abs().mean(-1))
    assert torch.allclose(token_importance(x + offset, "centred"), token_importance(x, "centred"), atol=1e-5)
    assert not torch.allclose(token_importance(x + offset, "magnitude"), token_importance(x, "magnitude"), atol=1e-2)
    # a uniform background with large activations and one small, distinct item: centred ranks the item first
    bg = torch.full((1, 14, 14, 8), 3.0)
    bg[0, 7:14, 7:14] = torch.tensor([0.5, 2.0, 0.5, 2.0, 0.5, 2.0, 0.5, 2.0])  # window 3 of a 2x2 grid
    _, s = _pair(SMALL, 112)
    blk = s.layers[1].blocks[0]  # 14x14 map, window 7: 4 windows
    assert rank_windows(token_importance(bg, "centred"), blk)[0, 0].item() == 3
    assert rank_windows(token_importance(bg, "magnitude"), blk)[0, -1].item() == 3
    with pytest.raises(ValueError, match="window importance"):
        token_importance(x, "norm")
    with pytest.raises(ValueError, match="window_importance"):
        SparseSwin(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=112, **SMALL),
                   window_importance="norm")


def test_centred_model_keeps_the_windows_its_importance_ranks_first(monkeypatch):
    from supernet.sparse_swin import token_importance
    torch.manual_seed(0)
    s = SparseSwin.from_timm("swin_tiny_patch4_window7_224", img_size=112, window_importance="centred", **SMALL).eval()
    s.set_sparsity([[0.5, 0.5], [0, 0], [0, 0], [0, 0]])
    keeps, emb = _kept_windows(monkeypatch, s, torch.randn(1, 3, 112, 112))
    for kept, blk in zip(keeps, s.layers[0].blocks):
        assert torch.equal(kept, rank_windows(token_importance(emb, "centred"), blk)[:, :8])
    assert not torch.equal(keeps[0], rank_windows(token_importance(emb, "magnitude"), s.layers[0].blocks[0])[:, :8])


def test_k_zero_block_is_identity():
    _, s = _pair(SMALL, 112)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        feats_dense = s.forward_stages(x)
        s.set_sparsity([[0, 0], [0, 0], [0, 0.9], [0, 0]])  # stage 2 has 1 window: k = int(1 * 0.1) = 0
        feats = s.forward_stages(x)
        s.set_sparsity([[0, 0], [0, 0], [0, 0], [0, 0]])
        emb = s.patch_embed(x)
        h = s.forward_stage(1, s.forward_stage(0, emb))
        h = s.layers[2].downsample(h)
        h = s.layers[2].blocks[0](h)
    assert torch.equal(feats[2].permute(0, 2, 3, 1), h)
    assert torch.equal(feats[1], feats_dense[1])


def test_train_mode_gradients_reach_kept_windows_only_through_kept_path():
    s, blk, x = _block_and_input(block=1)
    s.train()
    x = x.clone().requires_grad_(True)
    nw = s.num_windows(112)[0][1]
    keep = torch.arange(nw // 2).unsqueeze(0).expand(2, -1)
    out = sparse_block_forward(blk, x, keep)
    out.square().sum().backward()
    assert blk.attn.qkv.weight.grad is not None and blk.attn.qkv.weight.grad.abs().sum() > 0
    assert blk.mlp.fc1.weight.grad.abs().sum() > 0
    # pruned windows are the identity: their gradient is exactly 2 * x there
    g = _window_tokens(blk, x.grad)
    xin = _window_tokens(blk, x.detach())
    pruned = torch.arange(nw // 2, nw)
    assert torch.allclose(g[:, pruned], 2 * xin[:, pruned])


def test_full_model_train_and_inference_mode():
    _, s = _pair(SMALL, 112)
    s.set_sparsity([[0.3, 0.5], [0.2, 0.2], [0, 0], [0, 0]])
    s.train()
    loss = s(torch.randn(2, 3, 112, 112)).logsumexp(-1).sum()
    loss.backward()
    assert s.patch_embed.proj.weight.grad.abs().sum() > 0
    s.eval()
    with torch.inference_mode():
        y = s(torch.randn(2, 3, 112, 112))
    assert y.shape == (2, 7) and torch.isfinite(y).all()


def test_forward_stages_shapes():
    _, s = _pair(SMALL, 112)
    feats = s.forward_stages(torch.randn(2, 3, 112, 112))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 28, 28), (2, 32, 14, 14), (2, 64, 7, 7), (2, 128, 4, 4)]


def test_macs_swin_t_dense_and_sparse():
    s = SparseSwin.from_timm("swin_tiny_patch4_window7_224", img_size=224)
    dense = count_macs(s, 224)
    assert abs(dense / 4.5e9 - 1) <= 0.02
    backbone = count_macs(s, 224, include_head=False)
    assert dense - backbone == 768 * 1000
    cfg = [[0.5, 0.5], [0, 0], [0, 0, 0, 0, 0, 0], [0, 0]]  # stage 0: 64 windows -> 32 kept
    s.set_sparsity(cfg)
    # stage-0 block MACs halve exactly (H, W are multiples of 7: no padding)
    dim, n, hidden = 96, 49, 384
    per_window = n * (4 * dim * dim + 2 * dim * hidden) + 2 * n * n * dim
    assert dense - count_macs(s, 224) == 2 * 32 * per_window
    assert count_macs(s, 224, ratios=[[0] * d for d in s.depths]) == dense


def _stage_blockwise(s, i, x):
    """Stage ``i`` block by block through the public, out-of-place ``sparse_block_forward`` (no shared ranking)."""
    from supernet.sparse_swin import token_importance
    stage = s.layers[i]
    x = stage.downsample(x)
    imp = None
    for blk, r in zip(stage.blocks, s.sparsity[i]):
        if r <= 0:
            x = blk(x)
            continue
        imp = token_importance(x, s.window_importance) if imp is None else imp
        order = rank_windows(imp, blk)
        k = keep_count(order.shape[1], r)
        if 0 < k < order.shape[1]:
            x = sparse_block_forward(blk, x, order[:, :k])
        elif k == order.shape[1]:
            x = blk(x)
    return x


@pytest.mark.parametrize("batch", [1, 3])
def test_stage_forward_in_place_and_shared_ranking_equal_the_blockwise_forward(batch):
    """forward_stage writes pruned blocks back in place (after the stage's first tensor of its own) and reuses one
    ranking's token indices and masks across the blocks sharing it: bit-identical to block-by-block out-of-place
    calls, and the stage's input is never written (stage 0's input is the caller's)."""
    torch.manual_seed(3)
    kw = dict(embed_dim=16, depths=(2, 6, 2), num_heads=(1, 2, 4))
    s = SparseSwin.from_timm("swin_tiny_patch4_window7_224", img_size=224, **kw).eval()
    s.set_sparsity([[0.3, 0.5], [0.2, 0.2, 0.4, 0.4, 0.5, 0.6], [0, 0]])  # stage 1: 3 blocks per shift share
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        emb = s.patch_embed(x)
        before = emb.clone()
        got = [s.forward_stage(0, emb)]
        assert torch.equal(emb, before)  # stage 0 (no PatchMerging): its input is not written
        h1_in = got[0].clone()
        got.append(s.forward_stage(1, got[0]))
        assert torch.equal(got[0], h1_in)
        ref0 = _stage_blockwise(s, 0, before)
        ref1 = _stage_blockwise(s, 1, ref0)
    assert torch.equal(got[0], ref0) and torch.equal(got[1], ref1)


def test_in_place_write_back_is_skipped_under_autograd():
    from supernet.sparse_swin import StageRanking, _gather_block_forward
    s, blk, x = _block_and_input(block=1)
    nw = s.num_windows(112)[0][1]
    order = torch.stack([torch.randperm(nw) for _ in range(x.shape[0])])
    xi = x.clone().requires_grad_(True)
    out = _gather_block_forward(blk, xi, order[:, :5], inplace=True, ranking=StageRanking(order))
    assert out.data_ptr() != xi.data_ptr()  # autograd needs the input: out of place
    with torch.no_grad():
        xc = x.clone()
        ref = _gather_block_forward(blk, x, order[:, :5])
        out2 = _gather_block_forward(blk, xc, order[:, :5], inplace=True, ranking=StageRanking(order))
    assert out2.data_ptr() == xc.data_ptr() and torch.equal(out2, ref) and torch.equal(out.detach(), ref)
