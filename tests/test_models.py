"""Towers: parameter counts of methods.md §9, DIN split attention = concatenated form, padding."""
from __future__ import annotations

import copy

import pytest
import torch

from deep_components.models import DIN, DSSM, MLP
from deep_components import kernels
from deep_components.models import _PairAttention

RECFLOW = dict(user_id=42_472, device_id=42_561, age=8, gender=3, province=79,
               video_id=82_216_301, author_id=33_474_011, category_level_one=140,
               category_level_two=784, upload_type=40)
SMALL = dict(user_id=50, device_id=50, age=8, gender=3, province=79, video_id=300, author_id=60,
             category_level_one=12, category_level_two=40, upload_type=8)


@pytest.mark.parametrize("cls,total,dense", [(DSSM, 926_254_560, 42_432), (DIN, 926_260_994, 48_866),
                                             (MLP, 926_244_129, 32_001)])
def test_parameter_counts_at_recflow_scale(cls, total, dense):
    with torch.device("meta"):                       # no memory is allocated
        m = cls(RECFLOW)
    n_emb = sum(p.numel() for n, p in m.named_parameters() if n.startswith("emb."))
    assert n_emb == 8 * (sum(v + 2 for v in RECFLOW.values()) + 97) == 926_212_128
    assert sum(p.numel() for p in m.parameters()) == total
    assert total - n_emb == dense


def _batch(B=6, N=7, H=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi, shape: torch.randint(lo, hi, shape, generator=g)
    ctx = torch.stack([r(1, 8, (B,)), r(1, 25, (B,)), r(1, 61, (B,)), r(1, 51, (B,)), r(1, 51, (B,)),
                       r(1, 4, (B,)), r(1, 9, (B,)), r(1, 80, (B,))], 1)
    lens = torch.tensor([0, 1, 50, 20, 33, 7])[:B]
    mask = torch.arange(H)[None] >= H - lens[:, None]
    hist = torch.stack([r(1, 301, (B, H)), r(1, 61, (B, H)), r(1, 41, (B, H)), r(0, 13, (B, H)),
                        r(1, 9, (B, H))], -1) * mask[..., None]
    items = torch.stack([r(1, 301, (B, N)), r(1, 61, (B, N)), r(1, 41, (B, N)), r(0, 13, (B, N)),
                         r(1, 9, (B, N)), r(1, 8, (B, N)), r(1, 25, (B, N)), r(1, 61, (B, N))], -1)
    items[0, -1] = torch.tensor([0, 0, 0, 2, 0, 0, 0, 0])  # a padded slot
    return ctx, hist, mask, items


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_din_split_attention_equals_concatenated(chunk):
    torch.manual_seed(0)
    split = DIN(SMALL).double()
    split.chunk = chunk
    concat = copy.deepcopy(split)
    concat.split_attention = False
    batch = _batch()
    a, b = split(*batch), concat(*batch)
    assert a.shape == (6, 7)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    (a.sin().sum()).backward()
    (b.sin().sum()).backward()
    for (n, p), q in zip(split.named_parameters(), concat.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=1e-12), n


def test_din_attention_gradcheck():
    torch.manual_seed(0)
    m = DIN(SMALL).double()
    m.chunk = 2
    ctx, hist, mask, items = _batch(B=4, N=3)
    h = m.emb.item(hist).detach().requires_grad_()
    q = m.emb.item(items).detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda h, q: m.attention_logits(h, q, mask), (h, q))


def test_no_valid_history_gives_uniform_attention():
    torch.manual_seed(0)
    m = DIN(SMALL).double()
    ctx, hist, mask, items = _batch()
    hist2 = hist.clone()
    hist2[0] = 0  # request 0 has no valid history: interest = ψ(padded row)
    assert torch.allclose(m(ctx, hist, mask, items)[0], m(ctx, hist2, mask, items)[0])


