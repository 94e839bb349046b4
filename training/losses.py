"""MEAN's training losses (shared/docs/mean-model.md §5): InfoNCE + 3-head CE + CDA.

All terms are written so a DDP run splits them exactly: InfoNCE takes the embeddings of the
*whole* global batch (gathered with gradients) plus this rank's row offset, and returns this
rank's share of the global mean; CE and CDA are per-sample means over the local batch. The
trainer scales the per-rank total so that DDP's gradient average equals the single-process
gradient (see `MeanLoss.forward`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from meanloc.errors import MeanlocError

from .model.mean import ViewOutputs


@dataclass(frozen=True)
class LossWeights:
    """λ2 (InfoNCE), λ3 (CE), λ1 (CDA) of shared/docs/mean-model.md §5, plus our optional
    uniformity term (not in MEAN; 0 for the real datasets)."""

    infonce: float = 1.0
    ce: float = 0.1
    cda: float = 1.3
    uniformity: float = 0.0


# The reference's per-dataset weights. "synthetic" is ours, for the demo's small network trained
# from scratch for minutes: the 3-head CE did not prevent the collapse described in
# `uniformity_loss` and did not help there, and the position-wise CDA term ignores the satellite's
# RandomRotate90, so both are off; the uniformity term is on.
DATASET_LOSS_WEIGHTS: dict[str, LossWeights] = {
    "university": LossWeights(infonce=1.0, ce=0.1, cda=1.3),
    "sues200": LossWeights(infonce=1.0, ce=0.1, cda=0.75),
    "synthetic": LossWeights(infonce=1.0, ce=0.0, cda=0.0, uniformity=0.3),
}


def default_loss_weights(dataset: str) -> LossWeights:
    if dataset not in DATASET_LOSS_WEIGHTS:
        raise MeanlocError(f"no default loss weights for dataset '{dataset}'; choose from {', '.join(DATASET_LOSS_WEIGHTS)}")
    return DATASET_LOSS_WEIGHTS[dataset]


def infonce_loss(
    local_sat: torch.Tensor,
    local_drone: torch.Tensor,
    global_sat: torch.Tensor,
    global_drone: torch.Tensor,
    logit_scale: torch.Tensor,
    row_offset: int = 0,
    label_smoothing: float = 0.1,
    max_logit_scale: float | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE, this process's rows of the global B_g x B_g problem.

    Returns sum over local rows of the per-row CE divided by the global batch size, so the sum
    over ranks is exactly ½[CE(S, diag) + CE(Sᵀ, diag)] of the full global batch. With one process
    pass the same tensors as local and global. `max_logit_scale` (None = faithful, no clamp) caps
    exp(logit_scale) like CLIP's clamp at 100.
    """
    scale = logit_scale.exp()
    if max_logit_scale is not None:
        scale = scale.clamp(max=max_logit_scale)
    sat = F.normalize(local_sat, dim=1)
    drone = F.normalize(local_drone, dim=1)
    all_sat = F.normalize(global_sat, dim=1)
    all_drone = F.normalize(global_drone, dim=1)
    targets = torch.arange(row_offset, row_offset + sat.shape[0], device=sat.device)
    # Row b of S = scale * sat_b · drone_allᵀ; row b of Sᵀ = scale * drone_b · sat_allᵀ.
    sat_rows = F.cross_entropy(scale * sat @ all_drone.T, targets, label_smoothing=label_smoothing, reduction="sum")
    drone_rows = F.cross_entropy(scale * drone @ all_sat.T, targets, label_smoothing=label_smoothing, reduction="sum")
    return 0.5 * (sat_rows + drone_rows) / global_sat.shape[0]


