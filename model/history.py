"""Which items each training position's history holds: the input of the learned repeat score
(``ModelConfig.repeat_bias``) and of SASRec's seen-item mask (``mask_seen``).

Item ids are 1..n_items; 0 is padding and n_items + 1 the mask (BERT4Rec) or start (SASRec) token,
neither of which is history. Dense forms are [N, n_items] bool (column j is item j + 1); the
sparse form lists (n, j) pairs, which is what a history of ~L items out of n_items calls for.

>>> seq = torch.tensor([[0, 3, 5, 3]])
>>> in_rows(seq, 6).int().tolist()
[[0, 0, 1, 0, 1, 0]]
>>> history_pairs(seq, seq > 0, 6)  # positions 1..3: {3}, {3, 5}, {3, 5}
(tensor([0, 1, 1, 2, 2]), tensor([2, 2, 4, 2, 4]))
>>> elsewhere_pairs(seq, seq > 0, 6)  # the others: {3, 5}, {3}, {3, 5}
(tensor([0, 0, 1, 2, 2]), tensor([2, 4, 2, 2, 4]))
"""

from __future__ import annotations

import torch


def in_rows(seq: torch.Tensor, n_items: int) -> torch.Tensor:
    """[B, n_items] bool: the real items present in each row of ``seq``."""
    seen = torch.zeros(seq.size(0), n_items + 2, dtype=torch.bool, device=seq.device)
    return seen.scatter_(1, seq, True)[:, 1 : n_items + 1]


def seen_before(inputs: torch.Tensor, sel: torch.Tensor, n_items: int) -> torch.Tensor:
    """[N, n_items] bool, causal: the items of each selected position's history (itself and the
    ones before it)."""
    L = inputs.size(1)
    later = torch.ones(L, L, dtype=torch.bool, device=inputs.device).triu(1)  # [p, j]: j after p
    hist = inputs[:, None, :].expand(-1, L, -1).masked_fill(later, 0)[sel]  # [N, L]
    return in_rows(hist, n_items)


def _first_shown(inputs: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] bool each: a real item's first position in its row; an item shown once in its row."""
    L = inputs.size(1)
    same = inputs[:, :, None] == inputs[:, None, :]  # [B, L, L]
    earlier = torch.ones(L, L, dtype=torch.bool, device=inputs.device).tril(-1)  # [j, i]: i before j
    first = (inputs > 0) & (inputs <= n_items) & ~(same & earlier).any(2)
    return first, same.sum(2) == 1


def history_pairs(inputs: torch.Tensor, sel: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``seen_before`` as (n, item - 1) pairs, n indexing the selected positions; each item of a
    history once (at its first occurrence in the row, which every later position sees)."""
    first, _ = _first_shown(inputs, n_items)
    at = sel.nonzero()  # [N, 2]: (row, position) of each selected position
    upto = torch.arange(inputs.size(1), device=inputs.device)[None, :] <= at[:, 1:]  # [N, L]: itself and before
    n, j = (first[at[:, 0]] & upto).nonzero(as_tuple=True)
    return n, inputs[at[n, 0], j] - 1


def elsewhere_pairs(inputs: torch.Tensor, sel: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional (BERT4Rec): a masked position's history is the items its row shows at the
    *other* positions, as (n, item - 1) pairs, each item once. Its own position is left out where
    the row shows that item nowhere else: the cloze keeps the true item there 10% of the time,
    which would otherwise teach the repeat score that the target is always in sight."""
    first, once = _first_shown(inputs, n_items)
    at = sel.nonzero()
    own = torch.arange(inputs.size(1), device=inputs.device)[None, :] == at[:, 1:]  # [N, L]
    n, j = (first[at[:, 0]] & ~(own & once[at[:, 0]])).nonzero(as_tuple=True)
    return n, inputs[at[n, 0], j] - 1


def unseen(seen: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """[N, n_items]: False for the items a position's history holds (``seen_before``), the targets
    ``t`` [N, future] excepted: inference masks them, so training need not spend the softmax on
    pushing them down."""
    keep = ~seen
    n, j = (t > 0).nonzero(as_tuple=True)
    keep[n, t[n, j] - 1] = True
    return keep
