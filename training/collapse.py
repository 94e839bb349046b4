"""Collapse guard: notice when contrastive training is not learning, say so, and never pick a
"best" checkpoint among noise.

A collapsed InfoNCE run maps every image to (nearly) the same embedding: all logits of a row are
equal, the loss sits at exactly ln(B) (label smoothing does not change that value) and its gradient
vanishes, so the state persists. Two signals give it away during training:

- the InfoNCE term stays within `loss_tolerance` of ln(global batch) over a window of steps;
- the embeddings lose their spread: the mean cosine between different images of a batch
  (`embedding_cosine`, logged every step it is logged) approaches 1.

On validation, a retrieval result counts only if it beats chance (1 / gallery size) with a one-sided
binomial test at `ALPHA`: a "best" R@1 of 3 % over 240 queries against 60 tiles is not a model.
Torch-free: the trainer passes plain floats.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from meanloc.errors import EXIT_CHECK_FAILED, MeanlocError

ALPHA = 0.01  # one-sided significance of "better than chance" for model selection
MIN_QUERIES = 20  # below this a validation split cannot tell a model from chance: selection warns instead


class TrainingCollapsedError(MeanlocError):
    """Training finished without a model: collapsed embeddings or no validation result above chance.

    The checkpoint of the last step is kept for inspection; no best checkpoint is written."""

    exit_code = EXIT_CHECK_FAILED


def chance_tail_probability(hits: int, queries: int, chance: float) -> float:
    """P(X >= hits) for X ~ Binomial(queries, chance): how likely a guessing model does this well."""
    if hits <= 0:
        return 1.0
    if chance <= 0.0:
        return 0.0
    if chance >= 1.0:
        return 1.0
    log_p, log_q = math.log(chance), math.log1p(-chance)
    terms = [math.lgamma(queries + 1) - math.lgamma(k + 1) - math.lgamma(queries - k + 1) + k * log_p
             + (queries - k) * log_q for k in range(hits, queries + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def above_chance(r1_percent: float, queries: int, gallery: int, alpha: float = ALPHA) -> bool | None:
    """True if R@1 over `queries` single-positive queries beats guessing among `gallery` tiles;
    None if there are too few queries to tell (a smoke-test split)."""
    if queries < MIN_QUERIES:
        return None
    if gallery <= 0:
        return False
    hits = round(r1_percent / 100.0 * queries)
    return chance_tail_probability(hits, queries, 1.0 / gallery) < alpha


@dataclass
class CollapseGuard:
    """Watches the logged training records; `observe` returns a record to log when the state changes.

    Collapsed = the InfoNCE term stayed within `loss_tolerance` of ln(B) for `window_steps`, judged
    only on whole windows after `min_step` (a fresh network's loss starts near ln(B) too). The record
    says why the loss is stuck: embeddings without spread (cosine between different images near 1)
    or a temperature that no longer separates them (logit scale near 0).
    """

    batch_size: int
    min_step: int = 50
    window_steps: int = 100
    loss_tolerance: float = 0.01  # relative to ln(B)
    history: deque = field(default_factory=lambda: deque(maxlen=1000))
    collapsed: bool = False
    events: list = field(default_factory=list)

    @property
    def chance_loss(self) -> float:
        return math.log(self.batch_size)

    def observe(self, step: int, infonce: float, embedding_cosine: float, logit_scale: float, lr: float) -> dict | None:
        self.history.append((step, infonce, embedding_cosine, logit_scale))
        window = [item for item in self.history if item[0] > step - self.window_steps]
        if step - self.window_steps < self.min_step or len(window) < 3:
            return None  # judge only whole windows after the warm-up
        now_collapsed = all(abs(loss - self.chance_loss) <= self.loss_tolerance * self.chance_loss
                            for _, loss, _, _ in window)
        if now_collapsed == self.collapsed:
            return None
        self.collapsed = now_collapsed
        losses = [item[1] for item in window]
        cosines = [item[2] for item in window]
        scales = [item[3] for item in window]
        record = {"event": "collapse" if now_collapsed else "recovered", "step": step,
                  "window_first_step": window[0][0], "infonce_min": min(losses), "infonce_max": max(losses),
                  "ln_batch": round(self.chance_loss, 4), "embedding_cosine_min": min(cosines),
                  "embedding_cosine_max": max(cosines), "logit_scale_max": max(scales), "lr": lr}
        self.events.append(record)
        return record

    def describe(self) -> str:
        """One sentence of evidence for the latest collapse."""
        last = next(event for event in reversed(self.events) if event["event"] == "collapse")
        text = (f"InfoNCE stayed at ln({self.batch_size}) = {self.chance_loss:.3f} ({last['infonce_min']:.3f}-"
                f"{last['infonce_max']:.3f} over steps {last['window_first_step']}-{last['step']})")
        if last["embedding_cosine_min"] >= 0.9:
            return text + f" with collapsed embeddings (cosine between different images >= {last['embedding_cosine_min']:.3f})"
        if last["logit_scale_max"] < 2.0:
            return text + f" with a vanished temperature (logit scale <= {last['logit_scale_max']:.2f})"
        return text + f" (cosine between different images {last['embedding_cosine_min']:.2f}-{last['embedding_cosine_max']:.2f})"
