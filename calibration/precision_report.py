"""Precision report: every deployable precision against the FP32 ONNX, on embeddings and retrieval.

Runs what the current machine can run: ONNX Runtime FP32, the INT8 CPU flavour and the TensorRT
flavour Q/DQ model (ORT on CPU) from a `meanloc calibrate` folder, and TensorRT engines when
TensorRT and a GPU are present (otherwise they are listed as skipped, with the reason). Every
precision is compared with one FP32 reference (ORT CPU has no FP16 compute; deployment.md §6),
on embeddings (cosine per image: mean, min, 1st percentile) and on drone->satellite retrieval
(R@1, R@5, AP) on a validation split. Output: JSON plus a Markdown table.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meanloc.calibration.pipeline import open_calibration_dir
from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import new_manifest, sha256_file, write_json_with_markdown
from meanloc.runtime.backends import open_backend
from meanloc.runtime.engine_sidecar import EngineSidecar
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.images import BadImages
from meanloc.runtime.onnx_file import load_embedding_onnx
from meanloc.runtime.query_view import QueryView
from meanloc.training.data.splits import EvalSplit, load_eval_split
from meanloc.training.evaluate import Embeddings, evaluate_retrieval, extract_embeddings

REPORT_KIND = "precision_report"
DIRECTION = "d2s"
PROTOCOL = "full"


@dataclass(frozen=True)
class Candidate:
    label: str
    path: Path


def candidates(fp32_onnx: Path, calib_dir: Path | None, engines: Sequence[str | Path]) -> list[Candidate]:
    """FP32 first (the reference), then the calibration folder's models, then engines."""
    found = [Candidate("ORT FP32", fp32_onnx)]
    if calib_dir is not None:
        outputs = open_calibration_dir(calib_dir, sha256_file(fp32_onnx))
        found += [
            Candidate("ORT INT8 (CPU flavour)", outputs.cpu),
            Candidate("ORT Q/DQ (TensorRT flavour)", outputs.qdq_trt),
        ]
    found += [Candidate(f"TensorRT {Path(engine).name}", Path(engine)) for engine in engines]
    for candidate in found:  # all up front: a typo must not cost a run over the other models first
        if not candidate.path.is_file():
            raise MeanlocError(f"model not found: {candidate.path}")
        if candidate.path.suffix == ".engine":
            EngineSidecar.load(str(candidate.path))  # not a meanloc engine: refused even where TensorRT is absent
    return found


def _cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    # Both are L2-normalised by contract; normalise again so a backend bug cannot inflate cosine.
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    oth = other / np.linalg.norm(other, axis=1, keepdims=True)
    return np.sum(ref * oth, axis=1)


def _run_candidate(
    candidate: Candidate, split: EvalSplit, threads: int | None, batch_size: int, progress: bool
) -> tuple[dict[str, Any], ModelIdentity, Embeddings, Embeddings]:
    """The candidate's info, identity, gallery (satellite) and query (drone) embeddings."""
    # ONNX models run on ORT's CPU provider even where a GPU build is installed: these rows are
    # the CPU artifacts; GPU precisions are measured through engines.
    providers = ["cpu"] if candidate.path.suffix == ".onnx" else None
    with open_backend(str(candidate.path), providers=providers, threads=threads) as backend:
        identity = backend.identity

        def embed(paths: list[str], what: str, query_view: QueryView | None) -> Embeddings:
            return extract_embeddings(
                backend.embed, paths, identity.preprocess, batch_size,
                progress=f"{candidate.label}: {what}" if progress else None, query_view=query_view,
            )  # fmt: skip

        gallery = embed(split.gallery_paths, "gallery", None)
        # Drone queries are prepared as the model's queries are (rectified for a pose-aware model).
        query = embed(split.query_paths, "queries", identity.query_view)
        return backend.describe(), identity, gallery, query


