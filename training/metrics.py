"""Retrieval metrics exactly as datasets-and-metrics.md §3 defines them (numpy only).

- Ranking: scores in float32, STABLE sort by descending score (ties -> lower gallery index first).
- Junk: gallery items labelled -1 are always junk; with protocol "junk_distractors" (Sample4Geo /
  MEAN) gallery classes that no query has are junk too, while "full" (University1652-Baseline,
  SUES-200 benchmark) ranks them as negatives. Junk is removed before positions are counted.
- Per query: CMC from the first positive's position; trapezoid AP (reported as "AP") and plain AP.
- A query without any positive contributes 0 to every average but stays in the denominator, and
  is counted.
- "R@top1pct (=R@<k>)" is the references' CMC[round(0.01 * N)], N = gallery size on disk
  (junk included), Python's half-to-even round, 0-based index; the corrected variant is
  R@ceil(0.01 * N_ranked).

Scores are computed block-wise so that University-1652 S->D (701 x 51,355) or a 37,855 x 51,355
matrix never has to exist in memory at once.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTOCOLS = ("full", "junk_distractors")
DEFAULT_KS = (1, 5, 10)
# Elements of one (queries x gallery) block; ~8 int64/float64 work arrays of this size live at once.
DEFAULT_BLOCK_ELEMENTS = 1 << 20


def top1pct_index(gallery_on_disk: int) -> int:
    """0-based CMC index the references print as Recall@top1%: round(0.01 * N), half to even."""
    return round(0.01 * gallery_on_disk)


def corrected_top1pct_k(gallery_ranked: int) -> int:
    """K of the corrected variant, R@ceil(1 % of the ranked gallery), at least 1."""
    return max(1, math.ceil(0.01 * gallery_ranked))


def check_protocol(protocol: str) -> str:
    """The protocol name, or ValueError listing the valid ones."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown gallery protocol '{protocol}' (valid: {', '.join(PROTOCOLS)})")
    return protocol


def junk_mask(query_labels: np.ndarray, gallery_labels: np.ndarray, protocol: str) -> np.ndarray:
    """(G,) bool: gallery items removed before ranking under `protocol`."""
    check_protocol(protocol)
    gallery_labels = np.asarray(gallery_labels)
    junk = gallery_labels == -1
    if protocol == "junk_distractors":
        junk |= ~np.isin(gallery_labels, np.asarray(query_labels))
    return junk


@dataclass
class QueryStats:
    """Per-query results: `first_hit` is the 0-based position of the first positive in the
    junk-filtered ranking, or -1 for a no-positive query."""

    first_hit: np.ndarray
    ap_trap: np.ndarray
    ap_plain: np.ndarray

    @staticmethod
    def concat(parts: list["QueryStats"]) -> "QueryStats":
        return QueryStats(
            np.concatenate([p.first_hit for p in parts]),
            np.concatenate([p.ap_trap for p in parts]),
            np.concatenate([p.ap_plain for p in parts]),
        )


def query_stats(
    scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, junk: np.ndarray
) -> QueryStats:
    """First-hit positions and APs of a (Q, G) score block (rows = queries)."""
    scores = np.asarray(scores, dtype=np.float32)
    query_labels = np.asarray(query_labels)
    order = np.argsort(-scores, axis=1, kind="stable")
    keep = ~np.asarray(junk)[order]
    good = (np.asarray(gallery_labels)[order] == query_labels[:, None]) & keep
    position = np.cumsum(keep, axis=1) - 1  # 0-based position once junk is removed
    hits = np.cumsum(good, axis=1)  # i: how many positives up to here (1-based at a hit)
    n_good = hits[:, -1] if hits.shape[1] else np.zeros(len(query_labels), dtype=np.int64)
    r = np.maximum(position, 0).astype(np.float64)  # only read at hits, where it is >= 0
    i = hits.astype(np.float64)
    precision = np.where(good, i / (r + 1.0), 0.0)
    precision_before = np.where(good, np.where(r == 0, 1.0, (i - 1.0) / np.maximum(r, 1.0)), 0.0)
    denom = np.maximum(n_good, 1)
    ap_plain = precision.sum(axis=1) / denom
    ap_trap = ((precision + precision_before) / 2.0).sum(axis=1) / denom
    has_positive = n_good > 0
    first_raw = np.argmax(good, axis=1) if good.shape[1] else np.zeros(len(query_labels), dtype=np.int64)
    first_hit = np.where(has_positive, np.take_along_axis(position, first_raw[:, None], axis=1)[:, 0], -1)
    return QueryStats(first_hit.astype(np.int64), ap_trap, ap_plain)


