"""What makes two artifacts compatible: the model identity.

Every embedding artifact (ONNX metadata props, engine sidecar, bank manifest) records which
weights produced it (`checkpoint_sha256`), the preset, the embedding dimension and the
preprocessing. A bank can only be searched with embeddings from the same weights and
preprocessing; precision may differ (an FP32 bank queried by an INT8 engine is allowed, and
reported). Python 3.8 compatible.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from meanloc import __version__
from meanloc.errors import ArtifactMismatchError, MeanlocError

from .onnx_contract import (
    CHECKPOINT_SHA256_KEY,
    EMBED_DIM_KEY,
    PRECISION_KEY,
    PREPROCESS_KEY,
    PRESET_KEY,
    QUERY_VIEW_KEY,
    VERSION_KEY,
)
from .preprocess import PreprocessSpec
from .query_view import QueryView


@dataclass(frozen=True)
class ModelIdentity:
    checkpoint_sha256: str
    preset: str
    embed_dim: int
    preprocess: PreprocessSpec
    # Which artifact computes the embeddings, and at which precision (fp32, fp16, int8-...).
    precision: str = "fp32"
    artifact_sha256: Optional[str] = None
    # How drone frames become queries (artifacts older than this field: frames as captured).
    query_view: QueryView = field(default_factory=QueryView)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "checkpoint_sha256": self.checkpoint_sha256,
            "preset": self.preset,
            "embed_dim": self.embed_dim,
            "preprocess": self.preprocess.to_dict(),
            "precision": self.precision,
            "artifact_sha256": self.artifact_sha256,
            "query_view": self.query_view.to_dict(),
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "ModelIdentity":
        try:
            return cls(
                checkpoint_sha256=str(payload["checkpoint_sha256"]),
                preset=str(payload["preset"]),
                embed_dim=int(payload["embed_dim"]),
                preprocess=PreprocessSpec.from_dict(payload["preprocess"]),
                precision=str(payload.get("precision", "fp32")),
                artifact_sha256=payload.get("artifact_sha256"),
                query_view=QueryView.from_dict(payload.get("query_view")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MeanlocError("invalid model identity in manifest: missing or bad field {}".format(exc)) from None

    def to_onnx_metadata(self) -> Dict[str, str]:
        """String props for `onnx.ModelProto.metadata_props` (the checkpoint's side of the identity).

        The preprocessing, input size included, is recorded once: the JSON spec under PREPROCESS_KEY."""
        spec = self.preprocess
        return {
            PRESET_KEY: self.preset,
            EMBED_DIM_KEY: str(self.embed_dim),
            CHECKPOINT_SHA256_KEY: self.checkpoint_sha256,
            PREPROCESS_KEY: json.dumps(spec.to_dict(), sort_keys=True),
            VERSION_KEY: __version__,
            PRECISION_KEY: self.precision,
            QUERY_VIEW_KEY: json.dumps(self.query_view.to_dict(), sort_keys=True),
        }

    @classmethod
    def from_onnx_metadata(cls, props: Mapping[str, str], source: str, artifact_sha256: Optional[str] = None) -> "ModelIdentity":
        if CHECKPOINT_SHA256_KEY not in props:
            raise ArtifactMismatchError(
                "{} carries no meanloc metadata (not exported by `meanloc export onnx`?)".format(source)
            )
        try:
            return cls(
                checkpoint_sha256=props[CHECKPOINT_SHA256_KEY],
                preset=props[PRESET_KEY],
                embed_dim=int(props[EMBED_DIM_KEY]),
                preprocess=PreprocessSpec.from_dict(json.loads(props[PREPROCESS_KEY])),
                precision=props.get(PRECISION_KEY, "fp32"),
                artifact_sha256=artifact_sha256,
                query_view=QueryView.from_dict(json.loads(props.get(QUERY_VIEW_KEY, "{}"))),
            )
        except (KeyError, ValueError) as exc:
            raise ArtifactMismatchError("{} has incomplete meanloc metadata ({})".format(source, exc)) from None

    def check_compatible(self, other: "ModelIdentity", what: str) -> None:
        """Refuse to mix embeddings of different weights, dimensions or preprocessing."""
        if self.embed_dim != other.embed_dim:
            raise ArtifactMismatchError(
                "{}: embedding dimension {} vs {}".format(what, self.embed_dim, other.embed_dim)
            )
        if self.checkpoint_sha256 != other.checkpoint_sha256:
            raise ArtifactMismatchError(
                "{}: built from different model weights (checkpoint {}... vs {}...)".format(
                    what, self.checkpoint_sha256[:12], other.checkpoint_sha256[:12]
                )
            )
        self.preprocess.check_same(other.preprocess, what)
