"""Factorization machine (Rendle 2010) over weighted slots.

    score = bias + sum_s w_s lin[i_s] + sum_{s < t} w_s w_t <v[i_s], v[i_t]>

The pairwise sum uses the sum-square identity
``0.5 * (|sum_s w_s v_s|^2 - sum_s w_s^2 |v_s|^2)``, linear in the number of slots. Every
pair counts, including two values of one multi-valued field (an FM has no fields). Slot
ids index one table ``[n_features, k + 1]`` (latent vector plus linear weight), so a batch
is one gather; padding is id 0 with weight 0. The backward pass is written by hand
(``FMFunction``) and gives a dense or a coalesced row-sparse gradient, like ``models.ffm``.
"""

from __future__ import annotations

from typing import Any

import torch

from models.ffm import (
    FactorTable,
    RowSpread,
    choose_sparse,
    compute_dtype,
    gather_rows,
    table_grad,
)


class FMFunction(torch.autograd.Function):
    """Fused FM pairwise + linear term; gradient only for the table."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                sparse: bool, l2: float, spread: RowSpread | None) -> torch.Tensor:
        b, s = ids.shape
        k = table.shape[1] - 1
        rows, flat, uniq, inverse = gather_rows(table, ids, sparse)
        cdt = compute_dtype(table)
        e = rows.view(b, s, k + 1).to(cdt)
        w = weights.to(cdt)
        v = e[:, :, :k]
        total = torch.linalg.vecdot(v.transpose(1, 2), w[:, None, :])  # [B, k]
        w2 = w * w
        self_sq = torch.linalg.vecdot(torch.linalg.vecdot(v, v), w2)
        pair = 0.5 * (torch.linalg.vecdot(total, total) - self_sq)
        lin = torch.linalg.vecdot(e[:, :, k], w)
        ctx.save_for_backward(flat, rows, w, total, uniq, inverse)
        ctx.meta = (table.shape[0], table.dtype, sparse, l2, spread)
        return (pair + lin).to(table.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        flat, rows, w, total, uniq, inverse = ctx.saved_tensors
        n_rows, dtype, sparse, l2, spread = ctx.meta
        b, s = w.shape
        k = total.shape[1]
        gy = grad_out.to(w.dtype)
        gw = w * gy[:, None]  # [B, S]
        v = rows.view(b, s, k + 1)[:, :, :k].to(w.dtype)
        d_rows = torch.empty(b, s, k + 1, dtype=dtype, device=w.device)
        # d/dv_s = gy * (w_s * total - w_s^2 v_s)
        torch.sub(gw[:, :, None] * total[:, None, :], (gw * w)[:, :, None] * v,
                  out=d_rows[:, :, :k])
        d_rows[:, :, k] = gw
        d_rows = d_rows.view(b * s, k + 1)
        if l2:
            d_rows.add_(rows, alpha=2.0 * l2 / b)
        grad = table_grad(flat, d_rows, n_rows, sparse, uniq, inverse, spread, s)
        return grad, None, None, None, None, None


class FM(FactorTable):
    """FM scorer: ``forward(ids [B, S], weights [B, S]) -> logits [B]``.

    ``table[i, :k]`` is feature i's latent vector, ``table[i, k]`` its linear weight; row 0
    is padding and stays zero. ``slot_field`` is accepted for a common constructor with
    ``FFM`` and only recorded.
    """

    kind = "fm"

    def __init__(self, n_features: int, slot_field: Any = None, k: int = 8, *,
                 sparse: bool | None = None, init_std: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        sparse = choose_sparse(sparse, n_features, k + 1)
        self.n_features, self.k, self.sparse, self.init_std = n_features, k, sparse, init_std
        self.slot_field = None if slot_field is None else [int(f) for f in slot_field]
        self._init_table(n_features, k + 1, sparse, init_std, seed)

    def _cross_vectors(self, ids: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor,
                       other_slots: torch.Tensor) -> torch.Tensor:
        """``sum_s w_s v_s`` over the side's slots, as [N, 1, 1, k] (an FM has no fields)."""
        v = self.table[ids][:, :, : self.k]
        return torch.linalg.vecdot(v.transpose(1, 2), weights[:, None, :])[:, None, None, :]

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, l2: float = 0.0,
                spread: RowSpread | None = None) -> torch.Tensor:
        """Logits; ``l2`` and ``spread`` as in ``FFM.forward``."""
        out = FMFunction.apply(self.table, ids.long(), weights.to(self.table.dtype),
                               self.sparse, float(l2), spread)
        return out + self.bias

