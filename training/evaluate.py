"""Retrieval evaluation of an `EmbeddingBackend` on a dataset split.

Images are read and preprocessed with `meanloc.runtime.preprocess` (the single definition the
onboard runtime and calibration also use), in background threads, one batch ahead, and embedded
by the backend: ONNX Runtime or TensorRT for exported models, `training.torch_backend` (the
exported embedder, in PyTorch) for checkpoints and for a model being trained. Unreadable images are skipped and
counted. Metrics come from `meanloc.training.metrics`, under each requested gallery protocol,
and every number in the report names the protocol it was computed under. torch-free.
"""

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import new_manifest, write_json_with_markdown
from meanloc.runtime.backends.base import EmbeddingBackend, l2_normalise
from meanloc.runtime.images import BadImages, read_image
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_bgr
from meanloc.runtime.query_view import QueryView

from .data.query_images import read_query_image, read_view_attitude
from .data.splits import DATASETS, DIRECTIONS, EvalSplit, load_eval_split
from .metrics import PROTOCOLS, RetrievalMetrics, check_protocol, retrieval_metrics

EmbedFn = Callable[[np.ndarray], np.ndarray]
REPORT_KIND = "eval_report"
CONVENTIONS = {
    "AP": "trapezoid AP (Market-1501 / University-1652), mean over all queries",
    "AP_plain": "mean precision at the hits, for comparison",
    "R@top1pct": "CMC[round(0.01 * N)] as every reference prints it; N = gallery images on disk incl. junk",
    "R@top1pct_corrected": "R@ceil(0.01 * gallery images ranked)",
    "ranking": "float32 cosine scores, stable descending sort (ties: lower gallery index first)",
    "no_positive_queries": "count 0 in every average and stay in the denominator",
    "protocol full": "distractor classes kept and ranked (University1652-Baseline, SUES-200 benchmark)",
    "protocol junk_distractors": "gallery classes no query has are removed (Sample4Geo / MEAN convention)",
}


@dataclass
class Embeddings:
    """Embeddings of the readable images: `features[i]` belongs to `paths[kept[i]]`; `bad_images`
    counts and names the files that were skipped (`unreadable`)."""

    features: np.ndarray
    kept: np.ndarray
    unreadable: list[str] = field(default_factory=list)
    bad_images: BadImages = field(default_factory=BadImages)


def _load(path: str, spec: PreprocessSpec, query_view: QueryView | None) -> np.ndarray | MeanlocError:
    """The preprocessed image, or the one-line error that says why the file is skipped."""
    try:
        image = read_image(path) if query_view is None else read_query_image(path, query_view, spec.size)
        return preprocess_bgr(image, spec)
    except MeanlocError as exc:
        return exc


def _prefetched_batches(
    paths: Sequence[str], spec: PreprocessSpec, batch_size: int, pool: ThreadPoolExecutor,
    query_view: QueryView | None = None,
) -> Iterator[list[np.ndarray | MeanlocError]]:
    """Yield preprocessed batches while the next batch is already being read."""
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]

    def submit(chunk: Sequence[str]) -> list[Future]:
        return [pool.submit(_load, path, spec, query_view) for path in chunk]

    pending = submit(chunks[0]) if chunks else []
    for index in range(len(chunks)):
        current = pending
        pending = submit(chunks[index + 1]) if index + 1 < len(chunks) else []
        yield [future.result() for future in current]


def extract_embeddings(
    embed_fn: EmbedFn,
    paths: Sequence[str],
    spec: PreprocessSpec,
    batch_size: int = 128,
    flip_tta: bool = False,
    workers: int = 2,
    progress: str | None = None,
    query_view: QueryView | None = None,
) -> Embeddings:
    """Embed image files in batches; with `flip_tta`, sum the embeddings of the image and of its
    horizontal flip (as University1652-Baseline does) and re-normalise. A `query_view` marks the
    files as drone views, prepared as the model's queries are."""
    if query_view is not None and query_view.rectified and paths:
        read_view_attitude(paths[0])  # a dataset without poses is one clear error, not N unreadable images
    features: list[np.ndarray] = []
    kept: list[int] = []
    unreadable: list[str] = []
    bad_images = BadImages()
    offset = 0
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(paths), desc=progress, disable=progress is None, unit="img") as bar,
    ):
        for batch in _prefetched_batches(paths, spec, batch_size, pool, query_view):
            good = [i for i, array in enumerate(batch) if isinstance(array, np.ndarray)]
            for i, array in enumerate(batch):
                if isinstance(array, MeanlocError):
                    unreadable.append(paths[offset + i])
                    bad_images.add(array)
            if good:
                stacked = np.stack([batch[i] for i in good])
                embedded = np.asarray(embed_fn(stacked), dtype=np.float32)
                if flip_tta:
                    flipped = np.ascontiguousarray(stacked[:, :, :, ::-1])
                    embedded = l2_normalise(embedded + np.asarray(embed_fn(flipped), dtype=np.float32))
                features.append(embedded)
                kept.extend(offset + i for i in good)
            offset += len(batch)
            bar.update(len(batch))
    if not features:
        raise MeanlocError(f"none of the {len(paths)} images could be read ({bad_images.summary()})")
    return Embeddings(np.concatenate(features), np.asarray(kept, dtype=np.int64), unreadable, bad_images)


