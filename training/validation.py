"""Model selection on the validation split: drone->satellite R@1 and AP via training/evaluate.py.

The trainer never sees the test split (mean-model.md §10 pitfall 3): `TrainConfig.validate`
refuses `val_split: test`, and this validator only reads `config.val_split`.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import TrainConfig
from .evaluate import evaluate_model
from .model import MEAN

# Selection uses the full gallery (distractors kept): the stricter of the two conventions.
SELECTION_PROTOCOL = "full"


def retrieval_validator(config: TrainConfig) -> Callable[[MEAN], dict[str, float]]:
    def validate(model: MEAN) -> dict[str, float]:
        report = evaluate_model(
            model, config.data_root, dataset=config.dataset, directions=("d2s",), protocols=(SELECTION_PROTOCOL,),
            split=config.val_split, altitude=config.altitude, batch_size=config.eval_batch_size,
        )
        metrics = report["results"][0]["metrics"]
        return {"r1": metrics["R@1"], "r5": metrics["R@5"], "ap": metrics["AP"], "protocol": SELECTION_PROTOCOL,
                "split": config.val_split}

    return validate
