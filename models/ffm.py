"""Field-aware factorization machine (Juan et al. 2016) over weighted field slots.

Input per sample: ``ids[s]`` (global feature id, 0 = padding) and ``weights[s]`` for each
slot ``s``; a fixed ``slot_field`` maps slots to fields (a multi-valued field owns several
slots, its weights summing to one). The score is

    bias + sum_s w_s lin[i_s]
         + sum over slot pairs s < t with field(s) != field(t) of
           w_s w_t <V[i_s, field(t)], V[i_t, field(s)]>

Pairs inside one field (two genres of one movie) are left out: they would only add a
constant per entity, which the entity's own linear weight already holds.

Computation, with no loop over field pairs or samples: one gather of the rows
``[B, S, F*k + 1]`` (latent vectors for every target field plus the linear weight), a
per-field weighted sum ``A[b, g, h] = sum_{s in g} w_s V[i_s, h]`` (``[B, F, F, k]``; no
copy when every field has one slot), one gather of each slot's partner blocks
``A[h, field(s)]`` and one dot product (see ``FFMFunction``); no ``[B, F, F, k]`` pair
product is formed. The backward pass is written by hand: it reuses the partner blocks,
so a training step is about a dozen tensor operations whatever the number of fields. The
table gradient is dense or (``sparse``) a coalesced sparse tensor of only the rows the
batch touched, for the row-sparse optimisers in ``models.optimizers``; dense was faster
on ML-100K's small table, so ``sparse=None`` picks by table size (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """bf16 (or whatever autocast asks) inside a CUDA autocast region, else the tensor's."""
    if t.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return t.dtype


@dataclass(frozen=True, eq=False)
class RowSpread:
    """Copies of a table's busiest rows for summing a batch's dense gradient.

    ``index_add_`` on CUDA adds every gathered row's gradient atomically into its table
    row, and atomic adds to one address run one after another: in a batch of 65,536
    synthetic CTR samples the padding row is gathered 68k times, a six-valued field's
    busiest row 62k and a two-valued field's 33k (14 slots a sample). Here each row gets
    ``count`` copies, enough that a batch adds about ``per_address`` gradients into each,
    a gathered row goes to copy ``sample % count`` of its row, and the copies are then
    added into the rows. Shapes are fixed by the plan, so a captured step
    (``models.fm_trainer``) replays it. On an H200 this took an FM epoch from 15.8 to
    12.6 ms (benchmarks/RESULTS.md "cuda")."""

    start: torch.Tensor  # [n_rows] each row's first copy
    count: torch.Tensor  # [n_rows] each row's copies (at least one)
    owner: torch.Tensor  # [copies] the row of each copy

    @classmethod
    def plan(cls, ids: torch.Tensor, n_rows: int, batch: int, per_address: int = 32
             ) -> RowSpread | None:
        """The copies for batches of ``batch`` samples drawn from ``ids`` [N, S] (each
        row's expected gathers a batch from its count in ``ids``); None when no row
        expects more than ``per_address`` a batch."""
        hits = torch.bincount(ids.reshape(-1), minlength=n_rows).double()
        share = min(batch, len(ids)) / max(len(ids), 1)  # of all samples, in one batch
        count = (hits * share / per_address).ceil_().clamp_(min=1).long()
        if int(count.max()) <= 1:
            return None
        owner = torch.repeat_interleave(torch.arange(n_rows, device=ids.device), count)
        return cls(torch.cumsum(count, 0) - count, count, owner)

    def to(self, device: torch.device) -> RowSpread:
        return RowSpread(self.start.to(device), self.count.to(device), self.owner.to(device))

    def sum_rows(self, flat: torch.Tensor, d_rows: torch.Tensor, n_rows: int, slots: int
                 ) -> torch.Tensor:
        """``zeros(n_rows).index_add_(0, flat, d_rows)``, summed through the copies;
        ``flat`` is a batch's [B, slots] ids flattened."""
        copy = torch.arange(len(flat), device=flat.device).floor_divide_(slots)
        copy.remainder_(self.count[flat]).add_(self.start[flat])
        width = d_rows.shape[1]
        spread = torch.zeros(len(self.owner), width, dtype=d_rows.dtype, device=d_rows.device)
        spread.index_add_(0, copy, d_rows)
        out = torch.zeros(n_rows, width, dtype=d_rows.dtype, device=d_rows.device)
        return out.index_add_(0, self.owner, spread)


def table_grad(flat: torch.Tensor, d_rows: torch.Tensor, n_rows: int, sparse: bool,
               uniq: torch.Tensor | None, inverse: torch.Tensor | None,
               spread: RowSpread | None = None, slots: int = 1) -> torch.Tensor:
    """Gradient of a table gathered at ``flat`` whose gathered rows received ``d_rows``
    (a dense one through ``spread``'s copies when given; ``slots``: ids per sample)."""
    if not sparse:
        if spread is not None:
            return spread.sum_rows(flat, d_rows, n_rows, slots)
        out = torch.zeros(n_rows, d_rows.shape[1], dtype=d_rows.dtype, device=d_rows.device)
        return out.index_add_(0, flat, d_rows)
    assert uniq is not None and inverse is not None
    values = torch.zeros(len(uniq), d_rows.shape[1], dtype=d_rows.dtype, device=d_rows.device)
    values.index_add_(0, inverse, d_rows)
    return torch.sparse_coo_tensor(uniq[None], values, (n_rows, d_rows.shape[1]),
                                   is_coalesced=True, check_invariants=False)


