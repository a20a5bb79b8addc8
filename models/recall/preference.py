"""User preference: category and tag affinities, and the best items of those attributes.

A user's affinity for attribute a is the decayed count of their fitted items carrying
it, normalised to sum to one (decay 2^(-age / half-life): ``half_life_share`` of the
log's span, a served user's own (``models.recall.weights``), or ``half_life_days`` when
set; none when 0; ages from the user's latest event, which the normalisation makes exact
and keeps finite for long-gone users). An item's
standing within a is its popularity divided by the most popular item of a. The score of
item j is sum_a affinity(u, a) * carries(j, a) * standing(j, a): popular items of the
categories and tags the user keeps coming back to.

For scale, each attribute keeps only its ``items_per_attribute`` best items and each
user only their ``top_attributes`` strongest attributes, so a user's scores touch at
most their product, whatever the catalogue size.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from features.attributes import attribute_matrix
from features.recall_data import RecallData
from models.arrays import row_scaled
from models.base import HeldOut, SparseScoreChannel
from models.recall.weights import half_life, prune_rows, seed_weights


class PreferenceChannel(SparseScoreChannel):
    name = "preference"
    state = ("attributes", "item_terms")

    def __init__(self, half_life_days: float | None = None, half_life_share: float = 0.1,
                 items_per_attribute: int = 300, top_attributes: int = 20) -> None:
        self.params = {"half_life_days": half_life_days, "half_life_share": half_life_share,
                       "items_per_attribute": items_per_attribute,
                       "top_attributes": top_attributes}
        self.attributes: sp.csr_matrix | None = None
        self.item_terms: sp.csr_matrix | None = None

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> PreferenceChannel:
        attributes, _ = attribute_matrix(data.items)
        popularity = np.asarray(data.history.sum(axis=0)).ravel().astype(np.float32)
        carriers = (attributes > 0).astype(np.float32)
        best = (sp.diags(popularity) @ carriers).max(axis=0).toarray().ravel()
        standing = carriers @ sp.diags(np.divide(1.0, best, out=np.zeros_like(best),
                                                 where=best > 0))
        self.attributes = attributes.tocsr()
        item_terms = (sp.diags(popularity) @ standing).multiply(carriers).T.tocsr()
        self.item_terms = prune_rows(item_terms, self.params["items_per_attribute"])
        return self

    def score_sparse(self, data: RecallData, users: np.ndarray) -> sp.csr_matrix:
        self._require_fitted()
        p = self.params
        seeds = seed_weights(data, users, half_life(data, p["half_life_days"],
                                                    p["half_life_share"], users),
                             recent_items=0, recent_weight=0.0, long_weight=1.0,
                             from_latest=True)
        affinity = prune_rows(seeds @ self.attributes, self.params["top_attributes"])
        totals = np.asarray(affinity.sum(axis=1)).ravel()
        affinity = row_scaled(affinity, np.divide(1.0, totals, out=np.zeros_like(totals),
                                                  where=totals > 0))
        return affinity @ self.item_terms
