"""MEAN's loss terms against hand-written formulas (shared/docs/mean-model.md §5)."""

import math

import pytest
import torch
import torch.nn.functional as F

from meanloc.errors import MeanlocError
from meanloc.training.losses import (
    LossOptions,
    LossWeights,
    MeanLoss,
    cda_loss,
    classification_loss,
    default_loss_weights,
    infonce_loss,
    uniformity_loss,
)
from meanloc.training.model import ViewOutputs


def _smoothed_ce_by_hand(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """CE with label smoothing written out: (1-eps)·(-log p_ii) + eps·mean_j(-log p_ij)."""
    log_p = logits.log_softmax(dim=1)
    n = logits.shape[0]
    return ((1 - eps) * -log_p.diagonal() + eps * -log_p.mean(dim=1)).sum() / n


def _embeddings(batch=6, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=generator), torch.randn(batch, dim, generator=generator)


def test_infonce_is_symmetric_smoothed_ce_with_exp_logit_scale():
    sat, drone = _embeddings()
    log_scale = torch.tensor(math.log(1 / 0.07))
    got = infonce_loss(sat, drone, sat, drone, log_scale)
    logits = log_scale.exp() * F.normalize(sat, dim=1) @ F.normalize(drone, dim=1).T
    expected = 0.5 * (_smoothed_ce_by_hand(logits, 0.1) + _smoothed_ce_by_hand(logits.T, 0.1))
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_infonce_rank_rows_sum_to_the_global_loss():
    sat, drone = _embeddings(batch=8)
    log_scale = torch.tensor(2.0)
    full = infonce_loss(sat, drone, sat, drone, log_scale)
    halves = [infonce_loss(sat[i : i + 4], drone[i : i + 4], sat, drone, log_scale, row_offset=i) for i in (0, 4)]
    assert sum(halves).item() == pytest.approx(full.item(), abs=1e-6)


def test_infonce_rewards_matching_pairs():
    sat, _ = _embeddings()
    log_scale = torch.tensor(math.log(1 / 0.07))
    matched = infonce_loss(sat, sat, sat, sat, log_scale)
    shuffled = infonce_loss(sat, sat.roll(1, dims=0), sat, sat.roll(1, dims=0), log_scale)
    assert matched < shuffled


def test_logit_scale_has_no_clamp_by_default_and_an_optional_one():
    sat, drone = _embeddings()
    big = torch.tensor(math.log(500.0), requires_grad=True)
    faithful = infonce_loss(sat, drone, sat, drone, big)
    clamped = infonce_loss(sat, drone, sat, drone, big, max_logit_scale=100.0)
    at_100 = infonce_loss(sat, drone, sat, drone, torch.tensor(math.log(100.0)))
    assert clamped.item() == pytest.approx(at_100.item(), abs=1e-5)
    assert faithful.item() != pytest.approx(clamped.item(), abs=1e-3)
    (grad,) = torch.autograd.grad(clamped, big)
    assert grad.item() == 0.0  # beyond the clamp the temperature stops learning, as in CLIP


def test_cda_is_twice_one_minus_cosine_in_faithful_mode():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(3, 5, 4, generator=generator)
    b = torch.randn(3, 5, 4, generator=generator)
    cos = F.cosine_similarity(a.transpose(1, 2).flatten(1), b.transpose(1, 2).flatten(1), dim=1).mean()
    assert cda_loss(a, b).item() == pytest.approx(2 * (1 - cos.item()), abs=1e-6)
    assert cda_loss(a, b, duplicate_mse_term=False).item() == pytest.approx(1 - cos.item(), abs=1e-6)
    assert cda_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_classification_loss_averages_heads_and_sums_views_without_smoothing():
    generator = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 3, 1])
    sat = tuple(torch.randn(3, 4, generator=generator) for _ in range(3))
    drone = tuple(torch.randn(3, 4, generator=generator) for _ in range(3))
    expected = sum(F.cross_entropy(z, labels) for z in sat) / 3 + sum(F.cross_entropy(z, labels) for z in drone) / 3
    assert classification_loss(sat, drone, labels).item() == pytest.approx(expected.item(), abs=1e-6)


def test_reference_weights_per_dataset():
    assert default_loss_weights("university") == LossWeights(1.0, 0.1, 1.3)
    assert default_loss_weights("sues200") == LossWeights(1.0, 0.1, 0.75)
    with pytest.raises(MeanlocError, match="no default loss weights"):
        default_loss_weights("cvusa")


def test_mean_loss_total_is_the_weighted_sum():
    generator = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 1, 2, 3])

    def view():
        return ViewOutputs(
            aligned=torch.randn(4, 6, 5, generator=generator),
            logits=tuple(torch.randn(4, 5, generator=generator) for _ in range(3)),
            features=(),
            global_feature=torch.randn(4, 8, generator=generator),
            feature_map=torch.empty(0),
        )

    sat, drone = view(), view()
    scale = torch.tensor(2.5)
    weights = LossWeights(1.0, 0.1, 1.3)
    total, parts = MeanLoss(weights, LossOptions())(sat, drone, labels, scale)
    expected = (
        infonce_loss(sat.global_feature, drone.global_feature, sat.global_feature, drone.global_feature, scale)
        + 0.1 * classification_loss(sat.logits, drone.logits, labels)
        + 1.3 * cda_loss(sat.aligned, drone.aligned)
    )
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)
    assert parts["loss"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_uniformity_penalises_the_collapse_that_infonce_is_flat_at():
    log_scale = torch.tensor(math.log(1 / 0.07))
    collapsed = torch.ones(6, 8)
    spread = torch.eye(8)[:6]
    # InfoNCE cannot tell a total collapse (ln B) from matched-but-unspread embeddings ...
    assert infonce_loss(collapsed, collapsed, collapsed, collapsed, log_scale).item() == pytest.approx(math.log(6), abs=1e-5)
    # ... the uniformity term makes it the worst state instead.
    assert uniformity_loss(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    assert uniformity_loss(spread).item() < -3.0