def evaluate_retrieval(
    split: EvalSplit, query: Embeddings, gallery: Embeddings, protocols: Sequence[str] = PROTOCOLS
) -> dict[str, RetrievalMetrics]:
    """Metrics of one direction under each protocol; unreadable images are left out, but the
    gallery size on disk (for R@top1pct) still counts them."""
    return {
        protocol: retrieval_metrics(
            query.features,
            gallery.features,
            split.query_labels[query.kept],
            split.gallery_labels[gallery.kept],
            check_protocol(protocol),
            gallery_on_disk=len(split.gallery_paths),
        )
        for protocol in protocols
    }


def mean_pairwise_cosine(features: np.ndarray) -> float:
    """Mean cosine between different embeddings: near 1 for a collapsed model (every image the same
    direction), so a report shows when its recall is that of a constant function."""
    normalised = l2_normalise(np.asarray(features, dtype=np.float64))
    count = len(normalised)
    if count < 2:
        return 0.0
    total = normalised.sum(axis=0)
    return float((total @ total - count) / (count * (count - 1)))


def _file_key(path: str) -> Any:
    """Identity of the file behind a path: hard links and repeated paths share one embedding
    (the synthetic generator hard-links query images into the galleries)."""
    try:
        info = os.stat(path)
    except OSError:
        return path
    return (info.st_dev, info.st_ino)


class _EmbeddingCache:
    """Embeds each distinct file once across the directions of one evaluation."""

    def __init__(
        self,
        embed_fn: EmbedFn,
        spec: PreprocessSpec,
        query_view: QueryView,
        batch_size: int,
        flip_tta: bool,
        workers: int,
        progress: bool,
    ) -> None:
        self.query_view = query_view
        self.options = {"spec": spec, "batch_size": batch_size, "flip_tta": flip_tta, "workers": workers}
        self.embed_fn = embed_fn
        self.progress = progress
        self.features: dict[Any, np.ndarray] = {}
        self.bad: set[Any] = set()
        self.unreadable_paths: set[str] = set()
        self.bad_images = BadImages()

    def embed(self, paths: list[str], what: str, drone: bool) -> Embeddings:
        """`drone`: the files are drone views (queries in d2s, the gallery in s2d)."""
        keys = [_file_key(p) for p in paths]
        todo: dict[Any, str] = {}
        for key, path in zip(keys, paths):
            if key not in self.features and key not in self.bad:
                todo.setdefault(key, path)
        if todo:
            todo_keys = list(todo)
            fresh = extract_embeddings(
                self.embed_fn, list(todo.values()), progress=what if self.progress else None,
                query_view=self.query_view if drone else None, **self.options
            )
            self.features.update(zip((todo_keys[i] for i in fresh.kept), fresh.features))
            self.bad_images.merge(fresh.bad_images)
            self.bad.update(key for key in todo_keys if key not in self.features)
        kept = [i for i, key in enumerate(keys) if key in self.features]
        if not kept:
            raise MeanlocError(f"{what}: none of the {len(paths)} images could be read ({self.bad_images.summary()})")
        unreadable = [path for path, key in zip(paths, keys) if key in self.bad]
        self.unreadable_paths.update(unreadable)
        features = np.stack([self.features[keys[i]] for i in kept])
        return Embeddings(features, np.asarray(kept, dtype=np.int64), unreadable)


