"""The demo's closing report: a short summary, summary.json and the trajectory-on-map PNG."""

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from meanloc.runtime.artifacts import atomic_path, atomic_write_json, ensure_writable_dir, read_jsonl

MAP_MAX_PX = 1600  # the cropped map is downscaled to at most this many pixels
PAD_PX = 120


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


def _setting(dataset_manifest: Path) -> str:
    dataset = _read_json(dataset_manifest) or {}
    if dataset.get("cross_source"):
        return "cross-source: drone views and flight rendered from the world's second date, tiles from the first"
    return ("single date (optimistic): drone views, flight and satellite tiles all come from one orthophoto; "
            "run `meanloc demo --cross-source` for the harder setting")


def _retrieval(eval_report: Dict[str, Any]) -> Dict[str, Any]:
    rows = {}
    for row in eval_report["results"]:
        metrics = row["metrics"]
        rows["{} [{}]".format(row["direction_name"], row["protocol"])] = {
            "R@1": round(metrics["R@1"], 2), "R@5": round(metrics["R@5"], 2), "AP": round(metrics["AP"], 2),
            "queries": metrics["queries"], "gallery_ranked": metrics["gallery_ranked"],
        }
    return rows


def _latency(profile_report: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    latency = {}
    for result in profile_report["results"]:
        latency[result["label"]] = {stage: round(values["median_ms"], 2) for stage, values in result["stages"].items()}
    return latency


def _read_track(path: Path) -> List[Dict[str, Any]]:
    return list(read_jsonl(path))  # a flight killed mid-write leaves a torn last line, which is skipped


def plot_trajectory(ortho_path: Path, tracks: Dict[str, List[Dict[str, Any]]], out_path: Path) -> str:
    """True vs estimated tracks (and raw fixes) drawn over the satellite orthophoto."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from meanloc.runtime.geo.orthophoto import Orthophoto

    ortho = Orthophoto.from_geotiff(str(ortho_path))

    def to_px(records: Sequence[Dict[str, Any]], lon_key: str, lat_key: str) -> "np.ndarray":
        points = [(r[lon_key], r[lat_key]) for r in records if r.get(lon_key) is not None]
        if not points:
            return np.zeros((0, 2))
        lon, lat = np.asarray(points, dtype=np.float64).T
        cols, rows = ortho.world_to_pixel(*ortho.lonlat_to_world(lon, lat))
        return np.stack([np.asarray(cols), np.asarray(rows)], axis=1)

    def fixes(records: Sequence[Dict[str, Any]], source: str) -> "np.ndarray":
        return to_px([r for r in records if r.get("fix_source") == source], "fix_lon", "fix_lat")

    truth = to_px(next(iter(tracks.values())), "truth_lon", "truth_lat")
    estimates = {label: (to_px(records, "retrieval_lon", "retrieval_lat"), fixes(records, "geometric"),
                         to_px(records, "filt_lon", "filt_lat"))
                 for label, records in tracks.items()}
    # Crop the full-resolution map to the flight (true track and every estimate, padded).
    everything = np.concatenate([truth] + [part for parts in estimates.values() for part in parts])
    height_px, width_px = ortho.image.shape[:2]
    left, top = np.maximum(np.floor(everything.min(axis=0)) - PAD_PX, 0).astype(int)
    right, bottom = np.minimum(np.ceil(everything.max(axis=0)) + PAD_PX, [width_px, height_px]).astype(int)
    crop = ortho.image[top:bottom, left:right]
    scale = min(1.0, MAP_MAX_PX / max(crop.shape[:2]))
    crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    def on_crop(points: "np.ndarray") -> "np.ndarray":
        return (points - [left, top]) * scale

    figure, axis = plt.subplots(figsize=(9, min(12.0, max(4.0, 9.0 * crop.shape[0] / crop.shape[1]))))
    axis.imshow(crop[:, :, ::-1])
    shown = on_crop(truth)
    axis.plot(shown[:, 0], shown[:, 1], "-", color="white", lw=2.5, label="true track (look-at point)")
    colours = ["#ff3b30", "#34c759", "#0a84ff", "#ff9f0a"]
    for colour, (label, (retrieval, geometric, estimate)) in zip(colours, estimates.items()):
        retrieval, geometric, estimate = on_crop(retrieval), on_crop(geometric), on_crop(estimate)
        axis.scatter(retrieval[:, 0], retrieval[:, 1], s=6, marker="x", color=colour, alpha=0.45,
                     label="retrieval fixes ({})".format(label))
        axis.scatter(geometric[:, 0], geometric[:, 1], s=8, marker="o", facecolors="none", edgecolors=colour,
                     alpha=0.8, label="geometric fixes ({})".format(label))
        axis.plot(estimate[:, 0], estimate[:, 1], "-", color=colour, lw=1.6, label="filtered estimate ({})".format(label))
    axis.set_title("Synthetic flight: true vs estimated track over the satellite orthophoto")
    axis.legend(loc="lower right", fontsize=8)
    axis.set_axis_off()
    figure.tight_layout()
    with atomic_path(out_path) as tmp:
        figure.savefig(str(tmp), format="png", dpi=110)
    plt.close(figure)
    return str(out_path)


def write_demo_report(work: Path, steps: Sequence[Any], timings: Dict[str, float], wall_s: float) -> str:
    report_dir = ensure_writable_dir(work / "report")
    eval_report = _read_json(work / "eval.json")
    flights = {p.stem.split("-", 1)[1]: p for p in sorted(work.glob("flight-*.json"))}
    summary: Dict[str, Any] = {
        "retrieval": _retrieval(eval_report) if eval_report else None,
        "localization": {},
        "latency_median_ms": None,
        "step_seconds": timings,
        "wall_seconds_this_run": round(wall_s, 1),
        "artifacts": {
            "checkpoint": str(work / "train" / "best.pt"), "onnx": str(work / "model.onnx"),
            "qdq_trt_onnx": str(work / "calib" / "model.int8-qdq-trt.onnx"),
            "int8_cpu_onnx": str(work / "calib" / "model.int8-cpu.onnx"),
            "calibration_cache": str(work / "calib" / "calibration.cache"), "bank": str(work / "bank"),
        },
        "setting": _setting(work / "data" / "dataset.json"),
        "notes": [
            "Synthetic flat world (see dataset.json notes): an optimistic proxy for real imagery.",
            "Localization errors are geodesic metres to the look-at ground point of each frame.",
        ],
    }
    for precision, path in flights.items():
        flight = json.loads(path.read_text())
        summary["localization"][precision] = {
            "frames": flight.get("frames_processed"),
            "geometric_fixes": flight.get("fixes_geometric"),
            "filtered": flight.get("error_filtered"),
            "raw_fixes": flight.get("error_raw_fix"),
            "retrieval_fixes": flight.get("error_retrieval_fix"),
            "geometric_fix_errors": flight.get("error_fine_fix"),
        }
    profile = _read_json(work / "profile" / "report.json")
    if profile:
        summary["latency_median_ms"] = _latency(profile)
        for name in ("latency.png", "stages.png", "report.md"):
            if (work / "profile" / name).is_file():
                shutil.copyfile(str(work / "profile" / name), str(report_dir / name))
    tracks = {precision: _read_track(work / "flight-{}.jsonl".format(precision))
              for precision in flights if (work / "flight-{}.jsonl".format(precision)).is_file()}
    if tracks:
        summary["trajectory_png"] = plot_trajectory(work / "data" / "world" / "satellite.tif", tracks,
                                                    report_dir / "trajectory.png")
    atomic_write_json(report_dir / "summary.json", summary)
    return format_summary(summary, report_dir)


def format_summary(summary: Dict[str, Any], report_dir: Path) -> str:
    lines = ["meanloc demo summary (synthetic world; every number names its convention)",
             "  setting: " + summary["setting"]]
    for name, values in (summary["retrieval"] or {}).items():
        lines.append("  retrieval {:<40} R@1 {:6.2f}  R@5 {:6.2f}  AP {:6.2f}  ({} queries, {} ranked)".format(
            name, values["R@1"], values["R@5"], values["AP"], values["queries"], values["gallery_ranked"]))
    for precision, values in summary["localization"].items():
        for kind in ("filtered", "geometric_fix_errors", "retrieval_fixes"):
            errors = values.get(kind) or {}
            if errors.get("median_m") is not None:
                lines.append("  localization {:<5} {:<20} median {:6.1f} m  p90 {:6.1f} m  within 25 m {:5.1%}  "
                             "within 50 m {:5.1%}  ({} of {} frames)".format(
                                 precision, kind, errors["median_m"], errors["p90_m"], errors.get("within_25m", 0),
                                 errors.get("within_50m", 0), errors["frames"], values.get("frames")))
    for label, stages in (summary["latency_median_ms"] or {}).items():
        shown = ", ".join("{} {:.2f}".format(stage, stages[stage]) for stage in
                          ("decode", "preprocess", "h2d", "inference", "d2h", "search", "refine_detect",
                           "refine_match", "refine_fit", "filter", "total")
                          if stage in stages)
        lines.append("  latency ms (median) {}: {}".format(label, shown))
    lines.append("  report: {} (summary.json, trajectory.png, latency.png, stages.png)".format(report_dir))
    return "\n".join(lines)
