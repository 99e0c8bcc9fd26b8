"""The stage towers (docs/methods.md §9): DSSM (two-tower), DIN (target attention), MLP.

Every tower is a :class:`Tower`: it has its own embedding tables and scores all N candidate
slots of a request,
``tower(context [B, 8], history [B, H, 5], history_mask [B, H], items [B, N, 8]) -> [B, N]``.
A new tower is one ``@register_tower("name")`` subclass; a cascade spec names it per stage.

Inputs are the id arrays of :class:`deep_components.data.DayData` (already shifted: 0 is
padding, category_level_one is raw with padding row 2).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .embedding_init import fill_table
from .matmul import linear, tracing

if TYPE_CHECKING:
    from .spec import CascadeSpec
    from .data.vocab import Vocabulary

ID_TABLES = ("user_id", "device_id", "gender", "age", "province", "video_id", "author_id",
             "category_level_two", "upload_type")
CATE1_PAD = 2
TIME_ROWS = {"weekday": 7 + 2, "hour": 24 + 2, "minute": 60 + 2}
MASKED_LOGIT = -(2 ** 30 - 1)


class _Lookup(torch.autograd.Function):
    """``F.embedding`` whose dense table gradient comes from the native scatter-add kernel
    (bit-identical to torch's CPU embedding backward, without its sort; tests/test_kernels.py);
    with a ``row_grad`` (deep_components.native_adam.RowGrad) the gradient is added into it
    instead and the weight gets none from autograd; ``mark`` (uint8 [rows]) gets the rows the
    gradient reaches set to 1."""

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, padding_idx: int | None, row_grad=None,
                mark: Tensor | None = None) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.rows, ctx.padding_idx = weight.shape[0], padding_idx
        ctx.row_grad, ctx.mark = row_grad, mark
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        if ctx.row_grad is not None:
            ctx.row_grad.add(grad, ids, ctx.padding_idx, ctx.mark)
            return None, None, None, None, None
        lib = kernels.native_library()
        return (kernels.embedding_backward(lib, grad, ids, ctx.rows, ctx.padding_idx, ctx.mark),
                None, None, None, None)


def lookup(table: nn.Embedding, ids: Tensor) -> Tensor:
    """``table(ids)``, through :class:`_Lookup` when the native kernel serves this table's
    gradient (a dense CPU table that needs one).  A table's mask of rows (``table.step_rows``
    for lazy Adam, else ``table.touched_rows``) is marked by the backward, and its gradient goes
    to ``table.row_grad``, when the table has them (deep_components.native_adam; set only where
    NativeAdam's native step runs, which also needs the native kernels)."""
    w = table.weight
    if (table.sparse or not (torch.is_grad_enabled() and w.requires_grad) or not kernels.supports(w)
            or table.max_norm is not None or table.scale_grad_by_freq
            or kernels.native_library() is None):
        return table(ids)
    mark = getattr(table, "step_rows", None)
    if mark is None:
        mark = getattr(table, "touched_rows", None)
    return _Lookup.apply(w, ids, table.padding_idx, getattr(table, "row_grad", None), mark)


class FeatureEmbeddings(nn.Module):
    """One model's embedding tables (padding row 0; cate1 padding 2; weekday/hour/minute shared
    between request and upload time).

    Full size (``vocab=None``): ``id_cnt + 2`` rows per field, row = shifted id.  Compact: the
    fields of the vocabulary get ``2 + #ids`` rows (deep_components.data.vocab: 0 padding,
    1 unknown, then the ids in ascending order).  Every row starts from the vector of its key
    (embedding_init: a function of ``seed``, ``stage`` (the tower's position in the cascade),
    the field and the id), so both layouts start, and train, alike.  ``sparse`` makes the tables return sparse gradients (lazy Adam);
    ``init=False`` leaves the tables uninitialised (for loading saved weights).
    """

    def __init__(self, id_counts: Mapping[str, int], dim: int = 8, *, vocab=None, seed: int = 0,
                 stage: int = 0, sparse: bool = False, init: bool = True):
        super().__init__()
        self.dim = dim
        rows = {f: int(id_counts[f]) + 2 for f in ID_TABLES}
        rows["category_level_one"] = int(id_counts["category_level_one"]) + 2
        rows.update(TIME_ROWS)
        if vocab is not None:
            rows.update(vocab.table_rows())
        pads = {f: (CATE1_PAD if f == "category_level_one" else 0) for f in rows}
        # torch.empty + explicit fill: building a table consumes nothing from torch's RNG
        self.tables = nn.ModuleDict({
            f: nn.Embedding(n, dim, padding_idx=pads[f], sparse=sparse,
                            _weight=torch.empty(n, dim)) for f, n in rows.items()})
        if init and not self.tables["video_id"].weight.is_meta:
            for f, table in self.tables.items():
                keys = vocab.row_keys(f) if vocab is not None and f in vocab.ids else None
                fill_table(table.weight, seed, stage, f, keys, pads[f])

    def _cat(self, x: Tensor, names: tuple[str, ...]) -> Tensor:
        return torch.cat([lookup(self.tables[n], x[..., j]) for j, n in enumerate(names)], dim=-1)

    def context(self, context: Tensor) -> Tensor:
        """[B, 8] -> [B, 64]: weekday, hour, minute, user, device, gender, age, province."""
        return self._cat(context, ("weekday", "hour", "minute", "user_id", "device_id", "gender",
                                   "age", "province"))

    def item(self, ids: Tensor) -> Tensor:
        """[..., >=5] -> [..., 40]: ψ = video, author, cate2, cate1, upload_type."""
        return self._cat(ids[..., :5], ("video_id", "author_id", "category_level_two",
                                        "category_level_one", "upload_type"))

    def upload_time(self, items: Tensor) -> Tensor:
        """[B, N, 8] -> [B, N, 24]: upload weekday, hour, minute."""
        return self._cat(items[..., 5:8], ("weekday", "hour", "minute"))


class RowMLP(nn.Sequential):
    """An ``nn.Sequential`` of Linear and ReLU layers applied to rows: [..., in] -> [..., out].

    The leading dimensions are flattened first, so every Linear's output is a tensor of its own
    and the in-place ReLU after it stays in place in autograd too.  (A Linear over a 3-D input
    returns a view of its 2-D product; an in-place op on a view makes autograd copy the whole
    activation and build a zero-filled one in backward — on a [1024 x 50, 128] activation,
    three 26 MB passes per layer and step.)  An input that is itself a view (the first ReLU
    of :func:`shared_input_mlp`'s split path) gets an out-of-place ReLU.  Values are those of
    ``nn.Sequential``: the same 2-D products in the same order.
    """

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = x.reshape(-1, x.shape[-1])
        for layer in self:
            if isinstance(layer, nn.Linear):
                y = linear(y, layer.weight, layer.bias)
            elif isinstance(layer, nn.ReLU) and y._is_view():
                y = F.relu(y)
            else:
                y = layer(y)
        return y.view(*lead, y.shape[-1])


def mlp(sizes: list[int], final_activation: bool = False) -> RowMLP:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.ReLU(inplace=True))  # after a Linear: its output is not needed again
    return RowMLP(*layers)