@pytest.mark.parametrize("cls", [DSSM, DIN, MLP])
def test_padding_rows_zero_and_never_trained(cls):
    torch.manual_seed(0)
    m = cls(SMALL)
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    for seed in range(3):
        opt.zero_grad()
        m(*_batch(seed=seed)).pow(2).sum().backward()
        opt.step()
    t = m.emb.tables
    assert (t["video_id"].weight[0] == 0).all() and (t["user_id"].weight[0] == 0).all()
    assert (t["category_level_one"].weight[2] == 0).all()     # cate1's padding row is 2
    assert (t["category_level_one"].weight[0] != 0).any()     # row 0 is a real, trained row
    assert t["weekday"].weight.shape == (9, 8) and t["minute"].weight.shape == (62, 8)


@pytest.mark.parametrize("cls", [DIN, MLP])
def test_split_first_layer_matches_concatenation(cls):
    torch.manual_seed(0)
    split = cls(SMALL).double()
    concat = copy.deepcopy(split)
    concat.split_input = False
    batch = _batch()
    a, b = split(*batch), concat(*batch)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    a.sin().sum().backward()
    b.sin().sum().backward()
    for (n, p), q in zip(split.named_parameters(), concat.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=1e-12), n


def test_masked_logit_stays_fp32_under_fp16_autocast():
    """DIN's attention logits and their mask value are float32 under autocast (the mask value
    -(2**30 - 1) would overflow fp16), and its attention kernel runs in float32."""
    from deep_components.models import DIN

    torch.manual_seed(0)
    counts = {k: 50 for k in ("user_id", "device_id", "gender", "age", "province", "video_id",
                              "author_id", "category_level_one", "category_level_two", "upload_type")}
    din = DIN(counts)
    B, H, N = 3, 6, 4
    ctx = torch.randint(1, 5, (B, 8), dtype=torch.int32)
    hist = torch.randint(1, 20, (B, H, 5), dtype=torch.int32)
    mask = torch.zeros(B, H, dtype=torch.bool)
    mask[:, 3:] = True
    items = torch.randint(1, 7, (B, N, 8), dtype=torch.int32)
    seen = []
    real = din.attention_logits
    din.attention_logits = lambda *a: seen.append(real(*a)) or seen[-1]
    before = kernels.get_mode()
    try:
        for mode in ("native", "torch"):
            if mode == "native" and kernels.native_library() is None:
                continue
            kernels.set_mode(mode)
            with torch.autocast("cpu", dtype=torch.float16):
                out = din(ctx, hist, mask, items)
            assert torch.isfinite(out).all() and seen[-1].dtype == torch.float32
    finally:
        kernels.set_mode(before)


def test_the_cuda_attention_path_equals_the_cpu_paths(monkeypatch):
    """The CUDA path (contiguous request slices over all H rows, no host index) gives the values
    and gradients of the sorted-chunk path, float64 to 1e-12; taken on the CPU here."""

    g = torch.Generator().manual_seed(0)
    B, N, H, D = 11, 5, 9, 6
    q, h = torch.randn(B, N, D, generator=g, dtype=torch.float64), torch.randn(B, H, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    lengths = torch.tensor([1, 9, 3, 5, 9, 2, 7, 4, 8, 6, 1])
    valid = (torch.arange(H) >= H - lengths[:, None])[:, None, :].expand(B, N, H)
    grad = torch.randn(B, N, H, generator=g, dtype=torch.float64) * valid

    def run():
        qq, hh, ww = (t.clone().requires_grad_() for t in (q, h, w))
        out = _PairAttention.apply(qq, hh, ww, lengths, 4)
        return (out, *torch.autograd.grad(out, (qq, hh, ww), grad))

    before = kernels.get_mode()
    kernels.set_mode("torch")
    try:
        ref = run()
        monkeypatch.setattr(_PairAttention, "slices_on_cpu", True)
        monkeypatch.setattr(_PairAttention, "DEVICE_SLICE_ELEMENTS", 3 * N * H * D)   # 4 slices
        assert len(_PairAttention._slices(q, h)) == 4
        dev = run()
    finally:
        kernels.set_mode(before)
    assert (dev[0][~valid] == 0).all()       # the sorted path leaves padded rows unspecified
    for a, b in zip((ref[0] * valid, *ref[1:]), dev):
        assert a.abs().max() > 0.1 and (a - b).abs().max() <= 1e-12
