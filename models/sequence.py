"""A next-item model over each user's ordered recent items, and its trainer.

SASRec-style: item embedding (code 0 is padding, item code c is token c + 1) plus a
learned positional embedding, ``blocks`` causal self-attention blocks, and output logits
``hidden @ item_embedding.T`` over the whole catalogue (tied weights). Trained with
cross-entropy at every real position against the next item, over the whole catalogue or
a sampled share of it.

Positions are counted from the right end of the sequence (the latest item is position
0), as in SASRec's left-padded fixed-length input, so the amount of left padding never
changes the output at a real position, and a batch can be trimmed to its longest row.
A position attends to itself and to earlier real items only (causal and key-padding
mask); padded positions are zeroed after every block.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from models.early_stopping import EarlyStopping

log = logging.getLogger("pipeline")

PAD = 0


class BitsDropout(nn.Module):
    """``nn.Dropout`` whose CPU mask comes from 15 random bits per element.

    torch's CPU dropout draws a float Bernoulli per element: 4.7 ms for a 128 x 50 x 64
    batch here, against 1.0 ms for this (random 64-bit words split into four 15-bit
    lanes), about 6 of the synthetic default's 30 s of sequence training. The drop
    probability is rounded to 1/32768; on a GPU, torch's fused kernel is used.
    """

    LANES = 32768

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * self.LANES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.threshold:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()
        # random_() fills each int64 word with 63 random bits (its top bit is 0), so each
        # 16-bit lane keeps its low 15 bits
        lanes = words.view(torch.int16)[:n].view(x.shape) & (self.LANES - 1)
        keep = lanes >= self.threshold
        return x * keep * (self.LANES / (self.LANES - self.threshold))


class CausalBlock(nn.Module):
    """Self-attention then a position-wise feed-forward, each with a residual."""

    def __init__(self, d: int, heads: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d={d} must be divisible by heads={heads}")
        self.heads, self.dropout, self.norm_first = heads, dropout, norm_first
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.GELU(), BitsDropout(dropout),
                                nn.Linear(d, d))
        self.norm_attn, self.norm_ff = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = BitsDropout(dropout)

    def attend(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop(self.attend(self.norm_attn(x), allowed))
            return x + self.drop(self.ff(self.norm_ff(x)))
        x = self.norm_attn(x + self.drop(self.attend(x, allowed)))
        return self.norm_ff(x + self.drop(self.ff(x)))


class SASRec(nn.Module):
    """Hidden states (batch x length x d) for left-padded token sequences."""

    def __init__(self, n_items: int, d: int = 64, blocks: int = 2, heads: int = 1,
                 max_len: int = 50, dropout: float = 0.2, norm_first: bool = True,
                 sparse: bool = False) -> None:
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        # sparse: the item table's gradient holds the rows a batch used, for SparseAdam
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=PAD, sparse=sparse)
        self.pos_emb = nn.Embedding(max_len, d)
        self.drop = BitsDropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(d, heads, dropout, norm_first)
                                    for _ in range(blocks))
        self.norm = nn.LayerNorm(d) if norm_first else nn.Identity()
        nn.init.normal_(self.item_emb.weight, std=d ** -0.5)
        nn.init.normal_(self.pos_emb.weight, std=d ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len={self.max_len}")
        real = tokens != PAD
        positions = torch.arange(n - 1, -1, -1, device=tokens.device)  # latest item: 0
        x = self.item_emb(tokens) * math.sqrt(self.item_emb.embedding_dim)
        x = self.drop(x + self.pos_emb(positions)) * real.unsqueeze(-1)
        causal = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril()
        # a padded query attends to itself only, so no softmax row is empty
        allowed = causal & (real.unsqueeze(1) | torch.eye(n, dtype=torch.bool,
                                                          device=tokens.device))
        allowed = allowed.unsqueeze(1)  # batch x 1 (heads) x query x key
        for block in self.blocks:
            x = block(x, allowed) * real.unsqueeze(-1)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over item codes 0..n_items-1 (the padding row is left out)."""
        return hidden @ self.item_emb.weight[1:].T