def shared_input_mlp(net: nn.Sequential, shared: Tensor, per_item: Tensor,
                     split: bool | None = None) -> Tensor:
    """``net(cat([shared broadcast over N, per_item], -1))``: shared [B, S], per_item [B, N, K]
    -> [B, N, out].

    ``split`` (None: on the CPU only, where it is measured faster) skips the concatenation: the
    first Linear's shared half runs once per request and is broadcast-added to its per-item half
    — the same value up to float rounding order, without the [B, N, S] copy and its share of the
    product and its gradient.  False builds the concatenation, as the reference does.
    """
    if per_item.device.type == "cpu" if split is None else split:
        first = net[0]
        S = shared.shape[-1]
        y = linear(per_item, first.weight[:, S:]) + linear(shared, first.weight[:, :S],
                                                           first.bias).unsqueeze(1)
        return net[1:](y)
    return net(torch.cat([shared.unsqueeze(1).expand(-1, per_item.shape[1], -1), per_item], dim=-1))


def user_input(emb: FeatureEmbeddings, context: Tensor, history: Tensor,
               history_mask: Tensor) -> Tensor:
    """DSSM/MLP user input [B, 104]: context (64) ⊕ mean history ψ (40).

    The mean sums all H rows (padded ones too: they contribute e_cate1[0]) and divides by
    max(#valid, 1), as the reference does (methods.md §9.3).
    """
    seq_len = history_mask.sum(-1, keepdim=True).clamp(min=1).to(torch.float32)
    mean_hist = emb.item(history).sum(1) / seq_len
    return torch.cat([emb.context(context), mean_hist], dim=-1)


