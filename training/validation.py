"""Model selection on the validation split: drone->satellite R@1 and AP via training/evaluate.py,
with chance level and the embeddings' spread (the collapse guard's evidence).

The trainer never sees the test split (mean-model.md §10 pitfall 3): `TrainConfig.validate`
refuses `val_split: test`, and this validator only reads `config.val_split`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .collapse import above_chance
from .config import TrainConfig
from .evaluate import evaluate_model
from .model import MEAN
from .torch_backend import TorchBackend

# Selection uses the full gallery (distractors kept): the stricter of the two conventions.
SELECTION_PROTOCOL = "full"


def retrieval_validator(config: TrainConfig) -> Callable[[MEAN], dict[str, Any]]:
    def validate(model: MEAN) -> dict[str, Any]:
        with TorchBackend.for_model(model) as backend:
            report = evaluate_model(
                backend, config.data_root, dataset=config.dataset, directions=("d2s",), protocols=(SELECTION_PROTOCOL,),
                split=config.val_split, altitude=config.altitude, batch_size=config.eval_batch_size,
            )
        result = report["results"][0]
        metrics = result["metrics"]
        queries, gallery = int(metrics["queries"]), int(metrics["gallery_ranked"])
        return {"r1": metrics["R@1"], "r5": metrics["R@5"], "ap": metrics["AP"], "protocol": SELECTION_PROTOCOL,
                "split": config.val_split, "queries": queries, "gallery": gallery,
                "chance_r1": 100.0 / max(1, gallery),
                # each drone query has one positive tile: R@1 must beat guessing to select a model
                "above_chance": above_chance(metrics["R@1"], queries, gallery),
                "query_mean_cosine": result["data"]["query_mean_cosine"],
                "gallery_mean_cosine": result["data"]["gallery_mean_cosine"]}

    return validate