def user_bounds(log_users: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end rows of each user in a log sorted by user."""
    return (np.searchsorted(log_users, users, side="left"),
            np.searchsorted(log_users, users, side="right"))


def last_tokens(log: pd.DataFrame, users: np.ndarray, max_len: int) -> np.ndarray:
    """Each user's latest ``max_len`` items as tokens (item + 1), left-padded with 0.

    ``log`` is sorted by user and time (``RecallData.log``); a user absent from it gets
    an all-pad row.
    """
    log_users = log["user"].to_numpy()
    starts, ends = user_bounds(log_users, np.asarray(users))
    lengths = np.minimum(ends - starts, max_len)
    rows = np.repeat(np.arange(len(users)), lengths)
    from_end = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    src = np.repeat(ends, lengths) - 1 - from_end
    out = np.zeros((len(users), max_len), np.int64)
    out[rows, max_len - 1 - from_end] = log["item"].to_numpy()[src] + 1
    return out


def training_windows(log: pd.DataFrame, max_len: int, windows: int = 1) -> np.ndarray:
    """Training rows of ``max_len + 1`` tokens (inputs = [:-1], targets = [1:]).

    Each user's sequence is cut from its end into windows of ``max_len`` transitions
    that share one boundary item, so every consecutive pair is a transition of exactly
    one window; ``windows`` keeps the latest few per user (0 = all). Windows with
    fewer than two items teach nothing and are dropped.
    """
    users = log["user"].to_numpy()
    if len(users) == 0:
        return np.zeros((0, max_len + 1), np.int64)
    idx = np.arange(len(users))
    ends = np.searchsorted(users, users, side="right")
    rank = ends - 1 - idx  # 0 = the user's latest item
    window, offset = np.divmod(rank, max_len)
    # the item at the start of window w is also the input-only first item of window w - 1
    shared = (offset == 0) & (window > 0)
    ev = np.concatenate([idx, idx[shared]])
    win = np.concatenate([window, window[shared] - 1])
    col = np.concatenate([max_len - offset, np.zeros(shared.sum(), np.int64)])
    if windows > 0:
        keep = win < windows
        ev, win, col = ev[keep], win[keep], col[keep]
    keys = users[ev].astype(np.int64) * (rank.max() // max_len + 2) + win
    uniq, row = np.unique(keys, return_inverse=True)
    out = np.zeros((len(uniq), max_len + 1), np.int64)
    out[row, col] = log["item"].to_numpy()[ev] + 1
    return out[(out != PAD).sum(axis=1) >= 2]


class TiedSoftmaxCE(torch.autograd.Function):
    """Mean of -log softmax(hidden @ weight.T)[target], in one logits buffer.

    The same value and gradients as ``F.cross_entropy(hidden @ weight.T, targets)``. The
    forward keeps exp(logits - row max) and the row sums; the backward scales that buffer
    in place into ``softmax - onehot`` instead of allocating the log-softmax, its gradient
    and a zero-filled one-hot. The catalogue-wide part dominates a training step, and
    this takes about 40% less time on it than ``F.cross_entropy``.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        buf = hidden @ weight.T
        picked = buf.gather(1, targets[:, None]).squeeze(1)
        top = buf.amax(dim=1)
        buf.sub_(top[:, None]).exp_()
        sums = buf.sum(dim=1)
        ctx.save_for_backward(hidden, weight, targets, buf, sums)
        return (top + sums.log() - picked).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        hidden, weight, targets, buf, sums = ctx.saved_tensors
        scale = grad / len(targets)
        g = buf.mul_((scale / sums)[:, None])  # softmax * scale; the buffer is spent
        g[torch.arange(len(targets), device=g.device), targets] -= scale
        return g @ weight, g.T @ hidden, None


def next_item_loss(model: SASRec, hidden: torch.Tensor, targets: torch.Tensor,
                   negatives: torch.Tensor | None = None,
                   log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``hidden`` (positions x d) against item codes.

    Over the whole catalogue, or with ``negatives`` (item codes drawn from a sampler whose
    log-probabilities are ``log_q``, shared by the batch) over each target and those: a
    sampled softmax whose cost does not grow with the catalogue. Every logit is corrected
    by its item's log-probability (the log-Q correction that makes the sampled softmax
    estimate the full one), and a negative equal to the row's target is masked out.
    """
    weight = model.item_emb.weight[1:]
    if negatives is None:
        return TiedSoftmaxCE.apply(hidden, weight, targets)

    # F.embedding, not weight[codes]: indexing's backward on CPU adds repeated codes'
    # rows in an order set by thread timing, so runs drifted apart (test_sequence.py)
    def rows(codes: torch.Tensor) -> torch.Tensor:
        if model.item_emb.sparse:  # the table's own rows (code + 1), gradient sparse
            return F.embedding(codes + 1, model.item_emb.weight, sparse=True)
        return F.embedding(codes, weight)

    positive = (hidden * rows(targets)).sum(dim=1) - log_q[targets]
    sampled = (hidden @ rows(negatives).T - log_q[negatives]).masked_fill(
        negatives[None, :] == targets[:, None], -math.inf)
    logits = torch.cat([positive[:, None], sampled], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive).mean()


@dataclass
class TrainResult:
    epochs: int  # epochs of the returned weights (the best ones when early stopping)
    history: list[dict] = field(default_factory=list)


def trim(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns that are padding in every row (outputs do not change)."""
    real = (tokens != PAD).any(dim=0).nonzero()
    return tokens[:, int(real[0]):] if len(real) else tokens[:, -1:]


@dataclass
class NegativeSampler:
    """Negatives for a sampled softmax, set once per training: ``count`` items a batch,
    drawn in proportion to each item's target count plus one, to the power 0.75;
    ``log_q`` is log(count x that probability), the log-Q correction."""

    q: torch.Tensor
    log_q: torch.Tensor
    count: int

    @classmethod
    def of(cls, data: torch.Tensor, n_items: int, count: int,
           device: str | torch.device) -> NegativeSampler:
        targets = data[:, 1:][data[:, 1:] != PAD] - 1
        q = (torch.bincount(targets, minlength=n_items).double() + 1.0) ** 0.75
        q /= q.sum()
        return cls(q, (q * count).log().float().to(device), count)

    def draw(self, generator: torch.Generator, device: str | torch.device) -> torch.Tensor:
        return torch.multinomial(self.q, self.count, replacement=True,
                                 generator=generator).to(device)


def optimizers(model: SASRec, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
    """Adam; where the item table's gradient is sparse, SparseAdam for the table. A dense
    Adam step touches every row of it: 191 ms a batch at 300k items (d 64, one thread),
    the whole of a sampled-softmax epoch, against 6.8 ms at 10k. SparseAdam updates the
    rows a batch used, and has no weight decay: the table then goes without."""
    if not model.item_emb.sparse:
        return [torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)]
    if weight_decay:
        log.warning("[sequence] weight_decay %g leaves the item table out: it is updated "
                    "sparsely, by SparseAdam", weight_decay)
    table = model.item_emb.weight
    return [torch.optim.SparseAdam([table], lr=lr),
            torch.optim.Adam([p for p in model.parameters() if p is not table], lr=lr,
                             weight_decay=weight_decay)]


def _train_epoch(model: SASRec, data: torch.Tensor, steps: list[torch.optim.Optimizer],
                 generator: torch.Generator, batch_size: int,
                 device: str | torch.device, sampler: NegativeSampler | None = None) -> float:
    """One pass in a seeded order; the mean loss per predicted position (0 with no
    data: an empty batch's loss would be NaN). With ``sampler``, a sampled softmax over
    its negatives, drawn anew each batch."""
    model.train()
    if not len(data):
        return 0.0
    total, count = 0.0, 0
    for batch in torch.randperm(len(data), generator=generator).split(batch_size):
        tokens = trim(data[batch]).to(device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        used = (inputs != PAD) & (targets != PAD)
        hidden = model(inputs)[used]
        if sampler is None:
            loss = next_item_loss(model, hidden, targets[used] - 1)
        else:
            loss = next_item_loss(model, hidden, targets[used] - 1,
                                  sampler.draw(generator, device), sampler.log_q)
        for optimizer in steps:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in steps:
            optimizer.step()
        total += float(loss.detach()) * int(used.sum())
        count += int(used.sum())
    return total / max(count, 1)


def train(model: SASRec, sequences: np.ndarray, *, lr: float = 1e-3, weight_decay: float = 0.0,
          batch_size: int = 128, max_epochs: int = 200, patience: int = 5, eval_every: int = 1,
          seed: int = 42, device: str | torch.device = "cpu",
          evaluate: Callable[[SASRec], float] | None = None, name: str = "sequence",
          negatives: int = 0) -> TrainResult:
    """Adam on next-item cross-entropy (full softmax, or sampled over ``negatives``
    items per batch when > 0, see ``NegativeSampler``), in a seeded order.

    With ``evaluate`` (a held-out metric, higher is better) it runs every ``eval_every``
    epochs; training stops after ``patience`` evaluations without improvement and the
    best weights are restored. Without it, exactly ``max_epochs`` epochs are trained.
    A NaN or infinite epoch loss raises ``FloatingPointError`` naming ``name`` and the
    epoch: the weights are spent, and training on would only log ``loss=nan`` for hours.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = torch.as_tensor(sequences, dtype=torch.long)
    if not len(data):
        log.warning("[%s] no sequence of two or more items to learn from: the model keeps "
                    "its initial weights", name)
    if model.item_emb.sparse and not negatives:
        raise ValueError(f"{name}: a sparse item table needs a sampled softmax (negatives > "
                         "0): the full one's gradient is dense")
    sampler = NegativeSampler.of(data, model.n_items, negatives, device) if negatives else None
    steps = optimizers(model, lr, weight_decay)
    result = TrainResult(epochs=0)
    stopper = EarlyStopping(patience, higher_is_better=True)

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    for epoch in range(1, max_epochs + 1):
        started = time.perf_counter()
        entry = {"epoch": epoch,
                 "loss": _train_epoch(model, data, steps, generator, batch_size, device,
                                      sampler)}
        if not math.isfinite(entry["loss"]):
            raise FloatingPointError(f"{name}: loss is {entry['loss']} at epoch {epoch}; "
                                     "lower lr or check the inputs")
        if evaluate is not None and epoch % eval_every == 0:
            entry["held_out"] = float(evaluate(model))
            if stopper.update(epoch, entry["held_out"], snapshot):
                result.epochs = epoch
        elif evaluate is None:
            result.epochs = epoch
        entry["seconds"] = time.perf_counter() - started
        result.history.append(entry)
        log.info("[%s] epoch=%d loss=%.4f held_out=%s seconds=%.2f", name, epoch,
                 entry["loss"], f"{entry['held_out']:.4f}" if "held_out" in entry else "-",
                 entry["seconds"])
        if evaluate is not None and stopper.should_stop:
            break
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    model.eval()  # ready to score: scorers on several threads then never switch modes
    return result


@torch.no_grad()
def next_item_scores(model: SASRec, tokens: np.ndarray, batch_size: int = 1024,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """Logits for the item after each row's last token (rows x n_items, float32). Leaves
    the model in eval mode, switched only if it is training: ``eval`` walks every
    submodule, a fifth of a served user's scores. (``train`` and the channel's load
    leave it in eval mode: two threads scoring a model in training mode at once could
    each see the other's walk half done, some dropout still on.)"""
    if model.training:
        model.eval()
    out = np.empty((len(tokens), model.n_items), np.float32)
    for lo in range(0, len(tokens), batch_size):
        batch = trim(torch.as_tensor(tokens[lo:lo + batch_size], dtype=torch.long)).to(device)
        out[lo:lo + len(batch)] = model.logits(model(batch)[:, -1]).float().cpu().numpy()
    return out