class Tower(nn.Module):
    """The interface of a stage model.

    ``__init__(id_counts, dim, units, **emb)``: ``emb`` goes to :class:`FeatureEmbeddings`
    (vocab, seed, stage, sparse, init), so every tower gets compact tables, seeded rows and
    sparse gradients the same way.  ``forward(context [B, 8] int, history [B, H, 5] int,
    history_mask [B, H] bool, items [B, N, 8] int) -> scores [B, N] float`` (higher = keep;
    padded slots are scored like any other, the losses and metrics mask them)."""

    def __init__(self, id_counts: Mapping[str, int], dim: int = 8, units: int = 128, **emb):
        super().__init__()
        self.emb = FeatureEmbeddings(id_counts, dim, **emb)

    def forward(self, context: Tensor, history: Tensor, history_mask: Tensor,
                items: Tensor) -> Tensor:
        raise NotImplementedError


TOWERS: dict[str, type[Tower]] = {}


def register_tower(name: str):
    """Class decorator: make a :class:`Tower` selectable by name in a cascade spec."""
    def deco(cls: type[Tower]) -> type[Tower]:
        if name in TOWERS:
            raise ValueError(f"tower {name!r} registered twice")
        if not issubclass(cls, Tower):
            raise TypeError(f"tower {name!r}: {cls.__name__} must subclass models.Tower")
        TOWERS[name] = cls
        return cls
    return deco


@register_tower("dssm")
class DSSM(Tower):
    """Two towers and an inner product (retrieval): ``user_vectors`` · ``item_vectors``, the
    split that serving over a catalogue uses (deep_components.serve)."""

    def __init__(self, id_counts: Mapping[str, int], dim: int = 8, units: int = 128, **emb):
        super().__init__(id_counts, dim, units, **emb)
        self.user_tower = mlp([13 * dim, units, 64, 32])
        self.item_tower = mlp([8 * dim, units, 64, 32])

    def user_vectors(self, context: Tensor, history: Tensor, history_mask: Tensor) -> Tensor:
        """context [B, 8], history [B, H, 5], history_mask [B, H] -> [B, 32]."""
        return self.user_tower(user_input(self.emb, context, history, history_mask))

    def item_vectors(self, items: Tensor) -> Tensor:
        """items [..., 8] -> [..., 32]; the score of a pair is the inner product of the two."""
        return self.item_tower(torch.cat([self.emb.item(items), self.emb.upload_time(items)], dim=-1))

    def forward(self, context: Tensor, history: Tensor, history_mask: Tensor,
                items: Tensor) -> Tensor:
        u = self.user_vectors(context, history, history_mask)                           # [B, 32]
        return torch.einsum("bd,bnd->bn", u, self.item_vectors(items))                   # [B, N]


@register_tower("mlp")
class MLP(Tower):
    """One tower over user input and item features (three-stage prerank).

    ``split_input`` is :func:`shared_input_mlp`'s ``split`` (None: split on the CPU only)."""

    split_input: bool | None = None

    def __init__(self, id_counts: Mapping[str, int], dim: int = 8, units: int = 128, **emb):
        super().__init__(id_counts, dim, units, **emb)
        self.net = mlp([21 * dim, units, 64, 32, 1])

    def forward(self, context: Tensor, history: Tensor, history_mask: Tensor,
                items: Tensor) -> Tensor:
        u = user_input(self.emb, context, history, history_mask)                       # [B, 104]
        x = torch.cat([self.emb.item(items), self.emb.upload_time(items)], dim=-1)       # [B, N, 64]
        return shared_input_mlp(self.net, u, x, self.split_input).squeeze(-1)