def evaluate_model(
    backend: EmbeddingBackend,
    root: str | Path,
    dataset: str = "university",
    directions: Sequence[str] = ("d2s", "s2d"),
    protocols: Sequence[str] = PROTOCOLS,
    split: str = "test",
    altitude: int | str | None = None,
    flip_tta: bool = False,
    batch_size: int = 128,
    workers: int = 2,
    progress: bool = False,
    model_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate each direction under each protocol; returns the JSON-able report.

    `model_info` (e.g. a checkpoint identity) is recorded in the report next to what the
    backend says about itself. A file shared by several directions (same path or hard
    link) is embedded once.
    """
    for protocol in protocols:
        check_protocol(protocol)
    splits = [load_eval_split(root, dataset, direction, split, altitude) for direction in directions]
    results = []
    spec, query_view = backend.identity.preprocess, backend.identity.query_view
    info = {"backend": backend.name, **backend.identity.to_dict()}
    cache = _EmbeddingCache(backend.embed, spec, query_view, batch_size, flip_tta, workers, progress)
    for eval_split in splits:
        name = DIRECTIONS[eval_split.direction]
        drone_queries = eval_split.direction == "d2s"
        gallery = cache.embed(eval_split.gallery_paths, f"{name}: gallery", drone=not drone_queries)
        query = cache.embed(eval_split.query_paths, f"{name}: queries", drone=drone_queries)
        metrics = evaluate_retrieval(eval_split, query, gallery, protocols)
        data = eval_split.summary()
        data.update(unreadable_queries=len(query.unreadable), unreadable_gallery=len(gallery.unreadable),
                    query_mean_cosine=round(mean_pairwise_cosine(query.features), 5),
                    gallery_mean_cosine=round(mean_pairwise_cosine(gallery.features), 5))
        for protocol, values in metrics.items():
            results.append(
                {
                    "direction": eval_split.direction,
                    "direction_name": name,
                    "protocol": protocol,
                    "metrics": values.to_dict(percent=True),
                    "data": data,
                }
            )
    return new_manifest(
        REPORT_KIND,
        dataset=dataset,
        dataset_name=DATASETS[dataset],
        root=str(root),
        split=split,
        altitude=splits[0].altitude if splits else None,
        flip_tta=flip_tta,
        preprocess=spec.to_dict(),
        model={**info, **(model_info or {})},
        unreadable_images=sorted(cache.unreadable_paths),
        skipped_images=cache.bad_images.summary() if cache.bad_images else None,
        conventions=CONVENTIONS,
        results=results,
    )


def _metric_key(metrics: dict[str, Any], prefix: str) -> str:
    return next(key for key in metrics if key.startswith(prefix))


def format_report_table(report: dict[str, Any]) -> str:
    """A Markdown table of a report: one row per (direction, protocol), percentages."""
    altitude = f", altitude {report['altitude']} m" if report.get("altitude") else ""
    lines = [
        f"# Retrieval evaluation: {report['dataset_name']} ({report['split']} split{altitude})",
        "",
        f"flip TTA: {'on' if report['flip_tta'] else 'off'}; AP = trapezoid AP; values in percent; "
        "every row names its gallery protocol.",
        "",
        "| direction | protocol | queries | gallery ranked / on disk | R@1 | R@5 | R@10 | R@top1pct | "
        "R@top1pct corrected | AP | AP plain | no-positive queries |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        m = row["metrics"]
        top1pct, corrected = _metric_key(m, "R@top1pct ("), _metric_key(m, "R@top1pct_corrected")
        lines.append(
            f"| {row['direction_name']} | {row['protocol']} | {m['queries']} | {m['gallery_ranked']} / "
            f"{m['gallery_on_disk']} | {m['R@1']:.2f} | {m['R@5']:.2f} | {m['R@10']:.2f} | "
            f"{m[top1pct]:.2f} {top1pct[len('R@top1pct ') :]} | {m[corrected]:.2f} "
            f"{corrected[len('R@top1pct_corrected ') :]} | {m['AP']:.2f} | {m['AP_plain']:.2f} | "
            f"{m['no_positive_queries']} |"
        )
    if report.get("unreadable_images"):
        lines += [
            "",
            f"{len(report['unreadable_images'])} unreadable image(s) skipped (listed in the JSON report).",
        ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_path: str | Path) -> tuple[Path, Path]:
    """Write the JSON report and its Markdown table next to it (`<name>.md`), both atomically."""
    return write_json_with_markdown(out_path, report, format_report_table(report))