def build_precision_report(
    fp32_onnx: str | Path,
    data_root: str | Path,
    calib_dir: str | Path | None = None,
    engines: Sequence[str | Path] = (),
    split: str = "val",
    dataset: str = "university",
    batch_size: int = 32,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    fp32 = load_embedding_onnx(fp32_onnx, "FP32 ONNX model")
    if fp32.identity.precision != "fp32":
        raise MeanlocError(
            f"{fp32_onnx} is a {fp32.identity.precision} model; the reference must be the FP32 ONNX"
        )
    eval_split = load_eval_split(data_root, dataset, DIRECTION, split)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    reference: tuple[Embeddings, Embeddings] | None = None
    for candidate in candidates(fp32.path, Path(calib_dir) if calib_dir else None, engines):
        if candidate.path.suffix == ".engine" and importlib.util.find_spec("tensorrt") is None:
            skipped.append(
                {
                    "label": candidate.label,
                    "path": str(candidate.path),
                    "reason": "TensorRT is not installed here",
                }
            )
            continue
        info, identity, gallery, query = _run_candidate(candidate, eval_split, threads, batch_size, progress)
        identity.check_compatible(fp32.identity, f"{candidate.path} vs {fp32.path}")
        if reference is None:
            reference = (gallery, query)
        if not all(np.array_equal(mine.kept, ref.kept) for mine, ref in zip((gallery, query), reference)):
            raise MeanlocError(f"{candidate.label} could not read the same images as FP32")
        metrics = evaluate_retrieval(eval_split, query, gallery, (PROTOCOL,))[PROTOCOL].to_dict(percent=True)
        # Cosine over every image once: the gallery and the queries.
        cosine = np.concatenate(
            [_cosines(ref.features, mine.features) for mine, ref in zip((gallery, query), reference)]
        )
        rows.append(
            {
                "label": candidate.label,
                "precision": identity.precision,
                "path": str(candidate.path),
                "sha256": sha256_file(candidate.path),
                "backend": info,
                "cosine_mean": float(cosine.mean()),
                "cosine_min": float(cosine.min()),
                "cosine_p1": float(np.percentile(cosine, 1)),
                "R@1": metrics["R@1"],
                "R@5": metrics["R@5"],
                "AP": metrics["AP"],
            }
        )
    for row in rows:
        row["delta_R@1"] = row["R@1"] - rows[0]["R@1"]
        row["delta_AP"] = row["AP"] - rows[0]["AP"]
    return new_manifest(
        REPORT_KIND,
        fp32_onnx=str(fp32.path),
        fp32_sha256=fp32.sha256,
        identity=fp32.identity.to_dict(),
        calibration_dir=str(calib_dir) if calib_dir else None,
        evaluation={
            "root": str(data_root),
            "dataset": dataset,
            "split": split,
            "direction": "drone->satellite",
            "protocol": PROTOCOL,
            "queries": len(eval_split.query_paths),
            "gallery": len(eval_split.gallery_paths),
            "split_summary": eval_split.summary(),
            "skipped_images": _skipped(reference),
        },
        units="R@K and AP in percent; cosine per image against ORT FP32",
        rows=rows,
        skipped=skipped,
    )


def _skipped(reference: tuple[Embeddings, Embeddings] | None) -> str | None:
    """The images every candidate left out (unreadable or damaged), as one sentence."""
    if reference is None:
        return None
    bad = BadImages()
    for embeddings in reference:
        bad.merge(embeddings.bad_images)
    return bad.summary() if bad else None


def format_precision_table(report: dict[str, Any]) -> str:
    evaluation = report["evaluation"]
    lines = [
        f"# Precision report: {Path(report['fp32_onnx']).name}",
        "",
        f"{evaluation['dataset']} {evaluation['split']} split, {evaluation['direction']}, protocol {evaluation['protocol']}: "
        f"{evaluation['queries']} queries, {evaluation['gallery']} gallery images. "
        "Cosine per image against ORT FP32; R@K and AP in percent.",
        "",
        "| artifact | precision | cosine mean | cosine min | R@1 | ΔR@1 | R@5 | AP | ΔAP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['label']} | {row['precision']} | {row['cosine_mean']:.5f} | {row['cosine_min']:.5f} | "
            f"{row['R@1']:.2f} | {row['delta_R@1']:+.2f} | {row['R@5']:.2f} | {row['AP']:.2f} | {row['delta_AP']:+.2f} |"
        )
    for entry in report["skipped"]:
        lines.append(f"\nSkipped {entry['label']}: {entry['reason']}")
    if evaluation.get("skipped_images"):
        lines.append(f"\n{evaluation['skipped_images']}")
    return "\n".join(lines) + "\n"


def write_precision_report(report: dict[str, Any], out_path: str | Path) -> tuple[Path, Path]:
    """The JSON report and its Markdown table next to it (`<name>.md`), both atomic."""
    return write_json_with_markdown(out_path, report, format_precision_table(report))