def classification_loss(sat_logits: tuple[torch.Tensor, ...], drone_logits: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """mean_k CE(z_k^sat, y) + mean_k CE(z_k^drone, y), no label smoothing (reference)."""
    if not sat_logits:
        return labels.new_zeros((), dtype=torch.float32)
    sat = torch.stack([F.cross_entropy(logits, labels) for logits in sat_logits]).mean()
    drone = torch.stack([F.cross_entropy(logits, labels) for logits in drone_logits]).mean()
    return sat + drone


def cda_loss(sat_aligned: torch.Tensor, drone_aligned: torch.Tensor, duplicate_mse_term: bool = True) -> torch.Tensor:
    """Cross-domain alignment: 1 − mean_b cos(vec A_s,b, vec A_d,b), position-wise.

    Reference quirk (§10): its "mse" term computes the same 1 − cos as its "cosine" term and both
    are added, so faithful mode returns 2(1 − cos). `duplicate_mse_term=False` keeps one copy.
    """
    # (B, C, HW) -> (B, HW, C) -> (B, HW*C): the reference's transpose-then-flatten order.
    sat = sat_aligned.transpose(1, 2).flatten(1)
    drone = drone_aligned.transpose(1, 2).flatten(1)
    one_minus_cos = 1.0 - F.cosine_similarity(sat, drone, dim=1).mean()
    return 2.0 * one_minus_cos if duplicate_mse_term else one_minus_cos


def mean_pairwise_cosine(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean cosine between different rows (no gradient): near 1 when the embeddings have collapsed
    to one direction, near 0 when they spread over the sphere. The collapse guard logs it."""
    with torch.no_grad():
        normalized = F.normalize(embeddings.float(), dim=1)
        count = normalized.shape[0]
        if count < 2:
            return normalized.new_zeros(())
        total = normalized.sum(dim=0)
        return (total @ total - count) / (count * (count - 1))  # |sum|^2 = n + sum_{i != j} cos_ij


def uniformity_loss(embeddings: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E_{i<j} exp(-t·|ê_i − ê_j|²) over the batch (Wang & Isola 2020): 0 when all embeddings
    coincide, about -4 when they spread over the sphere.

    Why (not in MEAN): trained from scratch, the ConvNeXt's final LayerNorm lets InfoNCE fall
    into a collapsed fixed point in a few dozen steps (measured on the demo world: loss stuck
    at ln B, one constant embedding for every image, where InfoNCE's gradient is exactly zero).
    This term makes that state its maximum; with a pretrained backbone it is not needed.
    """
    normalized = F.normalize(embeddings, dim=1)
    return torch.pdist(normalized).pow(2).mul(-t).exp().mean().log()


@dataclass(frozen=True)
class LossOptions:
    """Switches for the reference quirks; the defaults are the faithful reproduction."""

    label_smoothing: float = 0.1
    max_logit_scale: float | None = None  # faithful: no clamp
    cda_duplicate_mse: bool = True  # faithful: L_CDA = 2(1 − cos)


class MeanLoss(nn.Module):
    """L = λ2·InfoNCE + λ3·CE + λ1·CDA for one (possibly distributed) step.

    `gather` maps a local (B, C) tensor to the global (B_g, C) one with gradients (identity in a
    single process). The returned `total` is the value this rank must backpropagate: the local
    terms are weighted by world_size·B/B_g so that DDP's gradient *average* over ranks equals the
    gradient of the global-batch loss. `parts` holds the global-batch values for logging (exact
    after an all-reduce sum divided by world_size, or directly with one process).
    """

    def __init__(self, weights: LossWeights, options: LossOptions = LossOptions()) -> None:
        super().__init__()
        self.weights = weights
        self.options = options

    def forward(
        self,
        sat: ViewOutputs,
        drone: ViewOutputs,
        labels: torch.Tensor,
        logit_scale: torch.Tensor,
        gather=None,
        row_offset: int = 0,
        world_size: int = 1,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        local_batch = labels.shape[0]
        if gather is None:
            global_sat, global_drone = sat.global_feature, drone.global_feature
        else:
            global_sat, global_drone = gather(sat.global_feature), gather(drone.global_feature)
        global_batch = global_sat.shape[0]
        share = local_batch / global_batch  # this rank's fraction of the per-sample means
        zero = logit_scale.new_zeros(())

        # InfoNCE already returns this rank's share of the global mean.
        infonce = infonce_loss(
            sat.global_feature, drone.global_feature, global_sat, global_drone, logit_scale, row_offset,
            self.options.label_smoothing, self.options.max_logit_scale,
        )
        ce = classification_loss(sat.logits, drone.logits, labels) if self.weights.ce else zero
        cda = cda_loss(sat.aligned, drone.aligned, self.options.cda_duplicate_mse) if self.weights.cda else zero
        # Per view (spreading the two views apart would fight the alignment InfoNCE wants), over
        # this rank's images: under DDP an approximation of the global-batch value.
        uniformity = (0.5 * (uniformity_loss(sat.global_feature) + uniformity_loss(drone.global_feature))
                      if self.weights.uniformity else zero)

        # Sum over ranks of `shared` is the global loss; DDP divides the summed gradient by world_size.
        per_sample = self.weights.ce * ce + self.weights.cda * cda + self.weights.uniformity * uniformity
        shared = self.weights.infonce * infonce + share * per_sample
        parts = {
            "infonce": infonce.detach() * world_size,  # this rank's rows, rescaled; exact after averaging
            "ce": ce.detach(),
            "cda": cda.detach(),
            "uniformity": uniformity.detach(),
            "loss": shared.detach() * world_size,
            "logit_scale": logit_scale.detach().exp(),
            # Over the global batch, both views: the collapse guard's spread signal.
            "embedding_cosine": 0.5 * (mean_pairwise_cosine(global_sat) + mean_pairwise_cosine(global_drone)),
        }
        return shared * world_size, parts