class _PairAttention(torch.autograd.Function):
    """``a[b, n, r] = relu(q[b, n] + h[b, r]) · w`` for the valid (suffix) history rows only.

    q [B, N, D] candidate half, h [B, H, D] history half, w [D], lengths [B] valid rows per
    request (histories are left-padded, so the valid rows are the last ``lengths[b]``).  Entries
    of padded rows are 0 here; the caller overwrites them with the masked logit, so they carry
    no gradient.  The [B, N, H, D] hidden layer is never stored: backward recomputes it.  Exact:
    same values and gradients as the dense form.  Always float32 (or float64): the caller casts
    its inputs, and autocast is off inside.

    Three paths: on the CPU, the native kernel (deep_components.kernels) in one pass per request
    without hidden-layer temporaries; its PyTorch fallback processes requests in chunks of
    similar length (sorted on the host), each chunk scoring only its longest valid suffix; on
    CUDA, contiguous slices of requests over all H rows (padded rows zeroed by a mask), so no
    index ever goes through the host: the loop count is fixed by the shapes.
    """

    #: CUDA: hidden activations per slice (elements), about 256 MB in float32
    DEVICE_SLICE_ELEMENTS = 1 << 26
    #: take the CUDA path on the CPU too (the tests check its values against the others there)
    slices_on_cpu = False

    @staticmethod
    def _chunks(lengths: Tensor, chunk: int, H: int):
        order = torch.argsort(lengths.cpu())
        lens = lengths.cpu()[order]
        for a in range(0, order.numel(), chunk):
            L = int(lens[a:a + chunk].max())
            yield order[a:a + chunk].to(lengths.device), H - L

    @staticmethod
    def _slices(q: Tensor, h: Tensor):
        B, N, D = q.shape
        step = max(1, _PairAttention.DEVICE_SLICE_ELEMENTS // max(1, N * h.shape[1] * D))
        return [slice(a, min(a + step, B)) for a in range(0, B, step)]

    @staticmethod
    def forward(ctx, q: Tensor, h: Tensor, w: Tensor, lengths: Tensor, chunk: int) -> Tensor:
        ctx.save_for_backward(q, h, w, lengths)
        ctx.chunk = chunk
        lib = kernels.native_library() if kernels.supports(q) else None
        ctx.native = lib is not None
        if lib is not None:
            return kernels.pair_attention_forward(lib, q, h, w, lengths)
        B, N, _ = q.shape
        H = h.shape[1]
        with torch.autocast(q.device.type, enabled=False):
            if q.device.type != "cpu" or _PairAttention.slices_on_cpu:
                valid = (torch.arange(H, device=q.device) >= H - lengths[:, None])     # [B, H]
                out = torch.empty(B, N, H, dtype=q.dtype, device=q.device)
                for sl in _PairAttention._slices(q, h):
                    hidden = (q[sl].unsqueeze(2) + h[sl].unsqueeze(1)).relu_()      # [b, N, H, D]
                    out[sl] = (hidden @ w) * valid[sl].unsqueeze(1)
                return out
            out = q.new_zeros(B, N, H)
            for idx, r0 in _PairAttention._chunks(lengths, chunk, H):
                hidden = (q[idx].unsqueeze(2) + h[idx, r0:].unsqueeze(1)).relu_()  # [c, N, L, D]
                out[idx, :, r0:] = hidden @ w
            return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, h, w, lengths = ctx.saved_tensors
        if ctx.native:
            gq, gh, gw = kernels.pair_attention_backward(kernels.native_library(), q, h, w,
                                                         lengths, grad)
            return gq, gh, gw, None, None
        grad = grad.to(q.dtype)
        gq, gh, gw = torch.zeros_like(q), torch.zeros_like(h), torch.zeros_like(w)
        H = h.shape[1]
        with torch.autocast(q.device.type, enabled=False):
            if q.device.type != "cpu" or _PairAttention.slices_on_cpu:
                valid = (torch.arange(H, device=q.device) >= H - lengths[:, None])     # [B, H]
                for sl in _PairAttention._slices(q, h):
                    pre = q[sl].unsqueeze(2) + h[sl].unsqueeze(1)                    # [b, N, H, D]
                    g = grad[sl] * valid[sl].unsqueeze(1)                            # [b, N, H]
                    gw += pre.relu().flatten(0, 2).T @ g.reshape(-1)
                    gpre = (pre > 0) * (g.unsqueeze(-1) * w)
                    gq[sl] = gpre.sum(2)
                    gh[sl] = gpre.sum(1)
                return gq, gh, gw, None, None
            for idx, r0 in _PairAttention._chunks(lengths, ctx.chunk, H):
                pre = q[idx].unsqueeze(2) + h[idx, r0:].unsqueeze(1)                 # [c, N, L, D]
                g = grad[idx, :, r0:]                                                  # [c, N, L]
                gw += pre.relu().flatten(0, 2).T @ g.reshape(-1)
                gpre = (pre > 0) * (g.unsqueeze(-1) * w)
                gq[idx] = gpre.sum(2)
                gh[idx, r0:] = gpre.sum(1)
        return gq, gh, gw, None, None


@register_tower("din")
class DIN(Tower):
    """Target attention over the history (two-stage prerank, three-stage rank).

    ``split_attention=True`` computes the attention MLP's first layer as a history half (once
    per request) plus a candidate half (once per candidate) and broadcast-adds them: the same
    output as the concatenated form, without the [B, N, H, 80] x [80, 80] product; the ReLU and
    the second layer run in cache-sized chunks over valid history rows only (``_PairAttention``).
    The output MLP's context half runs once per request (``split_input``, :func:`shared_input_mlp`).
    """

    #: :func:`shared_input_mlp`'s ``split`` for the output MLP (None: split on the CPU only)
    split_input: bool | None = None
    #: requests per chunk of the attention kernel (about 5 MB of hidden activations at N = 40)
    chunk = 8

    def __init__(self, id_counts: Mapping[str, int], dim: int = 8, units: int = 128,
                 split_attention: bool = True, **emb):
        super().__init__(id_counts, dim, units, **emb)
        d_item = 5 * dim
        self.att1 = nn.Linear(2 * d_item, 2 * d_item)
        self.att2 = nn.Linear(2 * d_item, 1)
        self.net = mlp([21 * dim, units, units, 32, 1])
        self.split_attention = split_attention

    def attention_logits(self, hist: Tensor, query: Tensor, history_mask: Tensor) -> Tensor:
        """hist [B, H, 40], query [B, N, 40] -> a [B, N, H] (valid history rows)."""
        d = hist.shape[-1]
        if self.split_attention:
            w = self.att1.weight                                                         # [80, 80]
            h_part = linear(hist, w[:, :d])                                              # [B, H, 80]
            q_part = linear(query, w[:, d:], self.att1.bias)                             # [B, N, 80]
            if tracing():            # ONNX / TorchScript: plain operators, all H rows
                hidden = (q_part.unsqueeze(2) + h_part.unsqueeze(1)).relu()         # [B, N, H, 80]
                return hidden @ self.att2.weight.squeeze(0) + self.att2.bias
            lengths = history_mask.sum(-1).clamp(min=1)
            dt = torch.promote_types(self.att2.weight.dtype, torch.float32)   # fp32 under autocast
            a = _PairAttention.apply(q_part.to(dt), h_part.to(dt), self.att2.weight.squeeze(0).to(dt),
                                     lengths, self.chunk)
            return a + self.att2.bias
        else:
            B, H, N = hist.shape[0], hist.shape[1], query.shape[1]
            pair = torch.cat([hist.unsqueeze(1).expand(B, N, H, d),
                              query.unsqueeze(2).expand(B, N, H, d)], dim=-1)
            hidden = torch.relu(self.att1(pair))
        return (hidden @ self.att2.weight.squeeze(0)) + self.att2.bias                   # [B, N, H]

    def forward(self, context: Tensor, history: Tensor, history_mask: Tensor,
                items: Tensor) -> Tensor:
        hist = self.emb.item(history)                                                    # [B, H, 40]
        query = self.emb.item(items)                                                     # [B, N, 40]
        a = self.attention_logits(hist, query, history_mask)
        a = a.to(torch.promote_types(a.dtype, torch.float32))            # MASKED_LOGIT fits
        a = a.masked_fill(~history_mask.unsqueeze(1), MASKED_LOGIT)
        interest = torch.softmax(a, dim=-1).to(hist.dtype) @ hist                        # [B, N, 40]
        ctx = self.emb.context(context)                                                  # [B, 64]
        x = torch.cat([interest, query, self.emb.upload_time(items)], dim=-1)            # [B, N, 104]
        return shared_input_mlp(self.net, ctx, x, self.split_input).squeeze(-1)


def build_tower(name: str, id_counts: Mapping[str, int], dim: int = 8, units: int = 128,
                **emb) -> Tower:
    """A tower by name; ``emb`` goes to :class:`FeatureEmbeddings` (vocab, seed, stage, sparse,
    init)."""
    try:
        cls = TOWERS[name]
    except KeyError:
        raise ValueError(f"unknown tower {name!r}; valid: {sorted(TOWERS)}") from None
    return cls(id_counts, dim, units, **emb)


def build_models(spec: CascadeSpec, id_counts: Mapping[str, int], emb_dim: int = 8, *,
                 vocab: Vocabulary | None = None, seed: int = 0, sparse: bool = False,
                 init: bool = True) -> list[Tower]:
    """One tower per stage, in cascade order.  Tables are compact when ``vocab`` is given;
    embedding rows start from (seed, stage position, field, id) (embedding_init)."""
    return [build_tower(st.tower, id_counts, emb_dim, vocab=vocab, seed=seed, stage=t,
                        sparse=sparse, init=init) for t, st in enumerate(spec.stages)]


def forward_all(models: list[nn.Module], b: Mapping[str, Tensor]) -> list[Tensor]:
    """Every stage's scores of a batch (a dict of context, history, history_mask, items):
    T tensors [B, N], cascade order."""
    return [m(b["context"], b["history"], b["history_mask"], b["items"]) for m in models]