def cmc_curve(first_hit: np.ndarray, length: int) -> np.ndarray:
    """Mean CMC over queries, (length,) float: CMC[k] = fraction of queries with a hit at <= k."""
    first_hit = np.asarray(first_hit)
    hits = first_hit[first_hit >= 0]
    counts = np.bincount(hits[hits < length], minlength=length)[:length]
    return np.cumsum(counts) / max(len(first_hit), 1)


@dataclass
class RetrievalMetrics:
    """Averages over all queries (fractions in [0, 1]) under one gallery protocol."""

    protocol: str
    queries: int
    no_positive_queries: int
    gallery_on_disk: int
    gallery_ranked: int
    recall: dict[int, float]
    top1pct_index: int
    top1pct_recall: float
    corrected_k: int
    corrected_recall: float
    ap_trap: float
    ap_plain: float

    def to_dict(self, percent: bool = True) -> dict[str, Any]:
        """Named values, e.g. 'R@top1pct (=R@11)'; percentages unless percent=False."""
        scale = 100.0 if percent else 1.0
        values: dict[str, Any] = {f"R@{k}": v * scale for k, v in self.recall.items()}
        values[f"R@top1pct (=R@{self.top1pct_index + 1})"] = self.top1pct_recall * scale
        values[f"R@top1pct_corrected (=R@{self.corrected_k})"] = self.corrected_recall * scale
        values["AP"] = self.ap_trap * scale
        values["AP_plain"] = self.ap_plain * scale
        values.update(
            protocol=self.protocol,
            units="percent" if percent else "fraction",
            queries=self.queries,
            no_positive_queries=self.no_positive_queries,
            gallery_on_disk=self.gallery_on_disk,
            gallery_ranked=self.gallery_ranked,
        )
        return values


def summarize(
    stats: QueryStats,
    protocol: str,
    gallery_on_disk: int,
    gallery_ranked: int,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> RetrievalMetrics:
    """Average per-query stats into R@K, R@top1pct (both variants) and AP."""
    first_hit = stats.first_hit
    queries = len(first_hit)

    def recall_at(k: int) -> float:
        return float(np.sum((first_hit >= 0) & (first_hit < k)) / queries) if queries else 0.0

    index = top1pct_index(gallery_on_disk)
    corrected = corrected_top1pct_k(gallery_ranked)
    return RetrievalMetrics(
        protocol=protocol,
        queries=queries,
        no_positive_queries=int(np.sum(first_hit < 0)),
        gallery_on_disk=int(gallery_on_disk),
        gallery_ranked=int(gallery_ranked),
        recall={k: recall_at(k) for k in ks},
        top1pct_index=index,
        top1pct_recall=recall_at(index + 1),
        corrected_k=corrected,
        corrected_recall=recall_at(corrected),
        ap_trap=float(stats.ap_trap.sum() / queries) if queries else 0.0,
        ap_plain=float(stats.ap_plain.sum() / queries) if queries else 0.0,
    )


def metrics_from_scores(
    scores: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    protocol: str,
    ks: tuple[int, ...] = DEFAULT_KS,
    gallery_on_disk: int | None = None,
) -> RetrievalMetrics:
    """Metrics of a full (Q, G) score matrix. `gallery_on_disk` defaults to G."""
    junk = junk_mask(query_labels, gallery_labels, protocol)
    stats = query_stats(scores, query_labels, gallery_labels, junk)
    return _summarize_gallery(stats, protocol, junk, gallery_on_disk, ks)


def retrieval_metrics(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    protocol: str,
    ks: tuple[int, ...] = DEFAULT_KS,
    gallery_on_disk: int | None = None,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> RetrievalMetrics:
    """Metrics of cosine (dot-product) retrieval, scoring blocks of queries at a time in float32.

    Features must be L2-normalised (Q, D) and (G, D). `gallery_on_disk` is N for R@top1pct (the
    folder size, junk and unreadable images included); it defaults to G.
    """
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    gallery = np.asarray(gallery_features, dtype=np.float32)
    queries = np.asarray(query_features, dtype=np.float32)
    junk = junk_mask(query_labels, gallery_labels, protocol)
    rows = max(1, block_elements // max(len(gallery), 1))
    parts = [
        query_stats(
            queries[start : start + rows] @ gallery.T,
            query_labels[start : start + rows],
            gallery_labels,
            junk,
        )
        for start in range(0, len(queries), rows)
    ]
    stats = QueryStats.concat(parts) if parts else QueryStats(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    return _summarize_gallery(stats, protocol, junk, gallery_on_disk, ks)


def _summarize_gallery(
    stats: QueryStats, protocol: str, junk: np.ndarray, gallery_on_disk: int | None, ks: tuple[int, ...]
) -> RetrievalMetrics:
    on_disk = len(junk) if gallery_on_disk is None else gallery_on_disk
    return summarize(stats, protocol, on_disk, int(np.sum(~junk)), ks)