SPARSE_MIN_CELLS = 1 << 20  # tables at least this big (floats) get sparse gradients by default


def choose_sparse(sparse: bool | None, n_rows: int, width: int) -> bool:
    """``None`` = auto: row-sparse gradients only for big tables. On the ML-100K table
    (2.7K rows) a dense gradient and dense Adagrad step were faster than the sort that
    sparse rows need; the sparse path wins once the table dwarfs a batch's rows."""
    return n_rows * width >= SPARSE_MIN_CELLS if sparse is None else bool(sparse)


def gather_rows(table: torch.Tensor, ids: torch.Tensor, sparse: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Rows of ``table`` at ``ids`` ([B*S, D]), the flat ids and, for sparse, their uniques."""
    flat = ids.reshape(-1)
    if sparse:
        uniq, inverse = torch.unique(flat, sorted=True, return_inverse=True)
        return table.index_select(0, flat), flat, uniq, inverse
    return table.index_select(0, flat), flat, None, None


def gather_blocks(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for the rows of a contiguous 2-D tensor, rows moved as single wide
    elements where their byte size allows (a 4-float row as one complex128): copying
    many 16-byte rows this way took half the time of a float32 ``index_select`` here."""
    n, width = x.shape
    nbytes = width * x.element_size()
    for wide in (torch.complex128, torch.float64, torch.float32):
        size = torch.empty((), dtype=wide).element_size()
        if nbytes % size == 0 and size >= x.element_size():
            per_row = nbytes // size
            flat = x.view(wide) if per_row > 1 else x.view(wide).view(-1)
            out = flat.index_select(0, index)
            return out.view(x.dtype).view(len(index), width)
    return x.index_select(0, index)


def partner_index(slot_field: torch.Tensor, n_fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For slot s and target field h, the block ``h * F + field(s)`` of one sample's
    ``A`` (``A[h, field(s)]``), and the positions ``s * F + field(s)`` (same field: none)."""
    s = len(slot_field)
    h = torch.arange(n_fields)
    partner = (h[None, :] * n_fields + slot_field[:, None].cpu()).reshape(-1)
    same = torch.arange(s) * n_fields + slot_field.cpu()
    return partner.to(slot_field.device), same.to(slot_field.device)


class FFMFunction(torch.autograd.Function):
    """Fused FFM pairwise + linear term; gradient only for the table.

    With ``A[b, g, h] = sum_{s in g} w_s V[i_s, h]``, slot s's partner block towards
    field h is ``P[s, h] = A[h, field(s)]`` (zero when h = field(s)), so
    ``pair = 0.5 * sum_s w_s <V[i_s, :], P[s, :]>`` and ``d pair / d V[i_s, h] = w_s P[s, h]``:
    one gather of partner blocks serves the forward and the backward pass.
    """

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                slot_field: torch.Tensor, partner: torch.Tensor, same: torch.Tensor,
                n_fields: int, k: int, sparse: bool, l2: float, spread: RowSpread | None
                ) -> torch.Tensor:
        b, s = ids.shape
        fk = n_fields * k
        rows, flat, uniq, inverse = gather_rows(table, ids, sparse)
        cdt = compute_dtype(table)
        e = rows.view(b, s, fk + 1).to(cdt)
        w = weights.to(cdt)
        ew = e[:, :, :fk] * w[:, :, None]  # [B, S, F*k], contiguous
        if s == n_fields:  # one slot per field: the slots are the fields (encoder order)
            a = ew
        else:
            a = torch.zeros(b, n_fields, fk, dtype=cdt, device=e.device)
            a.index_add_(1, slot_field, ew)
        base = torch.arange(b, device=e.device)[:, None] * (n_fields * n_fields)
        p = gather_blocks(a.view(b * n_fields * n_fields, k), (base + partner).view(-1))
        p = p.view(b, s * n_fields, k).index_fill_(1, same, 0).view(b, s, fk)
        pair = torch.linalg.vecdot(ew.view(b, -1), p.view(b, -1)).to(table.dtype)
        lin = torch.linalg.vecdot(e[:, :, fk], w).to(table.dtype)
        ctx.save_for_backward(flat, rows if l2 else None, w, p, uniq, inverse)
        ctx.meta = (table.shape[0], table.dtype, sparse, l2, spread)
        return 0.5 * pair + lin

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        flat, rows, w, p, uniq, inverse = ctx.saved_tensors
        n_rows, dtype, sparse, l2, spread = ctx.meta
        b, s, fk = p.shape
        wg = w * grad_out.to(w.dtype)[:, None]  # [B, S]
        d_rows = torch.empty(b, s, fk + 1, dtype=dtype, device=p.device)
        torch.mul(p, wg[:, :, None], out=d_rows[:, :, :fk])
        d_rows[:, :, fk] = wg
        d_rows = d_rows.view(b * s, fk + 1)
        if l2:
            d_rows.add_(rows, alpha=2.0 * l2 / b)
        grad = table_grad(flat, d_rows, n_rows, sparse, uniq, inverse, spread, s)
        return grad, None, None, None, None, None, None, None, None, None, None


class FactorTable(nn.Module):
    """What FM and FFM share: one table of feature rows (latent part, then the linear
    weight; row 0 is padding and stays zero) and a global bias. An Embedding holds the
    table so DistributedDataParallel knows to expect sparse gradients for it (it looks
    for Embedding modules with sparse=True)."""

    kind: str

    def _init_table(self, n_features: int, width: int, sparse: bool, init_std: float,
                    seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        table = torch.randn(n_features, width, generator=gen) * init_std
        table[:, -1] = 0.0
        table[0] = 0.0
        self.rows = nn.Embedding(n_features, width, sparse=sparse, _weight=table)
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def table(self) -> nn.Parameter:
        return self.rows.weight

    def side_terms(self, ids: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor,
                   other_slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One side of a pair (e.g. the user's slots ``slots`` of a full row whose other
        slots are ``other_slots``): its terms with no partner from the other side (its
        linear and within-side pairwise terms, bias left out) [N], and cross vectors
        [N, own fields, other fields, k] such that a pair's logit is ``bias + c_a + c_b +
        <X_a, X_b transposed in its two field axes>``. Each user and item is then worked
        out once, not once per candidate."""
        n = len(ids)
        full_ids = torch.zeros(n, len(slots) + len(other_slots), dtype=torch.long,
                               device=ids.device)
        full_w = torch.zeros(full_ids.shape, dtype=self.table.dtype, device=ids.device)
        full_ids[:, slots], full_w[:, slots] = ids.long(), weights.to(self.table.dtype)
        alone = self(full_ids, full_w) - self.bias
        return alone, self._cross_vectors(ids.long(), weights.to(self.table.dtype), slots,
                                          other_slots)

    def _cross_vectors(self, ids: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor,
                       other_slots: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor arguments, enough for ``build_model`` to make the same model."""
        slots = self.slot_field
        return {"kind": self.kind, "n_features": self.n_features, "k": self.k,
                "slot_field": None if slots is None else [int(f) for f in slots],
                "sparse": self.sparse, "init_std": self.init_std}


class FFM(FactorTable):
    """FFM scorer: ``forward(ids [B, S], weights [B, S]) -> logits [B]``.

    ``table[i, h*k:(h+1)*k]`` is feature i's latent vector towards field h and
    ``table[i, F*k]`` its linear weight; row 0 is padding and stays zero.
    """

    kind = "ffm"

    def __init__(self, n_features: int, slot_field: Sequence[int] | np.ndarray, k: int = 4,
                 *, sparse: bool | None = None, init_std: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        sf = np.asarray(slot_field, dtype=np.int64)
        n_fields = int(sf.max()) + 1
        if sorted(set(sf.tolist())) != list(range(n_fields)) or np.any(np.diff(sf) < 0):
            raise ValueError(f"slot_field must list fields 0..F-1 in order, got {sf.tolist()}")
        sparse = choose_sparse(sparse, n_features, n_fields * k + 1)
        self.n_features, self.k, self.n_fields, self.sparse = n_features, k, n_fields, sparse
        self.init_std = init_std
        self._init_table(n_features, n_fields * k + 1, sparse, init_std, seed)
        self.register_buffer("slot_field", torch.from_numpy(sf))
        partner, same = partner_index(self.slot_field, n_fields)
        self.register_buffer("partner", partner, persistent=False)
        self.register_buffer("same", same, persistent=False)

    def _cross_vectors(self, ids: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor,
                       other_slots: torch.Tensor) -> torch.Tensor:
        """``X[n, a, b] = sum of w_s V[i_s, towards b]`` over the slots s of own field a."""
        own = self.slot_field[slots]
        own_fields, own_pos = torch.unique(own, sorted=True, return_inverse=True)
        other = torch.unique(self.slot_field[other_slots], sorted=True)
        n, k = len(ids), self.k
        latent = self.table[ids][:, :, : self.n_fields * k].view(n, len(slots), self.n_fields, k)
        weighted = latent[:, :, other, :] * weights[:, :, None, None]
        out = torch.zeros(n, len(own_fields), len(other), k, dtype=weighted.dtype,
                          device=weighted.device)
        return out.index_add_(1, own_pos, weighted)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, l2: float = 0.0,
                spread: RowSpread | None = None) -> torch.Tensor:
        """Logits; ``l2`` adds ``l2 * sum of squares of each sample's gathered rows`` (mean
        over the batch) to the gradient only, as libffm's lazy per-sample L2 does;
        ``spread`` sums a dense table's gradient through copies of its busiest rows."""
        ids = ids.long()
        out = FFMFunction.apply(self.table, ids, weights.to(self.table.dtype), self.slot_field,
                                self.partner, self.same, self.n_fields, self.k, self.sparse,
                                float(l2), spread)
        return out + self.bias

