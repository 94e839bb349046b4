"""Bank scores are cosines: never above 1 even though the bank stores float16 vectors (issue: 1.0001)."""

import numpy as np

from meanloc.runtime.bank.search import NO_INDEX, blocked_topk


def test_float16_bank_scores_stay_within_minus_one_and_one_and_keep_their_order():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(64, 768)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    bank = np.concatenate([queries, -queries]).astype(np.float16)  # each query's own vector, rounded
    raw = queries @ bank.astype(np.float32).T
    assert raw.max() > 1.0 and raw.min() < -1.0  # float16 rounding really overshoots here
    scores, indices = blocked_topk(np, queries, bank, k=len(bank) + 3)
    finite = np.isfinite(scores)
    assert scores[finite].max() <= 1.0 and scores[finite].min() >= -1.0
    assert (indices[:, 0] == np.arange(64)).all()  # the query's own tile still ranks first
    assert (indices[:, -3:] == NO_INDEX).all() and np.isneginf(scores[:, -3:]).all()  # padding untouched
