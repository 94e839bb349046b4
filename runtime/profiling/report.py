"""Profiling reports: JSON, a Markdown table, and PNG plots (matplotlib, optional).

Python 3.8 compatible.
"""

from pathlib import Path
from typing import Any, Dict, List

from ..artifacts import atomic_path, atomic_write_json, atomic_write_text, ensure_writable_dir
from .profiler import STAGES as PLOTTED_STAGES

REPORT_JSON = "report.json"

def markdown_table(report: Dict[str, Any]) -> str:
    lines = [
        "| target | batch | iters | median ms | p90 | p95 | p99 | max | items/s | CoV | overhead % of inference |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        total = result["stages"]["total"]
        overhead = result.get("profiler_overhead_pct_of_inference")
        lines.append(
            "| {} | {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.1f} | {:.1%} | {} |".format(
                result["label"], result["batch_size"], result["iterations"], total["median_ms"], total["p90_ms"],
                total["p95_ms"], total["p99_ms"], total["max_ms"], total["throughput_per_s"], total["cov"],
                "{:.3f}".format(overhead) if overhead is not None else "n/a",
            )
        )
    lines += ["", "Per-stage median ms:", "", "| target | batch | " + " | ".join(PLOTTED_STAGES) + " |",
              "|---|---|" + "---|" * len(PLOTTED_STAGES)]
    for result in report["results"]:
        cells = [
            "{:.3f}".format(result["stages"][s]["median_ms"]) if s in result["stages"] else "-" for s in PLOTTED_STAGES
        ]
        lines.append("| {} | {} | {} |".format(result["label"], result["batch_size"], " | ".join(cells)))
    for note in report.get("notes", []):
        lines.append("")
        lines.append("- " + note)
    return "\n".join(lines) + "\n"


def write_report(report: Dict[str, Any], out_dir: str) -> List[str]:
    """Write report.json, report.md and (with matplotlib) latency.png and stages.png."""
    folder = ensure_writable_dir(out_dir)
    written = [str(folder / REPORT_JSON), str(folder / "report.md")]
    atomic_write_json(folder / REPORT_JSON, report)
    atomic_write_text(folder / "report.md", markdown_table(report))
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        report.setdefault("notes", []).append("matplotlib not installed: no PNG plots")
        return written
    written.append(_plot_latency(report, folder / "latency.png"))
    written.append(_plot_stages(report, folder / "stages.png"))
    return written


def _plot_latency(report: Dict[str, Any], path: Path) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (hist_axis, cdf_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for result in report["results"]:
        samples = np.sort(np.asarray(result["total_samples_ms"]))
        label = "{} (batch {})".format(result["label"], result["batch_size"])
        hist_axis.hist(samples, bins=40, alpha=0.6, label=label)
        cdf_axis.plot(samples, np.arange(1, samples.size + 1) / samples.size, label=label)
    hist_axis.set(title="End-to-end latency per iteration", xlabel="ms", ylabel="iterations")
    cdf_axis.set(title="Latency CDF", xlabel="ms", ylabel="fraction of iterations")
    cdf_axis.grid(alpha=0.3)
    hist_axis.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _plot_stages(report: Dict[str, Any], path: Path) -> str:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 0.6 * len(report["results"]) + 1.8))
    labels = ["{} b{}".format(r["label"], r["batch_size"]) for r in report["results"]]
    left = [0.0] * len(labels)
    for stage in PLOTTED_STAGES:
        widths = [r["stages"].get(stage, {}).get("median_ms", 0.0) for r in report["results"]]
        if any(widths):
            axis.barh(labels, widths, left=left, label=stage)
            left = [a + b for a, b in zip(left, widths)]
    axis.set(title="Per-stage median latency", xlabel="ms")
    axis.legend(fontsize=8, ncol=4, loc="lower right")
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", dpi=110)
    plt.close(figure)
    return str(path)
