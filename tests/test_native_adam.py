"""NativeAdam is torch.optim.Adam bit for bit: on tables with untouched rows, padding rows and
vector tails over several steps, with the untouched rows skipped, with row gradients summed
into a running buffer, after a state round trip, and over whole training runs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deep_components import kernels, native_adam
from deep_components.config import RunConfig
from deep_components.native_adam import NativeAdam, RowGrad, attach_row_grads, fast_path, track_rows
from deep_components.run_folder import RunFolder

pytestmark = pytest.mark.skipif(kernels.native_library() is None or not fast_path()[0],
                                reason="native kernels not built on this machine")


def _grads(shapes, step, gen, zero_rows=None):
    """Gradients with 30% zeros, scales 1 / 0.1 / 0.01 by step, and whole zero rows."""
    out = []
    for s in shapes:
        g = torch.randn(s, generator=gen) * 10.0 ** -(step % 3)
        g[torch.rand(s, generator=gen) < 0.3] = 0
        if zero_rows is not None and len(s) == 2:
            g[zero_rows] = 0
        out.append(g)
    return out


def _same(opt_a, pa, opt_b, pb):
    for a, b in zip(pa, pb):
        assert torch.equal(a.detach(), b.detach())
        sa, sb = opt_a.state[a], opt_b.state[b]
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k], sb[k]), k


SHAPES = [(1,), (7,), (33,), (300, 8), (70_001, 8), (5_000, 13)]


def test_bitwise_torch_adam_with_untouched_rows_and_tails():
    gen = torch.Generator().manual_seed(0)
    ref = [nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    ours = [nn.Parameter(p.detach().clone()) for p in ref]
    never = torch.arange(0, 300, 3)                 # rows of every 2-D table never touched
    ref[3].data[0] = 0                              # a padding-like row of zeros
    ours[3].data[0] = 0
    a, b = torch.optim.Adam(ref, lr=0.01), NativeAdam(ours, lr=0.01)
    for step in range(1, 8):
        for p, q, g in zip(ref, ours, _grads(SHAPES, step, gen, never)):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    _same(a, ref, b, ours)
    assert not torch.equal(ref[4].detach(), ours[4].detach() * 0)        # it did move
    assert torch.equal(ours[3].detach()[0], torch.zeros(8))               # zero row stays zero


def test_skipping_untouched_rows_changes_no_bit():
    gen = torch.Generator().manual_seed(1)
    rows = 70_001
    dense = nn.Parameter(torch.randn(rows, 8, generator=gen))
    skip = nn.Parameter(dense.detach().clone())
    mask = torch.zeros(rows, dtype=torch.uint8)
    a, b = NativeAdam([dense], lr=0.01), NativeAdam([skip], lr=0.01, row_masks={skip: mask})
    for step in range(6):
        ids = torch.randint(0, 10_000 * (step + 1), (3_000,), generator=gen)  # the set grows
        g = torch.zeros(rows, 8)
        g[ids] = torch.randn(len(ids), 8, generator=gen)
        mask[ids] = 1
        dense.grad, skip.grad = g.clone(), g.clone()
        a.step()
        b.step()
    assert 0 < mask.float().mean() < 1
    _same(a, [dense], b, [skip])


def test_state_round_trip_with_torch_adam_and_masks_rebuilt():
    gen = torch.Generator().manual_seed(2)
    p = nn.Parameter(torch.randn(100_000, 8, generator=gen))
    mask = torch.zeros(100_000, dtype=torch.uint8)
    opt = NativeAdam([p], lr=0.01, row_masks={p: mask})
    ids = torch.randint(0, 50_000, (2_000,), generator=gen)
    g = torch.zeros(100_000, 8)
    g[ids] = torch.randn(2_000, 8, generator=gen)
    g[ids[0], 0] = -0.0                            # a signed zero counts as touched
    mask[ids] = 1
    p.grad = g
    opt.step()
    fresh = torch.zeros(100_000, dtype=torch.uint8)
    again = NativeAdam([p], lr=0.01, row_masks={p: fresh})
    again.load_state_dict(opt.state_dict())
    assert torch.equal(fresh, mask)
    plain = torch.optim.Adam([p], lr=0.01)
    plain.load_state_dict(opt.state_dict())        # the same state layout as torch's Adam
    assert torch.equal(plain.state[p]["exp_avg"], opt.state[p]["exp_avg"])


class _Two(nn.Module):
    """A table looked up three times per step (items, history, a third), padding row 0."""

    def __init__(self, rows, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Embedding(rows, 8, padding_idx=0, _weight=torch.randn(rows, 8, generator=g))
        self.w = nn.Parameter(torch.randn(8, generator=g))

    def forward(self, a, b, c):
        from deep_components.models import lookup

        return ((lookup(self.table, a) * self.w).sum() + (lookup(self.table, b) ** 2).sum()
                + lookup(self.table, c).sum() * 0.5)


def test_row_gradients_equal_torch_gradients_and_steps(monkeypatch):
    monkeypatch.setattr(native_adam, "MIN_TRACKED_ROWS", 1)
    gen = torch.Generator().manual_seed(3)
    rows = 5_000
    ref, ours = _Two(rows, 4), _Two(rows, 4)
    masks = track_rows(ours)
    attach_row_grads(ours)
    rg = ours.table.row_grad
    assert isinstance(rg, RowGrad) and set(masks) == {ours.table.weight}
    a = torch.optim.Adam(ref.parameters(), lr=0.01)
    b = NativeAdam(ours.parameters(), lr=0.01, row_masks=masks, row_grads={ours.table.weight: rg})
    for step in range(5):
        a_ids = torch.randint(0, 300, (64, 20), generator=gen)        # repeats, padding id 0
        b_ids = torch.randint(0, 300, (64, 50), generator=gen)
        c_ids = torch.randint(200, 4_000, (64, 5), generator=gen)
        for opt in (a, b):
            opt.zero_grad(set_to_none=True)
        ref(a_ids, b_ids, c_ids).backward()
        ours(a_ids, b_ids, c_ids).backward()
        assert ours.table.weight.grad is None
        assert torch.equal(rg.acc, ref.table.weight.grad)              # bit for bit
        a.step()
        b.step()
    _same(a, list(ref.parameters()), b, list(ours.parameters()))
    b.zero_grad()
    assert not rg.acc.any() and not rg.ids                             # touched rows zeroed


@pytest.mark.parametrize("setting", ["two_stage", "three_stage"])
def test_training_runs_equal_torch_adam(tiny_root, tmp_path, monkeypatch, setting):
    """Whole runs on tiny: every table tracked with row gradients (threshold 1) against
    torch.optim.Adam with dense gradients — the same towers and the same loss log."""
    from deep_components import training

    def run(name):
        cfg = RunConfig(setting=setting, method="lcron", run_id=3, batch_size=32,
                        data_dir=str(tiny_root), run_dir=str(tmp_path / name), progress=False,
                        device="cpu")
        return RunFolder(training.train(cfg))

    monkeypatch.setattr(native_adam, "MIN_TRACKED_ROWS", 1)
    native = run("native")
    with monkeypatch.context() as m:
        m.setattr(training, "NativeAdam", lambda params, lr, **kw: torch.optim.Adam(params, lr=lr))
        m.setattr(training, "touched_rows_masks", lambda model: {})
        m.setattr(training, "attach_row_grads", lambda model, min_rows=None: {})
        plain = run("plain")
    ta, tb = (torch.load(r.path / "towers.pt", weights_only=True) for r in (native, plain))
    for da, db in zip(ta["models"] + [ta["loss"]], tb["models"] + [tb["loss"]], strict=True):
        assert da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da)
    assert native.read_loss_log() == plain.read_loss_log()


def test_native_lazy_adam_is_lazy_adam(monkeypatch):
    """The lazy step on row gradients equals LazyAdam on sparse gradients (ids distinct within
    a step, so both sum nothing); rows outside the step keep value and moments."""
    from deep_components.lazy_adam import LazyAdam
    from deep_components.models import lookup
    from deep_components.native_adam import attach_step_rows

    class Tab(nn.Module):
        def __init__(self, sparse):
            super().__init__()
            g = torch.Generator().manual_seed(5)
            self.table = nn.Embedding(2_000, 8, padding_idx=0, sparse=sparse,
                                      _weight=torch.randn(2_000, 8, generator=g))

        def forward(self, a, b):
            return (lookup(self.table, a) ** 2).sum() + lookup(self.table, b).sum()

    gen = torch.Generator().manual_seed(6)
    ref, ours = Tab(sparse=True), Tab(sparse=False)
    a = LazyAdam(ref.parameters(), lr=0.01)
    b = NativeAdam(ours.parameters(), lr=0.01, row_grads=attach_row_grads(ours),
                   step_rows=attach_step_rows(ours))
    for step in range(6):
        ids = torch.randperm(1_999, generator=gen)[:300] + 1
        for opt in (a, b):
            opt.zero_grad(set_to_none=True)
        ref(ids[:200].view(20, 10), ids[200:]).backward()
        ours(ids[:200].view(20, 10), ids[200:]).backward()
        before = ours.table.weight.detach().clone()
        a.step()
        b.step()
        untouched = torch.ones(2_000, dtype=torch.bool)
        untouched[ids] = False
        assert torch.equal(ours.table.weight.detach()[untouched], before[untouched])
    _same(a, list(ref.parameters()), b, list(ours.parameters()))


def test_lazy_runs_train_on_row_gradients(tiny_root, tmp_path, monkeypatch):
    """--emb_optimizer lazy_adam on one CPU process: no sparse gradient; tables from the
    threshold on (here 500 rows) have row gradients, the others dense ones; the native lazy
    step; the run trains."""
    from deep_components import training

    monkeypatch.setattr(native_adam, "MIN_TRACKED_ROWS", 500)
    cfg = RunConfig(setting="two_stage", method="lcron", run_id=3, batch_size=32,
                    data_dir=str(tiny_root), run_dir=str(tmp_path / "lazy"), progress=False,
                    device="cpu", emb_optimizer="lazy_adam", max_steps=3)
    seen = []
    real = training.Trainer.train_step

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        seen.append([type(o).__name__ + ("(lazy)" if getattr(o, "lazy", False) else "")
                     for o in self.optimizers])
        tables = [t for m in self.models for t in m.modules() if isinstance(t, nn.Embedding)]
        assert not any(t.sparse for t in tables)
        big = [t for t in tables if t.weight.shape[0] >= 500]
        assert big and all(t.weight.grad is None and t.row_grad.ids for t in big)
        assert all(t.weight.grad is not None for t in tables if t.weight.shape[0] < 500
                   and t.step_rows.any())
        return out

    import unittest.mock

    with unittest.mock.patch.object(training.Trainer, "train_step", spy):
        run = RunFolder(training.train(cfg))
    assert seen and seen[0].count("NativeAdam(lazy)") == 2
    assert run.summary()["steps"] == 3
