"""Metric functions against the test vectors 1-9 of datasets-and-metrics.md §3.6."""

import inspect

import numpy as np
import pytest

from meanloc.training.metrics import (
    cmc_curve,
    corrected_top1pct_k,
    junk_mask,
    metrics_from_scores,
    retrieval_metrics,
    top1pct_index,
)


def single_query(positive_ranks, gallery_size=10):
    """One query (label 1) over a gallery whose descending scores put positives at the given 1-based ranks."""
    scores = np.linspace(1.0, 0.1, gallery_size, dtype=np.float32)
    labels = np.full(gallery_size, 2)
    labels[np.asarray(positive_ranks) - 1] = 1
    # shuffle the gallery order so ranking, not storage order, decides
    perm = np.random.default_rng(len(positive_ranks)).permutation(gallery_size)
    return metrics_from_scores(scores[perm][None, :], np.array([1]), labels[perm], "full")


@pytest.mark.parametrize(
    ("ranks", "ap_trap", "ap_plain", "r1", "r5"),
    [
        ([1], 1.0, 1.0, 1, 1),  # vector 1
        ([2], 0.25, 0.5, 0, 1),  # vector 2
        ([3], 0.1667, 0.3333, 0, 1),  # vector 3
        ([4], 0.125, 0.25, 0, 1),  # vector 4
        ([1, 3, 6], 0.6778, 0.7222, 1, 1),  # vector 5
    ],
)
def test_vectors_1_to_5(ranks, ap_trap, ap_plain, r1, r5):
    m = single_query(ranks)
    assert round(m.ap_trap, 4) == ap_trap
    assert round(m.ap_plain, 4) == ap_plain
    assert m.recall[1] == r1 and m.recall[5] == r5
    assert m.no_positive_queries == 0


def test_single_positive_ap_closed_form():
    for rank in range(2, 10):
        m = single_query([rank])
        assert m.ap_trap == pytest.approx(1 / (2 * rank)) and m.ap_plain == pytest.approx(1 / rank)


@pytest.mark.parametrize("protocol", ["full", "junk_distractors"])
def test_vector_6_no_positive_query_counts_zero(protocol):
    scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1]], dtype=np.float32)
    m = metrics_from_scores(scores, np.array([5, 9]), np.array([5, 6, 7]), protocol)
    assert m.recall[1] == 0.5 and m.ap_trap == 0.5 and m.ap_plain == 0.5
    assert m.no_positive_queries == 1 and m.queries == 2


def test_vector_7_ties_break_towards_lower_gallery_index():
    scores = np.array([[0.5, 0.5]], dtype=np.float32)
    m = metrics_from_scores(scores, np.array([1]), np.array([0, 1]), "full")
    assert m.recall[1] == 0 and m.ap_trap == 0.25
    swapped = metrics_from_scores(scores, np.array([1]), np.array([1, 0]), "full")
    assert swapped.recall[1] == 1 and swapped.ap_trap == 1.0


def test_vector_8_gallery_conventions():
    scores = np.array([[0.95, 0.90, 0.80], [0.1, 0.2, 0.9]], dtype=np.float32)
    queries, gallery = np.array([7, 3]), np.array([9, 7, 3])
    full = metrics_from_scores(scores[:1], queries[:1], gallery, "full")
    assert full.recall[1] == 0 and full.ap_trap == 0.25 and full.ap_plain == 0.5
    assert junk_mask(queries, gallery, "junk_distractors").tolist() == [True, False, False]
    junked = metrics_from_scores(scores, queries, gallery, "junk_distractors")
    assert junked.recall[1] == 1 and junked.ap_trap == 1
    assert (junked.gallery_ranked, junked.gallery_on_disk) == (2, 3)
    # a -1 (junk) gallery item ranked first is skipped in either convention
    explicit = metrics_from_scores(scores[:1], queries[:1], np.array([-1, 7, 3]), "full")
    assert explicit.recall[1] == 1 and explicit.ap_trap == 1


@pytest.mark.parametrize(
    ("n", "index"), [(951, 10), (200, 2), (250, 2), (50, 0), (701, 7), (51355, 514), (10000, 100)]
)
def test_vector_9_top1pct_index(n, index):
    assert top1pct_index(n) == index


def test_top1pct_uses_on_disk_size_and_corrected_variant_uses_ranked_size():
    # 950 distractors junked, 1 true class: CMC index from N=951 on disk; corrected K from 1 ranked
    gallery = np.concatenate([[1], np.arange(100, 1050)])
    scores = np.linspace(1, 0, 951, dtype=np.float32)[None, ::-1].copy()  # positive ranked last in "full"
    full = metrics_from_scores(scores, np.array([1]), gallery, "full")
    assert full.top1pct_index == 10 and full.top1pct_recall == 0
    assert full.corrected_k == 10 and full.to_dict()["R@top1pct (=R@11)"] == 0.0
    junked = metrics_from_scores(scores, np.array([1]), gallery, "junk_distractors")
    assert junked.top1pct_index == 10 and junked.corrected_k == 1 and junked.recall[1] == 1
    assert corrected_top1pct_k(701) == 8


def test_cmc_curve():
    first_hit = np.array([0, 2, -1, 1])
    assert cmc_curve(first_hit, 4).tolist() == [0.25, 0.5, 0.75, 0.75]


def test_blockwise_features_equal_full_score_matrix():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(300, 16)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    gallery_labels = rng.integers(0, 40, 300)
    query_labels = rng.integers(0, 30, 97)
    queries = gallery[rng.integers(0, 300, 97)] + rng.normal(scale=0.5, size=(97, 16)).astype(np.float32)
    for protocol in ("full", "junk_distractors"):
        whole = metrics_from_scores(
            queries @ gallery.T, query_labels, gallery_labels, protocol, ks=(1, 5, 10)
        )
        blocks = retrieval_metrics(
            queries, gallery, query_labels, gallery_labels, protocol, block_elements=1000
        )
        assert blocks == whole
        assert 0 < whole.recall[10] < 1


def test_protocol_is_required_and_checked():
    for function in (metrics_from_scores, retrieval_metrics):
        assert inspect.signature(function).parameters["protocol"].default is inspect.Parameter.empty
    with pytest.raises(ValueError, match="unknown gallery protocol"):
        metrics_from_scores(np.zeros((1, 2), np.float32), np.array([0]), np.array([0, 1]), "easy")
